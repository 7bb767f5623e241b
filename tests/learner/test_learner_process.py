"""``pushcut learner`` as a real OS process over a real LMDB store: two FSDP ranks train and
checkpoint; rank 0 SIGKILLed takes its follower rank with it; restarted (on one rank) it
resumes from the checkpoint, publishing its weights past every version published before,
never trains on a group twice, stops at learner.max_versions with a final checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from common.metrics import read_jsonl
from common.synthetic import make_trajectory
from learner.checkpoint import latest_checkpoint, load_checkpoint
from learner.lineage import Lineage
from learner.store import TrajectoryStore
from tests.learner.helpers import TEMPERATURE, micro_policy, sampled_group
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def fill_store(path: Path, num_groups: int, seed: int = 0) -> list[str]:
    policy = micro_policy(0)
    rng = np.random.default_rng(seed)
    ids = []
    with TrajectoryStore(str(path), capacity=10_000, map_size_mb=64) as store:
        for g in range(num_groups):
            group = sampled_group(policy, rng, [True, False, g % 2 == 0, False],
                                  task_id=f"spatial/{g % 3}", length=10)
            for t in group:
                store.put(t)
            ids.append(group[0].group_id)
    return ids


def learner_args(tmp: Path, **extra) -> list[str]:
    over = {"run_dir": tmp, "store.path": tmp / "store", "learner.checkpoint_dir": tmp / "ckpt",
            "model.preset": "micro", "model.num_bins": 256, "wandb": "false", "algo.group_size": 4,
            "algo.groups_per_batch": 2, "algo.micro_batch_size": 4, "algo.max_staleness": 100,
            "algo.temperature": TEMPERATURE,    # what sampled_group samples at
            "learner.poll_s": 0.05,
            # nothing dials these here: the learner binds any free port (no race with a
            # port picked beforehand and taken meanwhile, e.g. by a rank's gloo socket)
            "learner.weights_address": "tcp://127.0.0.1:*",
            "learner.announce_address": "tcp://127.0.0.1:*",
            "learner.heartbeat_address": "tcp://127.0.0.1:*", **extra}
    return [f"{k}={v}" for k, v in over.items()]


def start_learner(args: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "deploy.cli", "learner", *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def run_to_the_end(args: list[str], log_path: Path) -> None:
    """``pushcut learner ARGS`` until it stops by itself, which it must do with exit 0."""
    proc = start_learner(args, log_path)
    try:
        assert proc.wait(timeout=400) == 0, log_path.read_text()[-3000:]
    finally:
        proc.kill()


def updates(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "learner.jsonl") if r.get("event") == "update"]


@pytest.mark.slow
def test_sigkilled_learner_resumes_and_never_trains_a_group_twice(tmp_path):
    all_groups = fill_store(tmp_path / "store", 16)
    # phase 1: two FSDP ranks, checkpoint every 2 versions, killed mid-run
    args = learner_args(tmp_path, **{"learner.checkpoint_every": 2, "learner.world_size": 2})
    proc = start_learner(args, tmp_path / "learner.log")
    try:
        wait_until(lambda: len(updates(tmp_path)) >= 3 and latest_checkpoint(tmp_path / "ckpt"),
                   400, "3 updates and a checkpoint", proc)
        follower = psutil.Process(proc.pid).children(recursive=True)
        assert follower, "the second rank should be a child process"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                   for p in follower), 30, "the follower rank to exit")
    finally:
        proc.kill()
    killed_at = max(r["policy_version"] for r in updates(tmp_path))
    resume_version = load_checkpoint(latest_checkpoint(tmp_path / "ckpt")).policy_version
    assert 2 <= resume_version <= killed_at
    # versions published after the checkpoint are lost: the resumed weights get a new number
    published = Lineage.load(tmp_path / "ckpt").published
    assert published in (killed_at, killed_at + 1)      # logged, or killed just before
    start = published + 1 if published > resume_version else resume_version
    # phase 2: one rank, 3 more versions
    target = start + 3
    args = learner_args(tmp_path, **{"learner.checkpoint_every": 2,
                                     "learner.max_versions": target, "learner.torch_threads": 1})
    proc = start_learner(args, tmp_path / "learner2.log")
    try:
        assert proc.wait(timeout=400) == 0, (tmp_path / "learner2.log").read_text()[-3000:]
    finally:
        proc.kill()
    starts = [r for r in read_jsonl(tmp_path / "learner.jsonl") if r["event"] == "start"]
    assert [s["resumed_from"] for s in starts] == [None, resume_version]
    assert starts[1]["policy_version"] == start and starts[1]["torch_threads"] == 1
    assert starts[1]["fenced_versions"] == ([[resume_version + 1, published]]
                                            if start > resume_version else [])
    rows = updates(tmp_path)
    second = [r for r in rows if r["time"] > starts[1]["time"]]
    assert [r["policy_version"] for r in second] == list(range(start + 1, target + 1))
    trained = [g for r in rows for g in r["group_ids"]]
    assert len(trained) == len(set(trained)), "a group was trained on twice"
    assert set(trained) <= set(all_groups)
    with TrajectoryStore(str(tmp_path / "store"), readonly=True) as store:
        marks = store.consumption_marks()
    assert all(marks.get(g) == "trained" for g in trained)
    assert latest_checkpoint(tmp_path / "ckpt").name == f"version-{target:08d}"
    assert all(r["staleness_max"] == r["policy_version"] - 1 for r in second)
    assert "learner stopped:" in (tmp_path / "learner2.log").read_text()


@pytest.mark.slow
def test_a_poison_group_is_quarantined_and_versions_keep_advancing(tmp_path):
    """A complete group the learner cannot collate (expert records, in a store that holds
    demos) is quarantined, never trained on, counted, and kept in the checkpoint's marks,
    while the learner trains on the other groups version after version."""
    policy, rng = micro_policy(0), np.random.default_rng(3)
    with TrajectoryStore(str(tmp_path / "store"), capacity=10_000, map_size_mb=64,
                         accept_expert=True) as store:
        good = []
        for g in range(4):   # one task, so the poison group's task comes up in the first batch
            group = sampled_group(policy, rng, [True, False, g % 2 == 0, False], length=10)
            for t in group:
                store.put(t)
            good.append(group[0].group_id)
        for i, success in enumerate([True, False, True, False]):
            store.put(make_trajectory(rng, trajectory_id=f"poison.{i}", group_id="poison",
                                      group_size=4, length=10, policy_version=-1,
                                      success=success, task_id="goal/0"))
    args = learner_args(tmp_path, **{"learner.max_versions": 2, "learner.torch_threads": 1,
                                     "store.accept_expert": "true"})
    run_to_the_end(args, tmp_path / "learner.log")
    rows = updates(tmp_path)
    assert [r["policy_version"] for r in rows] == [1, 2]
    trained = [g for r in rows for g in r["group_ids"]]
    assert sorted(trained) == sorted(good) and "poison" not in trained
    assert rows[-1]["dropped_quarantined"] == 1 and rows[-1]["kept"] == 4
    assert all(np.isfinite(r["loss"]) and r["quarantined_group_ids"] == [] for r in rows)
    with TrajectoryStore(str(tmp_path / "store"), readonly=True) as store:
        marks = store.consumption_marks()
    assert marks == {**{g: "trained" for g in good}, "poison": "quarantined"}
    final = load_checkpoint(latest_checkpoint(tmp_path / "ckpt"))
    assert final.policy_version == 2 and final.consumption_marks["poison"] == "quarantined"
    assert "group poison quarantined" in (tmp_path / "learner.log").read_text()


def test_the_learner_holds_the_actors_while_its_backlog_is_full(tmp_path):
    """algo.max_backlog_batches=1, 2 groups a batch, 7 trainable groups waiting: after each
    of the first two updates 5 and 3 are left (>= 2: hold), after the third 1 (release)."""
    fill_store(tmp_path / "store", 7)
    args = learner_args(tmp_path, **{"learner.max_versions": 3, "learner.torch_threads": 1,
                                     "algo.max_backlog_batches": 1})
    run_to_the_end(args, tmp_path / "learner.log")
    rows = updates(tmp_path)
    assert [r["backlog_groups"] for r in rows] == [5, 3, 1]
    assert [r["held_actors"] for r in rows] == [True, True, False]


def test_without_a_backlog_limit_the_learner_never_holds_the_actors(tmp_path):
    fill_store(tmp_path / "store", 5)
    args = learner_args(tmp_path, **{"learner.max_versions": 1, "learner.torch_threads": 1})
    run_to_the_end(args, tmp_path / "learner.log")
    (row,) = updates(tmp_path)
    assert row["backlog_groups"] == 3 and row["held_actors"] is False


def test_successes_trained_on_are_replayed_in_later_updates(tmp_path):
    """algo.replay_trajectories=4: the first update has nothing to replay; each trained
    batch's successes join the replay (6 groups over 3 tasks hold 9 successes), and every
    later update reports the replayed successes' NLL."""
    fill_store(tmp_path / "store", 6)
    args = learner_args(tmp_path, **{"learner.max_versions": 3, "learner.torch_threads": 1,
                                     "algo.replay_trajectories": 4})
    run_to_the_end(args, tmp_path / "learner.log")
    rows = updates(tmp_path)
    assert "replay_nll" not in rows[0] and rows[0]["replay_tasks"] == 2
    assert all(np.isfinite(r["replay_nll"]) and r["replay_nll"] > 0 for r in rows[1:])
    assert rows[-1]["replay_size"] == 9 and rows[-1]["replay_tasks"] == 3
