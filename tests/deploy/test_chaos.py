"""Chaos: actors SIGKILLed at random while the system runs, each restarted by its supervisor;
and ``pushcut run`` itself with its actors SIGKILLed at random, its store once and its learner
once, each restarted by the run (tiny tabletop settings, micro model).

What must hold: no acknowledged trajectory is lost, no group is consumed twice, the learner
keeps advancing versions, and a restarted actor generates with the version that was current
when it came back; under ``pushcut run`` also: the learner resumes from its newest checkpoint
(numbered past every version it published after it), every restart is counted in the run's
status, and the run still stops cleanly (exit 0).
"""
import bisect
import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
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


# ---------------------------------------------------------------- pushcut run, killed from outside
def run_children(run: subprocess.Popen) -> dict[str, psutil.Process]:
    """The live role processes of a ``pushcut run``: name (store, learner, actor-<i>) -> process."""
    found = {}
    for child in psutil.Process(run.pid).children():
        try:
            argv = child.cmdline()
            if child.status() == psutil.STATUS_ZOMBIE or argv[1:3] != ["-m", "deploy.cli"]:
                continue
        except psutil.NoSuchProcess:
            continue
        actor = [a.split("=", 1)[1].strip("'") for a in argv if "actor.actor_id=" in a]
        found[actor[-1] if argv[3] == "actor" and actor else argv[3]] = child
    return found


def sigkill(run: subprocess.Popen, name: str) -> None:
    """SIGKILL one child of the run once it runs (psutil checks the pid is still that
    child's); returns once it is dead."""
    child = wait_until(lambda: run_children(run).get(name), 120, f"{name} to run", run)
    child.send_signal(signal.SIGKILL)
    wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 30,
               f"{name} to die")


def starts(run_dir: Path) -> list[int]:
    path = run_dir / "learner.jsonl"
    rows = read_jsonl(path) if path.exists() else []
    return [r["policy_version"] for r in rows if r.get("event") == "start"]


def actor_restarts(run_dir: Path) -> int:
    """The actors' restarts in the run's newest status record."""
    rows = read_jsonl(run_dir / "run.jsonl")
    return sum(n for name, n in (rows[-1].get("restarts", {}) if rows else {}).items()
               if name.startswith("actor-"))


def checkpoint_versions(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("version-*"))


@pytest.mark.slow
def test_pushcut_run_survives_its_actors_store_and_learner_killed(tmp_path):
    from tests.deploy.test_run import saved_micro_policy, start_run, tiny_run_args
    policy_dir, run_dir = saved_micro_policy(tmp_path), tmp_path / "run"
    # tiny tabletop settings; a store that never evicts, so an acknowledged id not in the
    # store at the end is a loss (the probe env makes trajectories too fast for that)
    args = tiny_run_args(run_dir, **{
        "model.checkpoint": policy_dir, "num_actors": NUM_ACTORS, "store.capacity": 200000,
        "algo.max_staleness": 1000, "actor.resend_after_s": 1.0,
        "actor.ack_log": tmp_path / "acks", "learner.max_versions": "null",
        "learner.checkpoint_every": 2, "learner.torch_threads": 1, "learner.poll_s": 0.05})
    run = start_run(args, tmp_path / "run.out")
    rng, kills = random.Random(0), 0
    version = lambda: (learner_versions(run_dir) or [(0, 0)])[-1][1]   # noqa: E731
    try:
        wait_until(lambda: version() >= 2, 300, "the learner's second version", run)
        for step in range(6):                  # an actor every 2-4 s; the store, the learner
            wait_until(lambda t=time.monotonic() + rng.uniform(2, 4): time.monotonic() > t,
                       10, "the next kill", run)
            sigkill(run, f"actor-{rng.randrange(NUM_ACTORS)}")
            kills += 1
            if step == 1:
                sigkill(run, "store")
            if step == 3:
                sigkill(run, "learner")       # then: its newest checkpoint, its last version
                before = (checkpoint_versions(run_dir)[-1], version())
        wait_until(lambda: len(starts(run_dir)) >= 2, 300, "the learner's restart", run)
        resumed = starts(run_dir)[1]
        wait_until(lambda: version() >= max(before[1], resumed) + 3, 300,
                   "3 more versions after every kill", run)
        wait_until(lambda: actor_restarts(run_dir) >= kills, 120, "every actor back", run)
        run.send_signal(signal.SIGINT)
        assert run.wait(240) == 0, (tmp_path / "run.out").read_text()[-4000:]
    finally:
        run.kill()
        run.wait(60)
    check_run_after_chaos(tmp_path, run_dir, kills, before, resumed)


def check_run_after_chaos(tmp: Path, run_dir: Path, kills: int, before: tuple[int, int],
                          resumed: int) -> None:
    """What must hold after the chaos (see the module docstring)."""
    text = (tmp / "run.out").read_text()
    stopped = json.loads(re.search(r"^run stopped: (\{.*\})$", text, re.M).group(1))
    assert stopped["failed"] == [] and stopped["exits"]["learner"] == 0, text[-4000:]
    restarts = stopped["restarts"]
    assert restarts["store"] >= 1 and restarts["learner"] >= 1
    assert actor_restarts(run_dir) >= kills
    # every child stopped cleanly on Ctrl-C (an actor still starting up has no handler yet)
    assert stopped["exits"]["store"] == 0 and set(stopped["exits"].values()) <= {0, -15}
    assert read_jsonl(run_dir / "run.jsonl")[-1]["restarts"] == \
        {name: n for name, n in restarts.items() if n}
    # the learner resumed from its newest checkpoint, under its number or, when it had
    # published versions after it, past them all (learner/lineage.py), and went on version
    # by version
    checkpoint, reached = before
    start = [r for r in read_jsonl(run_dir / "learner.jsonl") if r.get("event") == "start"][1]
    assert start["resumed_from"] == checkpoint and reached - checkpoint <= 2, (before, start)
    assert resumed == checkpoint == reached or resumed > reached, (before, resumed)
    rows = [r for r in read_jsonl(run_dir / "learner.jsonl") if r.get("event") == "update"]
    second = [r["policy_version"] for r in rows if r["time"] > _start_time(run_dir, 1)]
    assert second[:3] == [resumed + 1, resumed + 2, resumed + 3], second[:5]
    trained = [g for r in rows for g in r["group_ids"]]
    assert len(trained) == len(set(trained)), "a group was trained on twice"
    acked = {line for path in tmp.glob("acks.actor-*")
             for line in path.read_text().splitlines() if line}
    assert acked, "no actor saw an acknowledgement"
    with TrajectoryStore(str(run_dir / "store"), readonly=True) as store:
        lost = [tid for tid in acked if tid not in store]
    assert not lost, f"{len(lost)} acknowledged but lost, e.g. {lost[:5]}"


def _start_time(run_dir: Path, index: int) -> float:
    return [r["time"] for r in read_jsonl(run_dir / "learner.jsonl")
            if r.get("event") == "start"][index]
