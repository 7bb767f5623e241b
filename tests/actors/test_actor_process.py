"""``pushcut actor`` as real OS processes against ``pushcut store`` in another process and a
weight publisher: expert-driven success flags that match the env, initial weights from the
learner, versions consistent within groups, two actors at once, a store killed with SIGKILL
and restarted, SIGTERM, and a second SIGTERM that ends the wait for acknowledgements."""
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
from common.config.schema import ModelConfig, TabletopEnvConfig  # noqa: E402
from common.transport.heartbeats import HealthMonitor  # noqa: E402
from common.models import build_policy  # noqa: E402
from common.transport.weight_publisher import WeightPublisher  # noqa: E402
from tests.actors.helpers import StoreProcess, free_port, pushcut, wait_for  # noqa: E402


def start_actor(store: StoreProcess, weights: str, announce: str, beats: str,
                *overrides: str) -> subprocess.Popen:
    return pushcut("actor", f"actor.store_address={store.address}",
                   f"actor.weights_address={weights}", f"actor.announce_address={announce}",
                   f"actor.heartbeat_address={beats}", "actor.heartbeat_s=0.5",
                   "actor.resend_after_s=0.5", "actor.log_every_s=1", *overrides,
                   stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout_s: float = 300) -> dict:
    """Wait for the actor to exit 0; -> its final summary."""
    out, _ = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"actor exited with {proc.returncode}"
    line = next(ln for ln in out.splitlines() if ln.startswith("actor stopped: "))
    return json.loads(line[len("actor stopped: "):])


def heard_from(health: HealthMonitor) -> set[str]:
    health.poll(0)
    return {h.actor_id for h in health.report()}


def micro_weights(seed: int) -> dict:
    torch.manual_seed(seed)
    return build_policy(ModelConfig(preset="micro", num_bins=256)).state_dict()


def replay(env: TabletopEnv, traj) -> tuple[int, bool]:
    env.reset(traj.task_id, traj.init_state_id)
    for k, a in enumerate(traj.actions.reshape(-1, traj.action_dim)[:traj.length], start=1):
        res = env.step(a, render=False)
        if res.done:
            return k, res.success
    return traj.length, False


@pytest.mark.slow
def test_two_actors_store_restart_versions_expert_success_and_sigterm(tmp_path):
    """Actor "expert" (scripted expert, 4 groups) and actor "model" (micro tiny VLA, until
    SIGTERM) stream into one store, which is SIGKILLed and restarted mid-stream while the
    learner publishes a new version."""
    v1, v2 = micro_weights(1), micro_weights(2)
    health = HealthMonitor("tcp://127.0.0.1:*")
    store = StoreProcess(tmp_path / "store").start()
    common = ("algo.group_size=2", "actor.num_envs=2", "actor.flush_timeout_s=120")
    procs = []
    try:
        with WeightPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", chunk_mb=0.05,
                             announce_every_s=0.2) as pub:
            pub.publish(1, v1)                     # the learner is up before the actors
            addresses = (pub.weights_address, pub.announce_address, health.address)
            procs = [start_actor(store, *addresses, *common, "actor.policy=expert",
                                 "env.tasks=[goal/3,spatial/1]", "actor.max_groups=4",
                                 "actor.actor_id=expert"),
                     start_actor(store, *addresses, *common, "model.preset=micro", "model.num_bins=256",
                                 "env.suite=spatial", "env.max_steps=16",
                                 "actor.weights_wait_s=120", "actor.actor_id=model",
                                 f"actor.ack_log={tmp_path / 'acks.log'}")]
            wait_for(lambda: set(Counter(g[0].actor_id for g in store.groups().values())) ==
                     {"expert", "model"}, 300, "groups from both actors", every_s=0.5)
            store.kill()                           # SIGKILL mid-stream, then back
            pub.publish(2, v2)
            store.start()
            summary_expert = finish(procs[0])
            wait_for(lambda: store.by_actor()["model"] >= 4, 300, "the model actor's groups",
                     every_s=0.5)
            wait_for(lambda: heard_from(health) == {"expert", "model"}, 60, "heartbeats")
            procs[1].send_signal(signal.SIGTERM)
            summary_model = finish(procs[1], 120)
        groups = store.groups()
        stats = store.stats()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        store.stop()
        health.close()
    assert stats["groups"] == stats["complete_groups"] == len(groups)   # no partial group
    for s in (summary_expert, summary_model):
        # every trajectory sent was acknowledged, and every group acknowledged is stored
        assert s["flushed"] and s["acked"] == s["sent"] == 2 * s["groups"], s
    assert summary_expert["groups"] == 4
    acked = (tmp_path / "acks.log").read_text().split()
    assert len(acked) == len(set(acked)) == summary_model["acked"]
    assert not store.missing(acked)
    assert Counter(g[0].actor_id for g in groups.values()) == \
        {"expert": 4, "model": summary_model["groups"]}
    versions = check_groups(groups)
    # the model actor started from the learner's v1 and took v2 mid-run
    assert min(versions) == 1 and versions[2] >= 1 and set(versions) == {1, 2}


def test_a_second_sigterm_ends_the_wait_for_acks(tmp_path):
    """No store answers, so the actor's one group stays unacknowledged and the actor waits
    up to actor.flush_timeout_s; the first SIGTERM leaves it waiting, the second ends it."""
    nowhere = [f"tcp://127.0.0.1:{free_port()}" for _ in range(4)]
    log = tmp_path / "actor.log"
    with open(log, "w") as err:
        proc = pushcut("actor", *(f"actor.{k}_address={a}" for k, a in zip(
            ("store", "weights", "announce", "heartbeat"), nowhere)),
            "actor.weights_wait_s=0", "model.preset=micro", "model.num_bins=256",
            "env.suite=spatial", "env.max_steps=16", "algo.group_size=2", "actor.num_envs=2",
            "actor.max_groups=1", "actor.flush_timeout_s=600", "actor.log_every_s=0.5",
            stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        wait_for(lambda: "groups 1 |" in log.read_text(), 300, "the group sent", proc=proc)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "signal SIGTERM: finishing" in log.read_text(), 60,
                 "the first signal handled", proc=proc)
        assert proc.poll() is None                   # still waiting for the acks
        proc.send_signal(signal.SIGTERM)
        summary = finish(proc, 120)                  # well before the 600 s flush timeout
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not summary["flushed"] and summary["in_flight"] == 2 and summary["groups"] == 1
    assert "unacknowledged (told to hurry)" in log.read_text()


def check_groups(groups: dict) -> Counter:
    """Members consistent, expert successes replayed in the env; -> model groups by version."""
    env = TabletopEnv(TabletopEnvConfig(tasks=["goal/3", "spatial/1"]))
    versions = Counter()
    for group in groups.values():
        first = group[0]
        assert len(group) == 2 and sorted(t.trajectory_id for t in group) == \
            [f"{first.group_id}.0", f"{first.group_id}.1"]
        assert len({(t.task_id, t.init_state_id, t.policy_version, t.actor_id)
                    for t in group}) == 1 and first.init_state_id < 40
        if first.actor_id == "expert":
            for t in group:                         # solved, exactly as the env replays it
                assert t.success and replay(env, t) == (t.length, True)
        else:
            versions[first.policy_version] += 1
    return versions
