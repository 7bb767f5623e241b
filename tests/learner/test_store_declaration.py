"""The store admits only what the declared learner can train on (learner/store.py with
common/wire/declaration.py): each refusal reason against a real LMDB environment, the
declaration's durability and replacement, and a real ``pushcut store`` process answering
senders over ZeroMQ with the reasons."""
from __future__ import annotations

import dataclasses
import json
import re
import signal
import zlib

import numpy as np
import pytest

from common.synthetic import make_trajectory
from common.transport.trajectories import TrajectorySender
from common.wire.declaration import TrainingDeclaration
from common.wire.errors import WireError
from common.wire.trajectory import encode
from learner.store import TrajectoryStore
from tests.ingest_helpers import StoreProcess, free_tcp_address, wait_until

DECLARED = TrainingDeclaration(num_bins=256, chunk_size=8, action_dim=7, num_views=1,
                               image_size=8, proprio_dim=8, temperatures=(1.6,),
                               policy_version=4, version_margin=2)


def group(name: str, size: int = 2, **kw) -> list:
    """A complete group of 8x8 single-view records at T=1.6 and version 4, unless told."""
    kw = {"image_size": 8, "length": 16, "policy_version": 4, **kw}
    return [make_trajectory(np.random.default_rng(zlib.crc32(f"{name}.{i}".encode())),
                            trajectory_id=f"{name}.{i}", group_id=name, group_size=size, **kw)
            for i in range(size)]


POISON = {   # group -> (its records' fields, the reason the declared store gives)
    "shape": ({"image_size": 32, "cameras": 2, "proprio_dim": 17}, "shape_mismatch"),
    "pixel": ({"image_size": 1}, "shape_mismatch"),
    "bins": ({"num_bins": 7}, "shape_mismatch"),
    "future": ({"policy_version": 2 ** 63 - 1, "temperature": 0.7}, "future_version"),
    "cold": ({"temperature": 0.7}, "temperature_mismatch"),
}


def commit(store: TrajectoryStore, trajs: list) -> dict[str, str]:
    """-> {trajectory_id: outcome or rejection reason}."""
    outcomes = store.commit([(t, encode(t)) for t in trajs])
    return {t.trajectory_id: o.reason if isinstance(o, WireError) else o
            for t, o in zip(trajs, outcomes)}


@pytest.fixture
def store(tmp_path):
    with TrajectoryStore(str(tmp_path / "store"), map_size_mb=16) as s:
        yield s


def test_without_a_declaration_only_the_record_contract_applies(store):
    assert store.declaration() is None
    odd = group("shape", **POISON["shape"][0]) + group("cold", temperature=0.7)
    assert set(commit(store, odd).values()) == {"stored"}
    store.declare(DECLARED)      # a resend of what is stored is answered as before
    assert set(commit(store, odd).values()) == {"duplicate"}


def test_each_record_the_learner_could_not_train_on_is_rejected_with_its_reason(store):
    store.declare(DECLARED)
    batch = group("good") + [t for name, (kw, _) in POISON.items() for t in group(name, **kw)]
    batch += group("ahead", policy_version=6)    # the margin exactly: accepted
    outcomes = commit(store, batch)
    expected = {**{f"good.{i}": "stored" for i in range(2)},
                **{f"ahead.{i}": "stored" for i in range(2)},
                **{f"{name}.{i}": reason for name, (_, reason) in POISON.items()
                   for i in range(2)}}
    assert outcomes == expected
    assert sorted(g.group_id for g in store.complete_groups()) == ["ahead", "good"]
    assert len(store) == 4 and "shape.0" not in store
    assert commit(store, group("good")) == {"good.0": "duplicate", "good.1": "duplicate"}


def test_the_declaration_is_durable_and_a_new_one_applies_from_the_next_commit(tmp_path):
    path = str(tmp_path / "store")
    with TrajectoryStore(path, map_size_mb=16) as store:
        store.declare(DECLARED)
    with TrajectoryStore(path, map_size_mb=16) as store:      # another process's view
        assert store.declaration() == DECLARED
        assert set(commit(store, group("v7", policy_version=7)).values()) == {"future_version"}
        store.declare(dataclasses.replace(DECLARED, policy_version=5, temperatures=(0.7,)))
        assert set(commit(store, group("v7", policy_version=7, temperature=0.7)).values()) \
            == {"stored"}
        assert set(commit(store, group("hot")).values()) == {"temperature_mismatch"}
        # local writers (tools, tests) store what they are given: the learner screens it
        store.put_many([(t, encode(t)) for t in group("local", image_size=1)])
        assert "local.0" in store


def test_a_declaration_this_build_cannot_read_leaves_the_schema_checks(store):
    store._write(lambda txn: txn.put(b"declaration", b"\xc1", db=store._db["info"]))
    assert store.declaration() is None
    assert set(commit(store, group("shape", **POISON["shape"][0])).values()) == {"stored"}


def final_stats(log: str) -> dict:
    return json.loads(re.findall(r"^store stopped: (\{.*\})$", log, re.M)[-1])


@pytest.mark.slow
def test_a_running_store_process_answers_senders_with_the_declared_reasons(tmp_path):
    path, address = tmp_path / "store", free_tcp_address()
    proc = StoreProcess(path, address, tmp_path / "store.log")
    try:
        with TrajectorySender(address, resend_after_s=0.5) as sender:
            for t in group("before", **POISON["shape"][0]):   # no declaration yet: stored
                sender.send(t)
            assert sender.flush(60) and sender.counters["stored"] == 2, sender.stats()
            with TrajectoryStore(str(path)) as learner_side:  # the learner's own handle
                learner_side.declare(DECLARED)
            for name, (kw, _) in POISON.items():
                for t in group(name, **kw):
                    sender.send(t)
            for t in group("good"):
                sender.send(t)
            assert sender.flush(60), sender.stats()
            assert sender.counters["stored"] == 4 and dict(sender.rejected) == {
                "shape_mismatch": 6, "future_version": 2, "temperature_mismatch": 2}
            assert {(tid.split(".")[0], reason) for tid, reason, _ in sender.rejections} == {
                (name, reason) for name, (_, reason) in POISON.items()}
        wait_until(lambda: "rejected future_version=2" in proc.output(), 60,
                   "the store's log line counting the rejections")
    finally:
        assert proc.stop(signal.SIGTERM) == 0
    stats = final_stats(proc.output())
    assert stats["rejected_shape_mismatch"] == 6 and stats["rejected_future_version"] == 2
    assert stats["rejected_temperature_mismatch"] == 2 and stats["trajectories"] == 4
