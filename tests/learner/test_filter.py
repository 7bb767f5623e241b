"""learner/filter.py over a real LMDB TrajectoryStore."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from common.config.schema import AlgoConfig
from common.synthetic import make_trajectory
from learner.filter import DynamicSamplingFilter, balance_tasks, select_groups
from learner.store import GroupInfo, TrajectoryStore

CFG = AlgoConfig(groups_per_batch=3, max_staleness=4, success_lo=0.1, success_hi=0.9)


def put_group(store, rng, successes, *, version=10, task="spatial/0", created_at=1.0,
              complete=True):
    gid = uuid.uuid4().hex
    members = successes if complete else successes[:-1]
    for s in members:
        t = make_trajectory(rng, group_id=gid, group_size=len(successes), length=8,
                            image_size=8, policy_version=version, success=s, task_id=task)
        t.created_at = created_at
        store.put(t)
    return gid


@pytest.fixture
def store(tmp_path):
    with TrajectoryStore(str(tmp_path / "store"), capacity=10_000, map_size_mb=16) as s:
        yield s


def test_keeps_mixed_fresh_groups_and_drops_the_rest_with_reasons(store):
    rng = np.random.default_rng(0)
    mixed = put_group(store, rng, [True, False, False, False], version=10)
    edge = put_group(store, rng, [True, True, True, False], version=6)     # exactly 4 behind
    stale = put_group(store, rng, [True, False, True, False], version=5)   # 5 behind
    all_fail = put_group(store, rng, [False] * 4)
    all_win = put_group(store, rng, [True] * 4)
    partial = put_group(store, rng, [True, False, False, False], complete=False)
    flt = DynamicSamplingFilter(store, CFG)
    sel = flt.poll(policy_version=10, min_groups=1)
    assert sel is not None and set(sel.group_ids) == {mixed, edge}
    assert sel.dropped == {stale: "stale", all_fail: "success_low", all_win: "success_high"}
    assert all(len(g) == 4 and g[0].group_id in (mixed, edge) for g in sel.groups)
    marks = store.consumption_marks()
    assert marks == {stale: "stale", all_fail: "success_low", all_win: "success_high"}
    # rollouts: every complete group seen once (1 + 3 + 2 + 0 + 4 of 20), kept or dropped
    assert flt.report() == {"kept": 2, "dropped_stale": 1, "dropped_success_high": 1,
                            "dropped_success_low": 1, "rollout_successes": 10,
                            "rollout_trajectories": 20}
    # chosen groups are not consumed until trained; then never returned again
    assert flt.poll(policy_version=10, min_groups=1).group_ids == sel.group_ids
    assert flt.report()["rollout_trajectories"] == 20       # seen again: not counted twice
    flt.mark_trained(sel)
    assert store.consumption_marks()[mixed] == "trained"
    assert flt.poll(policy_version=10, min_groups=1) is None
    assert not store.is_consumed(partial)


def test_waits_for_a_full_batch_without_consuming(store):
    rng = np.random.default_rng(1)
    first = put_group(store, rng, [True, False], created_at=1)
    flt = DynamicSamplingFilter(store, CFG)
    assert flt.poll(policy_version=10) is None          # needs groups_per_batch = 3
    assert not store.is_consumed(first)
    for t in (2, 3, 4):
        put_group(store, rng, [True, False], created_at=t)
    sel = flt.poll(policy_version=10)
    assert len(sel.groups) == 3 and first not in sel.group_ids    # freshest first
    flt.mark_trained(sel)
    assert flt.poll(policy_version=10) is None and not store.is_consumed(first)


def test_balances_tasks_round_robin_freshest_first(store):
    rng = np.random.default_rng(2)
    a = [put_group(store, rng, [True, False], task="spatial/0", created_at=t) for t in (3, 4, 5)]
    b = put_group(store, rng, [True, False], task="goal/1", created_at=2)
    c = put_group(store, rng, [True, False], task="long/2", created_at=1)
    old = put_group(store, rng, [True, False], task="long/2", created_at=9, version=8)
    sel = DynamicSamplingFilter(store, CFG).poll(policy_version=10)
    assert sel.group_ids == [a[2], b, c]
    sel = DynamicSamplingFilter(store, AlgoConfig(groups_per_batch=5)).poll(policy_version=10)
    assert sel.group_ids == [a[2], b, c, a[1], old]


def info(gid, task, t, successes=(True, False), versions=(3, 3)):
    return GroupInfo(group_id=gid, task_id=task, init_state_id=0, group_size=len(successes),
                     trajectory_ids=[f"{gid}-{i}" for i in range(len(successes))],
                     successes=list(successes), policy_versions=list(versions), created_at=t)


def test_select_groups_pure():
    infos = [info("a1", "a", 1), info("a2", "a", 2), info("b1", "b", 3),
             info("old", "b", 0, versions=(3, 0)), info("win", "c", 0, successes=(True, True))]
    chosen, dropped = select_groups(infos, policy_version=4, cfg=AlgoConfig(max_staleness=3),
                                    limit=2)
    assert [g.group_id for g in chosen] == ["b1", "a2"]
    assert dropped == {"old": "stale", "win": "success_high"}
    assert balance_tasks([], 3) == []
    assert [g.group_id for g in balance_tasks(infos[:3], 10)] == ["b1", "a2", "a1"]


# ---------------------------------------------------------------- quarantine
def test_quarantined_groups_are_marked_counted_and_the_rest_come_back(store):
    rng = np.random.default_rng(4)
    a, b, c = (put_group(store, rng, [True, False], task=f"spatial/{i}") for i in range(3))
    flt = DynamicSamplingFilter(store, CFG)
    sel = flt.poll(policy_version=10)
    assert set(sel.group_ids) == {a, b, c} and flt.kept == 3
    flt.quarantine(sel, [b])
    assert store.consumption_marks() == {b: "quarantined"}
    assert flt.report()["dropped_quarantined"] == 1 and flt.kept == 0
    again = flt.poll(policy_version=10, min_groups=1)   # never retried; the others return
    assert set(again.group_ids) == {a, c} and flt.kept == 2


def test_a_group_whose_records_no_longer_decode_is_quarantined(store):
    rng = np.random.default_rng(5)
    good = put_group(store, rng, [True, False])
    bad = put_group(store, rng, [True, False])
    [member, _] = store.group_info(bad).trajectory_ids
    store._write(lambda txn: txn.put(member.encode(), b"\xc1not a record", db=store._db["traj"]))
    flt = DynamicSamplingFilter(store, CFG)
    sel = flt.poll(policy_version=10, min_groups=1)
    assert sel.group_ids == [good] and sel.dropped == {bad: "quarantined"}
    assert store.consumption_marks() == {bad: "quarantined"}


def test_set_aside_groups_keep_their_own_reasons_and_the_rest_come_back(store):
    rng = np.random.default_rng(6)
    a, b, c = (put_group(store, rng, [True, False], task=f"spatial/{i}") for i in range(3))
    flt = DynamicSamplingFilter(store, CFG)
    sel = flt.poll(policy_version=10)
    flt.set_aside(sel, {a: "temperature_mismatch", c: "shape_mismatch"})
    assert store.consumption_marks() == {a: "temperature_mismatch", c: "shape_mismatch"}
    report = flt.report()
    assert report["dropped_temperature_mismatch"] == report["dropped_shape_mismatch"] == 1
    assert flt.poll(policy_version=10, min_groups=1).group_ids == [b]


def test_an_update_counts_as_trained_only_when_loss_and_grad_norm_are_finite():
    from learner.learner import finite_update
    assert finite_update({"loss": 0.1, "grad_norm": 2.0})
    assert not finite_update({"loss": float("nan"), "grad_norm": 2.0})
    assert not finite_update({"loss": 0.1, "grad_norm": float("inf")})
