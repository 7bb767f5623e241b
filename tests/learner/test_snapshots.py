"""Policy snapshots and the learner's wall-clock budget: the pure parts, then ``pushcut
learner`` as a real process stopping on ``learner.max_wall_s`` with its snapshots written,
and a restarted learner carrying its wall time over from the checkpoint."""
from __future__ import annotations

import json

import pytest

from common.metrics import read_jsonl
from common.models import load_policy
from learner.snapshots import (
    MAX_VERSIONS, MAX_WALL_S, EnvStepCounter, budget_reason, budget_spent, list_snapshots,
    read_snapshot_info, save_snapshot,
)
from tests.learner.helpers import micro_policy
from tests.learner.test_learner_process import fill_store, learner_args, start_learner


def test_env_step_counter_survives_actor_and_learner_restarts():
    counter = EnvStepCounter(base=100)
    assert counter.update([("a", 10), ("b", 5)]) == 115
    assert counter.update([("a", 30), ("b", 5)]) == 135
    assert counter.update([("a", 4)]) == 139        # a restarted: its 30 are kept
    assert counter.update([]) == 139


def test_budget_reason_whichever_comes_first():
    assert budget_reason(3, 10.0, None, None) is None
    assert budget_reason(3, 10.0, 3, 100.0) == MAX_VERSIONS
    assert budget_reason(2, 100.0, 3, 100.0) == MAX_WALL_S
    assert budget_reason(2, 99.9, 3, 100.0) is None


def test_snapshots_are_loadable_listed_in_order_and_replaced(tmp_path):
    policy = micro_policy(0)
    sd = {k: v.clone() for k, v in policy.state_dict().items()}
    for version in (12, 3):
        save_snapshot(tmp_path, version, micro_policy(1), sd, {"wall_s": version * 1.5,
                                                               "final": False})
    assert [p.name for p in list_snapshots(tmp_path)] == ["v000003", "v000012"]
    assert not budget_spent(tmp_path)
    save_snapshot(tmp_path, 12, micro_policy(1), sd, {"final": True, "stop_reason": MAX_WALL_S})
    assert budget_spent(tmp_path) and read_snapshot_info(tmp_path / "v000012")["final"]
    loaded = load_policy(str(tmp_path / "v000012"))
    assert all((loaded.state_dict()[k] == v).all() for k, v in sd.items())
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.slow
def test_learner_stops_on_its_wall_budget_and_snapshots(tmp_path):
    fill_store(tmp_path / "store", 4)            # two batches of two groups, then nothing
    args = learner_args(tmp_path, **{"learner.snapshot_every": 1, "learner.max_wall_s": 12})
    proc = start_learner(args, tmp_path / "learner.log")
    assert proc.wait(timeout=300) == 0, (tmp_path / "learner.log").read_text()[-3000:]
    snaps = list_snapshots(tmp_path / "snapshots")
    assert [p.name for p in snaps] == ["v000001", "v000002"]
    first, last = (read_snapshot_info(p) for p in snaps)
    assert not first["final"] and first["stop_reason"] is None
    assert last["final"] and last["stop_reason"] == MAX_WALL_S and last["wall_s"] >= 12
    assert 0 < first["wall_s"] < last["wall_s"]
    assert first["env_steps_trained"] > 0 and last["env_steps_trained"] == \
        2 * first["env_steps_trained"]               # same lengths in every group
    stop = [r for r in read_jsonl(tmp_path / "learner.jsonl") if r["event"] == "stop"][-1]
    assert stop["stop_reason"] == MAX_WALL_S and stop["policy_version"] == 2
    ckpt = json.loads((tmp_path / "ckpt" / "version-00000002" / "state.json").read_text())
    assert ckpt["extra"]["wall_s"] >= 12

    # restarted: the wall time goes on from the checkpoint, so the budget is already spent
    proc = start_learner(args, tmp_path / "learner2.log")
    assert proc.wait(timeout=300) == 0, (tmp_path / "learner2.log").read_text()[-3000:]
    stop = [r for r in read_jsonl(tmp_path / "learner.jsonl") if r["event"] == "stop"][-1]
    assert stop["stop_reason"] == MAX_WALL_S and stop["updates"] == 0
    assert read_snapshot_info(snaps[-1])["wall_s"] >= ckpt["extra"]["wall_s"]
    assert read_snapshot_info(snaps[-1])["env_steps_trained"] == last["env_steps_trained"]
