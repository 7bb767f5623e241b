"""learner/store.py on real LMDB files: idempotence, the group index, persisted consumption
marks, eviction order, map growth, and readers/writers in other processes."""
from __future__ import annotations

import time
import multiprocessing as mp

import numpy as np
import pytest

from common.synthetic import make_trajectory
from common.wire.trajectory import WireError, encode
from learner.store import EVICTED, TrajectoryStore
from tests.ingest_helpers import wait_until


def traj(group_id: str, i: int, *, group_size: int = 2, version: int = 0, created_at: float = 1.0,
         image_size: int = 8, success: bool | None = None, task_id: str = "spatial/0"):
    t = make_trajectory(np.random.default_rng(i), trajectory_id=f"{group_id}-{i}",
                        group_id=group_id, group_size=group_size, policy_version=version,
                        image_size=image_size, length=16, success=success, task_id=task_id)
    t.created_at = created_at
    return t


def put_group(store, group_id, *, size=2, **kw):
    for i in range(size):
        store.put(traj(group_id, i, group_size=size, **kw))


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "store")


def test_put_is_durable_idempotent_and_byte_exact(path):
    t = traj("g", 0)
    with TrajectoryStore(path) as store:
        assert store.put(t) is True
        assert store.put(t) is False
        assert len(store) == 1 and "g-0" in store and "nope" not in store
    with TrajectoryStore(path, readonly=True) as store:    # reopened: still there, unchanged
        assert store.get_raw("g-0") == encode(t)
        assert store.get("g-0").equals(t)
        assert store.get("nope") is None


def test_a_group_is_complete_when_all_members_arrived(path):
    with TrajectoryStore(path) as store:
        store.put(traj("g", 0, group_size=3, success=True, version=4))
        store.put(traj("g", 1, group_size=3, success=False, version=5))
        assert store.complete_groups() == []
        store.put(traj("g", 2, group_size=3, success=True, version=5))
        [info] = store.complete_groups()
        assert info.trajectory_ids == ["g-0", "g-1", "g-2"]
        assert info.successes == [True, False, True] and info.success_rate == pytest.approx(2 / 3)
        assert info.policy_versions == [4, 5, 5] and info.group_size == 3
        assert [t.trajectory_id for t in store.read_group("g")] == ["g-0", "g-1", "g-2"]
        assert store.read_group("unknown") == []


def test_complete_groups_come_oldest_first_then_in_arrival_order(path):
    with TrajectoryStore(path) as store:
        for gid, created in [("z", 5.0), ("b", 1.0), ("a", 1.0), ("y", 0.5)]:
            put_group(store, gid, created_at=created)
        assert [g.group_id for g in store.complete_groups()] == ["y", "b", "a", "z"]


def test_group_conflicts_are_rejected_and_put_many_is_all_or_nothing(path):
    with TrajectoryStore(path) as store:
        store.put(traj("g", 0, group_size=2))
        with pytest.raises(WireError) as err:
            store.put(traj("g", 1, group_size=2, task_id="goal/3"))
        assert err.value.reason == "group_conflict" and "goal/3" in err.value.detail
        store.put(traj("g", 1))
        with pytest.raises(WireError) as err:
            store.put(traj("g", 2))
        assert err.value.reason == "group_full"
        batch = [(t, encode(t)) for t in (traj("h", 0), traj("h", 1), traj("g", 3))]
        with pytest.raises(WireError):
            store.put_many(batch)
        assert len(store) == 2 and "h-0" not in store
        assert store.put_many(batch[:2] + batch[:1]) == [True, True, False]
        outcomes = store.commit([(traj("g", 4), b"x"), (traj("h", 0), b"y")])
        assert outcomes[0].reason == "group_full" and outcomes[1] == "duplicate"


def test_consumption_marks_persist_and_consumed_groups_never_come_back(path):
    with TrajectoryStore(path) as store:
        put_group(store, "a")
        put_group(store, "b")
        store.mark_consumed(["a"], reason="trained")
        store.mark_consumed(["a"], reason="filtered")         # the first reason stays
        assert [g.group_id for g in store.complete_groups()] == ["b"]
    with TrajectoryStore(path) as store:
        assert store.is_consumed("a") and not store.is_consumed("b")
        assert store.consumption_marks() == {"a": "trained"}
        assert [g.group_id for g in store.complete_groups()] == ["b"]
        assert {g.group_id for g in store.complete_groups(include_consumed=True)} == {"a", "b"}
        assert store.commit([(traj("a", 7), b"late")]) == ["dropped"]
        assert store.stats()["consumed_groups"] == 1 and store.stats()["complete_groups"] == 1


def test_restored_marks_apply_to_a_fresh_store(tmp_path):
    with TrajectoryStore(str(tmp_path / "one")) as store:
        put_group(store, "a")
        store.mark_consumed(["a"], "trained")
        marks = store.consumption_marks()
    with TrajectoryStore(str(tmp_path / "two")) as store:
        put_group(store, "a")
        put_group(store, "b")
        store.restore_consumption_marks(marks)
        assert store.consumption_marks() == {"a": "trained"}
        assert [g.group_id for g in store.complete_groups()] == ["b"]


def test_eviction_takes_consumed_groups_first_then_the_stalest(path):
    with TrajectoryStore(path, capacity=8) as store:
        for gid, version, created in [("v0", 0, 9.0), ("v1", 1, 1.0), ("v2a", 2, 2.0),
                                      ("v2b", 2, 1.5)]:
            put_group(store, gid, version=version, created_at=created)
        store.mark_consumed(["v2a"])
        assert len(store) == 8
        put_group(store, "v3", version=3)                 # over capacity: the consumed one goes
        assert len(store) == 8 and "v2a-0" not in store and "v0-0" in store
        put_group(store, "v4", version=4)                 # then the lowest policy_version
        assert "v0-0" not in store and store.consumption_marks()["v0"] == EVICTED
        put_group(store, "v5", version=5)
        put_group(store, "v6", version=6)                 # v1, then v2b (older than v2a was)
        assert "v1-0" not in store and "v2b-0" not in store and len(store) == 8
        assert store.commit([(traj("v0", 5), b"late member")]) == ["dropped"]
        assert {g.group_id for g in store.complete_groups()} == {"v3", "v4", "v5", "v6"}
        stats = store.stats()
        assert stats["evicted"] == 8 and stats["evicted_groups"] == 4
        assert stats["consumed_groups"] == 1 and stats["trajectories"] == 8


def test_the_map_grows_when_full(path):
    with TrajectoryStore(path, map_size_mb=1) as store:
        trajs = [traj(f"g{i // 2}", i, image_size=128) for i in range(24)]   # ~2.4 MB
        for t in trajs:
            store.put(t)
        stats = store.stats()
        assert stats["map_size"] >= 4 << 20 and stats["bytes_used"] > 2 << 20
        assert len(store) == 24
    with TrajectoryStore(path, map_size_mb=1) as store:     # reopens with the grown data
        assert all(store.get(t.trajectory_id).equals(t) for t in trajs)


def test_a_path_opens_once_per_process_and_readonly_refuses_writes(path):
    with TrajectoryStore(path) as store:
        with pytest.raises(RuntimeError, match="already open"):
            TrajectoryStore(path)
        store.put(traj("g", 0))
    with pytest.raises(FileNotFoundError):
        TrajectoryStore(path + "-missing", readonly=True)
    with TrajectoryStore(path, readonly=True) as store:
        with pytest.raises(PermissionError):
            store.mark_consumed(["g"])


def _reader(path: str, expected: int, out) -> None:
    """Other process: read while the parent writes (and grows the map), then consume 'g0'."""
    with TrajectoryStore(path, map_size_mb=1) as store:
        out.put("opened")
        wait_until(lambda: len(store) >= expected, 60, f"{expected} trajectories")
        out.put(sorted(g.group_id for g in store.complete_groups()))
        store.mark_consumed(["g0"], reason="other-process")


def test_readers_and_writers_in_other_processes(path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with TrajectoryStore(path, map_size_mb=1) as store:
        put_group(store, "g0")
        child = ctx.Process(target=_reader, args=(path, 24, out))
        child.start()
        assert out.get(timeout=60) == "opened"
        for i in range(1, 12):                      # grows the map past the child's view
            put_group(store, f"g{i}", image_size=128)
        seen = out.get(timeout=60)
        child.join(60)
        assert child.exitcode == 0
        assert seen == sorted(f"g{i}" for i in range(12))
        assert store.is_consumed("g0") and store.consumption_marks() == {"g0": "other-process"}
        assert "g0" not in {g.group_id for g in store.complete_groups()}
        assert store.stats()["map_size"] > 1 << 20


def _grow(path: str) -> None:
    """Other process: write until the map has grown past 1 MiB."""
    with TrajectoryStore(path, map_size_mb=1) as store:
        for i in range(12):
            put_group(store, f"g{i}", image_size=128)
        assert store.stats()["map_size"] > 1 << 20


def test_a_store_opened_just_before_another_process_grows_the_map_adopts_it(path):
    """The race of a restarted learner: lmdb.open saw the old map, open_db meets the new."""
    import lmdb
    TrajectoryStore(path, map_size_mb=1).close()
    env = lmdb.open(path, map_size=1 << 20, subdir=True, max_dbs=8)
    child = mp.get_context("spawn").Process(target=_grow, args=(path,))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    with pytest.raises(lmdb.MapResizedError):   # what a bare open_db meets here
        env.open_db(b"traj")
    store = TrajectoryStore.__new__(TrajectoryStore)
    store._env, store.readonly = env, False
    dbs = store._open_dbs()
    with env.begin(db=dbs["traj"]) as txn:
        assert txn.stat(dbs["traj"])["entries"] == 24
    env.close()


# ---------------------------------------------------------------- what a commit refuses
def test_the_same_record_is_a_duplicate_and_another_under_its_id_a_conflict(path):
    with TrajectoryStore(path) as store:
        first = traj("g", 0)
        assert store.commit([(first, encode(first))]) == ["stored"]
        again = traj("g", 0)                              # the same record, rebuilt
        assert store.commit([(again, memoryview(encode(again)))]) == ["duplicate"]
        other = traj("g", 0, success=not first.success)  # same id, different payload
        [outcome] = store.commit([(other, encode(other))])
        assert isinstance(outcome, WireError) and outcome.reason == "conflict"
        assert "g-0" in outcome.detail
        assert store.get_raw("g-0") == encode(first)      # the stored record is unchanged
        with pytest.raises(WireError, match="conflict"):
            store.put(other)


def test_an_rl_store_refuses_expert_records_unless_it_holds_demos(tmp_path):
    demo = traj("d", 0, group_size=1, version=-1)
    with TrajectoryStore(str(tmp_path / "rl")) as store:
        [outcome] = store.commit([(demo, encode(demo))])
        assert outcome.reason == "expert_record" and len(store) == 0
    with TrajectoryStore(str(tmp_path / "demos"), accept_expert=True) as store:
        assert store.commit([(demo, encode(demo))]) == ["stored"]


def test_group_members_agree_on_temperature_and_policy_kind(path):
    with TrajectoryStore(path, accept_expert=True) as store:
        store.put(traj("g", 0, group_size=3))
        hotter = traj("g", 1, group_size=3)
        hotter.temperature = 1.0
        expert = traj("g", 2, group_size=3, version=-1)
        fine = traj("g", 3, group_size=3)
        outcomes = store.commit([(t, encode(t)) for t in (hotter, expert, fine)])
        assert [getattr(o, "reason", o) for o in outcomes] == [
            "group_conflict", "group_conflict", "stored"]
        assert "temperature 1.0" in outcomes[0].detail and "expert True" in outcomes[1].detail
        assert store.group_info("g").trajectory_ids == ["g-0", "g-3"]


def test_a_record_that_breaks_the_transaction_is_rejected_and_the_rest_stored(path, monkeypatch):
    with TrajectoryStore(path) as store:
        put_txn = store._put_txn
        failures = {"g-1": OverflowError("int too large to convert"),
                    "h-0": RuntimeError("something odd in the store")}
        attempts = []

        def flaky(txn, t, raw):
            attempts.append(t.trajectory_id)
            if t.trajectory_id in failures:
                raise failures[t.trajectory_id]
            return put_txn(txn, t, raw)

        monkeypatch.setattr(store, "_put_txn", flaky)
        batch = [traj("g", 0), traj("g", 1), traj("h", 0), traj("h", 1)]
        outcomes = store.commit([(t, encode(t)) for t in batch])
        assert outcomes[0] == outcomes[3] == "stored"
        assert (outcomes[1].reason, outcomes[2].reason) == ("bad_value", "store_error")
        assert "OverflowError" in outcomes[1].detail and "g-1" in outcomes[1].detail
        assert attempts[:2] == ["g-0", "g-1"]               # the batch's transaction first
        assert sorted(t.trajectory_id for t in batch if t.trajectory_id in store) == [
            "g-0", "h-1"]
        failures["g-0"] = OSError("disk full")               # the environment, not a record
        with pytest.raises(OSError):
            store.commit([(traj("g", 0), encode(traj("g", 0))), (traj("k", 0), b"")])


def test_the_largest_values_decode_accepts_fit_the_store_keys(path):
    t = traj("g", 0, version=2 ** 63 - 1, created_at=time.time() + 86_000)
    with TrajectoryStore(path) as store:
        assert store.commit([(t, encode(t))]) == ["stored"]
        assert store.group_info("g").policy_versions == [2 ** 63 - 1]
