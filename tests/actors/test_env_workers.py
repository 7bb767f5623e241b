"""Env workers (actors/env_workers.py): the LIBERO worker count capped by memory, and
subprocess workers that die or hang: a deadline instead of a hang, a restart in place, and an
actor that keeps sending complete groups (to a real store process) after a worker is
SIGKILLed mid-episode."""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import logging  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from actors.actor import Actor  # noqa: E402
from actors.env_workers import (EnvWorkerError, SubprocessWorker, fifo_allowed,  # noqa: E402
                                libero_worker_count, make_workers)
from actors.envs.libero import RESERVE_BYTES, WORKER_BYTES  # noqa: E402
from actors.rollout import EpisodeRequest, VectorRollout  # noqa: E402
from actors.scheduler import TaskScheduler  # noqa: E402
from common.config.schema import LiberoEnvConfig, ModelConfig, TabletopEnvConfig  # noqa: E402
from common.models import build_policy  # noqa: E402
from common.transport.trajectories import TrajectorySender  # noqa: E402
from tests.actors.helpers import REPO, StoreProcess  # noqa: E402

GIB = 1 << 30
ENV_CFG = TabletopEnvConfig(suite="goal", max_steps=16, num_train_init_states=5)


# ------------------------------------------------------------------ LIBERO memory cap

def test_libero_worker_count_is_lowered_to_what_fits(caplog):
    caplog.set_level(logging.WARNING, logger="actors.env_workers")
    available = RESERVE_BYTES + 3 * WORKER_BYTES + GIB // 2       # room for 3, not 4
    assert libero_worker_count(8, available_bytes=available) == 3
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "8 env workers requested, 3 fit" in msg and "starting 3" in msg
    assert f"{WORKER_BYTES / GIB:.1f} GB per LIBERO env worker" in msg
    assert f"{available / GIB:.1f} GB available" in msg
    caplog.clear()
    assert libero_worker_count(2, available_bytes=available) == 2   # fits: left alone
    assert not caplog.records


def test_libero_needs_room_for_one_worker_unless_forced(caplog):
    tight = RESERVE_BYTES + WORKER_BYTES - GIB                     # one does not fit
    with pytest.raises(EnvWorkerError, match=r"not even one LIBERO env worker fits in memory "
                                             r"\(3.0 GB per LIBERO env worker"):
        libero_worker_count(4, available_bytes=tight)
    caplog.set_level(logging.WARNING, logger="actors.env_workers")
    assert libero_worker_count(4, available_bytes=tight, force=True) == 1
    assert "4 env workers requested, 0 fit, forced" in caplog.records[0].getMessage()
    assert libero_worker_count(1, available_bytes=tight, force=True) == 1
    assert "1 env workers requested, 0 fit, forced" in caplog.records[1].getMessage()
    # make_workers refuses before starting any process
    with pytest.raises(EnvWorkerError, match="not even one"):
        make_workers(LiberoEnvConfig(suite="libero_spatial"), 4, seed=0,
                     use_subprocess=True, available_bytes=tight)


def test_libero_worker_count_reads_real_free_memory():
    import psutil
    available = psutil.virtual_memory().available
    fit = (available - RESERVE_BYTES) // WORKER_BYTES
    if fit < 1:
        pytest.skip(f"this machine has {available / GIB:.1f} GB free: not one LIBERO worker")
    # a request far beyond any machine is lowered to the psutil figure (± one worker of drift)
    assert abs(libero_worker_count(10_000) - fit) <= 1


@pytest.fixture(scope="module")
def libero_installed():
    """LIBERO importable and configured; `pushcut setup libero` first when it is not."""
    from actors.envs.libero_setup import missing_requirements
    if missing_requirements():
        proc = subprocess.run([sys.executable, "-m", "deploy.cli", "setup", "libero"], cwd=REPO,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.libero
@pytest.mark.slow
def test_make_workers_starts_only_the_libero_workers_that_fit(libero_installed, caplog):
    caplog.set_level(logging.WARNING, logger="actors.env_workers")
    cfg = LiberoEnvConfig(suite="libero_spatial", tasks=["libero_spatial/0"], image_size=64)
    workers = make_workers(cfg, 2, seed=0, use_subprocess=False,
                           available_bytes=RESERVE_BYTES + WORKER_BYTES + GIB // 2)
    try:
        assert len(workers) == 1 and isinstance(workers[0], SubprocessWorker)
        assert [t.task_id for t in workers[0].tasks()] == ["libero_spatial/0"]
        assert workers[0].reset("libero_spatial/0", 0)["images"].shape == (1, 64, 64, 3)
    finally:
        for w in workers:
            w.close()
    assert "2 env workers requested, 1 fit" in caplog.records[0].getMessage()


def test_subprocess_workers_run_on_their_own_cores_across_restarts():
    """placement.env_workers: the simulators apart from the actor's inference."""
    core = sorted(os.sched_getaffinity(0))[-1]
    workers = make_workers(ENV_CFG, 1, seed=0, use_subprocess=True, cpus=[core])
    try:
        assert os.sched_getaffinity(workers[0].proc.pid) == {core}
        workers[0].restart()
        assert os.sched_getaffinity(workers[0].proc.pid) == {core}
        assert workers[0].reset("goal/0", 1)["images"].shape[0] >= 1
    finally:
        for w in workers:
            w.close()


@pytest.mark.skipif(not fifo_allowed(), reason="SCHED_FIFO needs root or RLIMIT_RTPRIO")
def test_fifo_workers_are_scheduled_first_in_first_out_across_restarts():
    """placement.env_workers_fifo: simulators sharing a core step chunks in arrival order."""
    workers = make_workers(ENV_CFG, 1, seed=0, use_subprocess=True, fifo=True)
    try:
        assert os.sched_getscheduler(workers[0].proc.pid) == os.SCHED_FIFO
        workers[0].restart()
        assert os.sched_getscheduler(workers[0].proc.pid) == os.SCHED_FIFO
        assert workers[0].reset("goal/0", 1)["images"].shape[0] >= 1
    finally:
        for w in workers:
            w.close()
    plain = make_workers(ENV_CFG, 1, seed=0, use_subprocess=True)
    try:
        assert os.sched_getscheduler(plain[0].proc.pid) == os.SCHED_OTHER
    finally:
        plain[0].close()


# ------------------------------------------------------------------ dead and hung workers

def test_a_subprocess_worker_hands_back_the_episode_fingerprint_when_done():
    """The tabletop fingerprint crosses the worker's socket with the episode's last chunk
    (and only then): an idle gripper ends its episode never having reached the cube."""
    w = SubprocessWorker(dataclasses.replace(ENV_CFG, fingerprints=True), seed=0)
    try:
        w.reset("goal/0", 1)
        idle = np.zeros((8, 7), np.float32)
        w.start_chunk(idle, 16, False)
        first = w.result()
        w.start_chunk(idle, 8, False)
        last = w.result()
        assert not first.done and first.info is None
        assert last.done and last.info["failure_phase"] == "never_reached"
        assert last.info["strategy"] == "other" and last.info["touched"] == []
    finally:
        w.close()


def test_hung_or_killed_worker_raises_in_time_and_restarts():
    w = SubprocessWorker(ENV_CFG, seed=0, reply_timeout_s=2.0)
    try:
        obs0 = w.reset("goal/0", 1)
        actions = np.zeros((8, 7), np.float32)
        # hung: stopped mid-request -> no reply within the deadline
        first = w.proc.pid
        os.kill(first, signal.SIGSTOP)
        w.start_chunk(actions, 8, False)
        t0 = time.monotonic()
        with pytest.raises(EnvWorkerError, match=r"no reply to chunk in 2.0s"):
            w.result()
        assert time.monotonic() - t0 < 10
        w.restart()
        assert w.proc.pid != first and w.restarts == 1
        np.testing.assert_array_equal(w.reset("goal/0", 1)["images"], obs0["images"])
        # killed while a request is pending -> the exit is noticed, not waited out
        os.kill(w.proc.pid, signal.SIGSTOP)
        w.start_chunk(actions, 8, False)
        os.kill(w.proc.pid, signal.SIGKILL)
        with pytest.raises(EnvWorkerError, match=r"exited with code -9 while doing chunk"):
            w.result()
        w.restart()
        # killed between requests -> the next request fails at once
        w.proc.kill()
        w.proc.wait(10)
        with pytest.raises(EnvWorkerError, match=r"exited with code -9 before reset"):
            w.start_reset("goal/0", 1)
        w.restart()
        assert w.restarts == 3 and w.reset("goal/0", 1)["images"].shape == obs0["images"].shape
    finally:
        w.close()
    assert w.proc.poll() is not None


class KillWorkers:
    """Wraps the actor's real policy: at given decision numbers it SIGKILLs a worker's process
    (waiting for it to be dead), so the crash lands mid-episode, between two chunks."""

    def __init__(self, policy, workers, kills: dict[int, int]):
        self.policy, self.workers, self.kills = policy, workers, kills
        self.decisions = 0

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def sample(self, obs, temperature, generator=None):
        self.decisions += 1
        if self.decisions in self.kills:
            proc = self.workers[self.kills[self.decisions]].proc
            proc.kill()
            proc.wait(10)
        return self.policy.sample(obs, temperature, generator)


class KillAfterSend:
    """A real subprocess worker whose process is SIGKILLed right after its ``nth`` chunk
    request is sent, i.e. while the worker is stepping (or has just answered)."""

    def __init__(self, worker: SubprocessWorker, nth: int):
        self.worker, self.nth, self.sent = worker, nth, 0

    def __getattr__(self, name):
        return getattr(self.worker, name)

    def start_chunk(self, actions, steps_left, record_video):
        self.worker.start_chunk(actions, steps_left, record_video)
        self.sent += 1
        if self.sent == self.nth:
            self.worker.proc.kill()


def test_group_is_dropped_when_a_member_cannot_be_rerun():
    torch.manual_seed(0)
    policy = build_policy(ModelConfig(preset="micro")).eval()
    workers = make_workers(ENV_CFG, 2, seed=0, use_subprocess=True)
    try:
        rollout = VectorRollout(workers, KillWorkers(policy, workers, kills={2: 0}))
        rollout.max_reruns = 0                     # the first loss drops the group
        requests = [EpisodeRequest("goal/0", 1, g) for g in ("g", "g", "h", "h")]
        episodes = rollout.run(requests, 1.6, torch.Generator().manual_seed(0))
        assert all(w.proc.poll() is None for w in workers)
    finally:
        for w in workers:
            w.close()
    # g.1 finished on the healthy worker, yet is not returned without g.0
    assert [e.request.group_id for e in episodes] == ["h", "h"]
    assert (rollout.worker_restarts, rollout.rerun_episodes, rollout.dropped_groups) == (1, 0, 1)


@pytest.mark.slow
def test_actor_restarts_sigkilled_workers_and_sends_only_complete_groups(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="actors")
    torch.manual_seed(0)
    policy = build_policy(ModelConfig(preset="micro")).eval()
    workers = make_workers(ENV_CFG, 2, seed=0, use_subprocess=True)
    store = StoreProcess(tmp_path / "store").start()
    try:
        envs = list(workers)
        envs[1] = KillAfterSend(workers[1], nth=3)       # round 2: dies mid-step
        # decision 2 of round 1: worker 0 has stepped one chunk of its 2-chunk episode
        killer = KillWorkers(policy, workers, kills={2: 0})
        tasks = workers[0].tasks()
        scheduler = TaskScheduler(tasks, {t.task_id: workers[0].train_init_state_ids(t.task_id)
                                          for t in tasks}, seed=0)
        actor = Actor(VectorRollout(envs, killer), scheduler, actor_id="crash-actor",
                      group_size=2, temperature=1.6, generator=torch.Generator().manual_seed(0))
        pids = [w.proc.pid for w in workers]
        with TrajectorySender(store.address, max_in_flight=8, resend_after_s=1.0) as sender:
            sent = [actor.run_round(sender.send) for _ in range(3)]
            assert sender.flush(60), sender.stats()
        alive = [w.proc.poll() is None for w in workers]
        groups = store.groups()
    finally:
        store.stop()
        for w in workers:
            w.close()
    assert alive == [True] * 2
    assert [w.proc.pid != p for w, p in zip(workers, pids)] == [True, True]
    s = actor.stats
    assert (s.worker_restarts, s.rerun_episodes, s.dropped_episodes) == (2, 2, 0)
    assert sent == [1, 1, 1] and s.groups == 3 == len(groups) and s.episodes == 6
    for group_id, group in groups.items():
        first = group[0]
        assert sorted(t.trajectory_id for t in group) == [f"{group_id}.0", f"{group_id}.1"]
        assert {(t.task_id, t.init_state_id, t.policy_version, t.group_size) for t in group} \
            == {(first.task_id, first.init_state_id, 0, 2)}
        for t in group:   # a whole episode from reset to done, not a crashed fragment
            assert t.success or t.length == 16
            assert t.valid_mask.sum() == t.length * 7
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("discarded and re-run" in m for m in warnings) == 2
