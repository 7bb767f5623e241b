"""Chaos: actors SIGKILLed at random while the system runs, each restarted by its supervisor.

What must hold (issue 9): no acknowledged trajectory is lost, no group is consumed twice,
the learner keeps advancing versions, and a restarted actor generates with the version that
was current when it came back.
"""
import bisect
import random
import time
from pathlib import Path

import pytest

from common.metrics import read_jsonl
from deploy.roles import role_argv
from deploy.supervisor import ProcessSupervisor
from learner.store import TrajectoryStore
from tests.ingest_helpers import free_tcp_address, wait_until

NUM_ACTORS = 3


def system_overrides(tmp: Path) -> list[str]:
    store, weights, announce, beats = (free_tcp_address() for _ in range(4))
    over = {"run_dir": tmp, "wandb": "false", "store.path": tmp / "store",
            "store.ingest_address": store, "actor.store_address": store,
            "learner.weights_address": weights, "actor.weights_address": weights,
            "learner.announce_address": announce, "actor.announce_address": announce,
            "learner.heartbeat_address": beats, "actor.heartbeat_address": beats,
            "learner.checkpoint_dir": tmp / "ckpt", "learner.poll_s": 0.05,
            "model.preset": "micro", "env.suite": "spatial", "env.max_steps": 16,
            "actor.num_envs": 2, "actor.resend_after_s": 1.0, "actor.weights_wait_s": 20,
            "algo.group_size": 2, "algo.groups_per_batch": 2, "algo.micro_batch_size": 4,
            # keep every group: this test is about delivery, not about what is learnt
            "algo.success_lo": 0.0, "algo.success_hi": 1.0, "algo.max_staleness": 1000}
    return [f"{k}={v}" for k, v in over.items()]


def learner_versions(run_dir: Path) -> list[tuple[float, int]]:
    path = run_dir / "learner.jsonl"
    rows = read_jsonl(path) if path.exists() else []
    return sorted((r["time"], r["policy_version"]) for r in rows if r.get("event") == "update")


def acked_ids(tmp: Path) -> set[str]:
    ids = set()
    for path in tmp.glob("acks-*.log"):
        ids.update(line for line in path.read_text().splitlines() if line)
    return ids


@pytest.mark.slow
def test_actors_killed_at_random_lose_nothing_acknowledged(tmp_path):
    over = system_overrides(tmp_path)
    logs = tmp_path / "logs"
    store = ProcessSupervisor("store", role_argv("store", over), log_path=str(logs / "store.log"))
    learner = ProcessSupervisor("learner", role_argv("learner", over),
                                log_path=str(logs / "learner.log"))
    actors = {f"actor-{i}": ProcessSupervisor(
        f"actor-{i}", role_argv("actor", [*over, f"actor.actor_id=actor-{i}",
                                          f"actor.seed={i}",
                                          f"actor.ack_log={tmp_path}/acks-actor-{i}.log"]),
        log_path=str(logs / f"actor-{i}.log"), backoff_s=0.5) for i in range(NUM_ACTORS)}
    everyone = [store, learner, *actors.values()]
    rng = random.Random(0)
    restarts: list[tuple[str, float]] = []
    try:
        for sup in everyone:
            sup.start()
        wait_until(lambda: learner_versions(tmp_path), 240, "the learner's first update")
        kills, next_kill = 0, time.monotonic() + rng.uniform(2, 4)

        def chaos_tick():
            nonlocal kills, next_kill
            for name, sup in actors.items():
                before = sup.restarts
                sup.poll()
                if sup.restarts > before:
                    restarts.append((name, time.time()))
            if time.monotonic() >= next_kill:
                actors[rng.choice(sorted(actors))].kill()
                kills, next_kill = kills + 1, time.monotonic() + rng.uniform(2, 4)
            assert store.alive and learner.alive, "store or learner died"
            versions = learner_versions(tmp_path)
            return kills >= 5 and len(restarts) >= 4 and versions[-1][1] >= 4
        wait_until(chaos_tick, 300, "5 kills, 4 restarts and learner version 4")
        # let the restarted actors deliver at least one group each after their restart
        last_restart = max(t for _, t in restarts)
        wait_until(lambda: (chaos_tick() or True) and any(
            t.created_at > last_restart for t in _all(tmp_path)), 180,
            "a trajectory from after the last restart")
    finally:
        for sup in [*actors.values(), learner, store]:
            sup.stop(60)

    trajectories = _all(tmp_path)
    acked = acked_ids(tmp_path)
    assert acked, "no actor saw an acknowledgement"
    with TrajectoryStore(str(tmp_path / "store"), readonly=True) as store:
        lost = [tid for tid in acked if tid not in store]
    assert not lost, f"{len(lost)} acknowledged but lost, e.g. {lost[:5]}"

    updates = [r for r in read_jsonl(tmp_path / "learner.jsonl") if r.get("event") == "update"]
    trained = [g for r in updates for g in r["group_ids"]]
    assert len(trained) == len(set(trained)), "a group was consumed twice"
    assert max(r["policy_version"] for r in updates) >= 4

    times, versions = zip(*learner_versions(tmp_path))
    for name, t_restart in restarts:
        after = sorted((t for t in trajectories if t.actor_id == name and t.created_at > t_restart),
                       key=lambda t: t.created_at)
        if not after:
            continue  # killed again before its first group: nothing generated to check
        i = bisect.bisect_right(times, t_restart)
        current = versions[i - 1] if i else 0
        assert after[0].policy_version >= current, (
            f"{name} restarted at version {current} but generated with {after[0].policy_version}")


def _all(tmp: Path):
    with TrajectoryStore(str(tmp / "store"), readonly=True) as store:
        return [t for g in store.complete_groups(include_consumed=True)
                for t in store.read_group(g.group_id)]
