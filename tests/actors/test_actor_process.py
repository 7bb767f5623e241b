"""``pushcut actor`` as real OS processes against ``pushcut store`` in another process and a
weight publisher: expert-driven success flags that match the env, initial weights from the
learner, versions consistent within groups, two actors at once, a store killed with SIGKILL
and restarted, and SIGTERM."""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
from collections import Counter  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from actors.envs.tabletop import TabletopEnv  # noqa: E402
from common.config.schema import EnvConfig, ModelConfig  # noqa: E402
from common.models import build_policy  # noqa: E402
from learner.broadcast import WeightPublisher  # noqa: E402
from tests.actors.helpers import StoreProcess, free_port, pushcut, wait_for  # noqa: E402


def start_actor(store: StoreProcess, weights: str, announce: str, *overrides: str
                ) -> subprocess.Popen:
    return pushcut("actor", f"actor.store_address={store.address}",
                   f"actor.weights_address={weights}", f"actor.announce_address={announce}",
                   "actor.resend_after_s=0.5", "actor.log_every_s=1", *overrides,
                   stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout_s: float = 180) -> dict:
    """Wait for the actor to exit 0; -> its final summary."""
    out, _ = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"actor exited with {proc.returncode}"
    line = next(ln for ln in out.splitlines() if ln.startswith("actor stopped: "))
    return json.loads(line[len("actor stopped: "):])


def unused_addresses() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


def replay(env: TabletopEnv, traj) -> tuple[int, bool]:
    env.reset(traj.task_id, traj.init_state_id)
    for k, a in enumerate(traj.actions.reshape(-1, traj.action_dim)[:traj.length], start=1):
        res = env.step(a, render=False)
        if res.done:
            return k, res.success
    return traj.length, False


@pytest.mark.slow
def test_expert_actor_success_flags_match_the_env(tmp_path):
    store = StoreProcess(tmp_path / "store").start()
    try:
        proc = start_actor(store, *unused_addresses(), "actor.policy=expert",
                           "env.tasks=[goal/3,spatial/1]", "algo.group_size=2",
                           "actor.num_envs=4", "actor.max_groups=3", "actor.weights_wait_s=0",
                           "actor.actor_id=expert-1")
        summary = finish(proc)
        groups = store.groups()
    finally:
        store.stop()
    assert summary["groups"] == 3 and summary["acked"] == summary["sent"] == 6
    assert len(groups) == 3
    env = TabletopEnv(EnvConfig(tasks=["goal/3", "spatial/1"]))
    for group in groups.values():
        first = group[0]
        assert {(t.task_id, t.init_state_id, t.group_size, t.actor_id) for t in group} == \
            {(first.task_id, first.init_state_id, 2, "expert-1")}
        assert first.init_state_id < 40           # training ids only
        for t in group:
            assert t.success                       # the scripted expert solves these
            assert replay(env, t) == (t.length, t.success)


@pytest.mark.slow
def test_two_actors_store_restart_versions_and_sigterm(tmp_path):
    store = StoreProcess(tmp_path / "store").start()
    torch.manual_seed(1)
    v1 = build_policy(ModelConfig(preset="micro")).state_dict()
    torch.manual_seed(2)
    v2 = build_policy(ModelConfig(preset="micro")).state_dict()
    common = ("model.preset=micro", "env.suite=spatial", "env.max_steps=16",
              "algo.group_size=2", "actor.num_envs=2", "actor.weights_wait_s=60")
    procs = []
    try:
        with WeightPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", chunk_mb=0.05,
                             announce_every_s=0.2) as pub:
            pub.publish(1, v1)                     # the learner is up before the actors
            addresses = (pub.weights_address, pub.announce_address)
            procs = [start_actor(store, *addresses, *common, "actor.max_groups=6",
                                 "actor.actor_id=a"),
                     start_actor(store, *addresses, *common, "actor.actor_id=b")]
            wait_for(lambda: len(store.groups()) >= 2, 180, "the first groups in the store",
                     every_s=0.5)
            store.kill()                           # SIGKILL mid-stream, then back
            pub.publish(2, v2)
            store.start()
            summary_a = finish(procs[0])
            wait_for(lambda: Counter(t[0].actor_id for t in store.groups().values())["b"] >= 4,
                     180, "actor b's groups", every_s=0.5)
            procs[1].send_signal(signal.SIGTERM)
            summary_b = finish(procs[1], 60)
        groups = store.groups()
        stats = store.stats()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        store.stop()
    assert stats["groups"] == stats["complete_groups"] == len(groups)   # no partial group
    for s in (summary_a, summary_b):
        assert s["flushed"] and s["acked"] == s["sent"] == 2 * s["groups"], s
        assert min(int(v) for v in s["by_version"]) == 1    # started from the learner's v1
    assert summary_a["groups"] == 6
    per_actor = Counter(g[0].actor_id for g in groups.values())
    assert per_actor == {"a": summary_a["groups"], "b": summary_b["groups"]}
    versions = Counter()
    for group in groups.values():
        assert len(group) == 2 and len({(t.policy_version, t.init_state_id) for t in group}) == 1
        versions[group[0].policy_version] += 1
    assert set(versions) <= {1, 2} and versions[2] >= 1   # v2 reached the actors mid-run
