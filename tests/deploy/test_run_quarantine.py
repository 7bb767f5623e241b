"""A poison group injected into a running ``pushcut run``: valid records, one member of
another chunk size, so the group cannot be collated. The learner quarantines it and goes on
making versions; SIGKILLed, the learner is restarted by the run, resumes, and never trains
on it either. Real processes and sockets, the probe env and a micro policy."""
from __future__ import annotations

import os
import signal

import numpy as np
import psutil

from common.metrics import read_jsonl
from common.synthetic import make_trajectory
from common.transport.trajectories import TrajectorySender
from learner.store import TrajectoryStore
from tests.deploy.test_run import saved_micro_policy, start_run, tiny_run_args
from tests.waiting import wait_until


def poison_group(group_size: int) -> list:
    """A complete group from the future (so the filter takes it first) whose last member
    has chunks of 4 steps where the others have 8."""
    rng = np.random.default_rng(0)
    return [make_trajectory(rng, group_id="poison", group_size=group_size, length=8,
                            chunk_size=4 if i == group_size - 1 else 8, task_id="probe/right",
                            policy_version=10 ** 6, success=i % 2 == 0,
                            trajectory_id=f"poison-{i}", temperature=1.0)
            for i in range(group_size)]


def learner_pid(run_dir) -> int | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "deploy.cli learner" in cmd and str(run_dir) in cmd:
            return proc.pid
    return None


def test_poison_group_quarantined_in_a_running_run_and_after_a_learner_restart(tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_run_args(run_dir, **{
        "env.name": "probe", "env.tasks": "[probe/right]", "env.max_steps": 1,
        "model.checkpoint": saved_micro_policy(tmp_path), "num_actors": 1, "algo.temperature": 1.0,
        "learner.max_versions": "null", "learner.checkpoint_every": 2})
    store_address = next(a.split("=", 1)[1] for a in args if a.startswith("store.ingest"))

    def updates() -> list[dict]:
        path = run_dir / "learner.jsonl"
        return [r for r in read_jsonl(path) if r["event"] == "update"] if path.exists() else []

    proc = start_run(args, tmp_path / "run.out")
    try:
        wait_until(lambda: len(updates()) >= 2, 300, "two versions", proc)
        with TrajectorySender(store_address) as sender:
            for traj in poison_group(4):
                sender.send(traj)
            assert sender.flush(60)
            assert sender.stats()["acked"] == 4, sender.stats()
        wait_until(lambda: any(r.get("dropped_quarantined") for r in updates()), 120,
                   "the poison group quarantined", proc)
        seen = len(updates())
        wait_until(lambda: len(updates()) >= seen + 2, 120, "versions after it", proc)
        os.kill(learner_pid(run_dir), signal.SIGKILL)
        resumed = len(updates())
        wait_until(lambda: len(updates()) >= resumed + 3, 300,
                   "versions from the restarted learner", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=240) == 0, (tmp_path / "run.out").read_text()[-4000:]
    finally:
        proc.kill()
    trained = [g for r in updates() for g in r["group_ids"]]
    assert "poison" not in trained
    with TrajectoryStore(str(run_dir / "store"), readonly=True) as store:
        assert store.consumption_marks()["poison"] == "quarantined"
    assert read_jsonl(run_dir / "run.jsonl")[-1]["restarts"].get("learner", 0) >= 1
