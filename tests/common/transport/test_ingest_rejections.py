"""Every rejection class of the ingest over a live socket (IngestServer on real ZeroMQ, a real
LMDB TrajectoryStore), each sent in one batch together with valid records, which are still
acknowledged: decode range checks (bad_value), expert records in an RL store, group conflicts
(temperature, policy kind), a full group, a known id with another payload (conflict, while
the same payload again is a duplicate), records that break the batch's transaction, and a
12 MB record of a million timings."""
from __future__ import annotations

import math
import threading
import zlib

import msgpack
import numpy as np
import pytest
import zmq

from common.synthetic import make_trajectory, oversized_timings_record
from common.transport.trajectories import ACK, REJECT, IngestServer, TrajectorySender
from common.wire.trajectory import encode
from learner.store import TrajectoryStore
from tests.common.transport.test_trajectories import serving
from tests.waiting import wait_until


def record(tid: str, group: str, size: int = 2, **kw):
    return make_trajectory(np.random.default_rng(zlib.crc32(tid.encode())), trajectory_id=tid,
                           group_id=group, group_size=size, image_size=8, length=16, **kw)


def mutated(traj, **fields) -> bytes:
    """The wire bytes of ``traj`` with some fields replaced (what a broken actor might send)."""
    msg = msgpack.unpackb(encode(traj))
    msg.update(fields)
    return msgpack.packb(msg, use_bin_type=True)


def nan_log_prob(traj) -> bytes:
    msg = msgpack.unpackb(encode(traj))
    data = msg["behaviour_log_probs"]["data"]
    msg["behaviour_log_probs"]["data"] = np.float32(np.nan).tobytes() + data[4:]
    return msgpack.packb(msg, use_bin_type=True)


class HeldCommits:
    """The store's commit, recording each batch's ids; the batch holding ``hold`` waits for
    :meth:`release`, so that everything sent meanwhile forms the next batch."""

    def __init__(self, store: TrajectoryStore, hold: str = "hold"):
        self.store, self.hold = store, hold
        self.calls: list[list[str]] = []
        self._gate = threading.Event()

    def __call__(self, items):
        ids = [t.trajectory_id for t, _ in items]
        self.calls.append(ids)
        if self.hold in ids:
            self._gate.wait(60)
        return self.store.commit(items)

    def holding(self) -> bool:
        return any(self.hold in c for c in self.calls)

    def release(self) -> None:
        self._gate.set()


class Dealer:
    """A raw DEALER: send [tid, payload] messages, collect the replies by tid."""

    def __init__(self, address: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.replies: dict[str, list[bytes]] = {}

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        for tid, payload in messages:
            self.sock.send_multipart([tid.encode(), payload])

    def wait(self, tids, timeout_s: float = 30.0) -> dict[str, list[bytes]]:
        """-> {tid: reply frames without the tid} once every tid in ``tids`` has one."""
        def collect():
            while self.sock.poll(10, zmq.POLLIN):
                frames = self.sock.recv_multipart()
                self.replies[frames[1].decode()] = [frames[0], *frames[2:]]
            return set(tids) <= set(self.replies)
        wait_until(collect, timeout_s, f"replies to {sorted(tids)}")
        return {tid: self.replies[tid] for tid in tids}

    def close(self) -> None:
        self.sock.close()


def test_every_rejection_class_leaves_the_valid_records_of_its_batch_acknowledged(
        tmp_path, monkeypatch):
    store = TrajectoryStore(str(tmp_path / "store"))
    put_txn = store._put_txn
    breaks = {"poison-value": OverflowError("Python int too large to convert to C long"),
              "poison-store": RuntimeError("the store tripped over this one")}

    def flaky(txn, traj, raw):   # records that break the transaction after decode passed
        if traj.trajectory_id in breaks:
            raise breaks[traj.trajectory_id]
        return put_txn(txn, traj, raw)

    monkeypatch.setattr(store, "_put_txn", flaky)
    commits = HeldCommits(store)
    server = IngestServer("tcp://127.0.0.1:*", commits)
    w1, w2 = record("w1", "gw", 1), record("w2", "gw2", 1)
    hot = record("mix-1", "mix")
    hot.temperature = 1.0
    changed = record("w2", "gw2", 1, success=not w2.success)
    ok = [record(f"ok-{i}", "ok") for i in range(3)]
    batch = [   # (tid, payload, expected reply)
        ("ok-0", encode(ok[0]), [ACK, b"stored"]),
        ("nan-logp", nan_log_prob(record("nan-logp", "x")), [REJECT, b"bad_value"]),
        ("big-version", mutated(record("big-version", "x"), policy_version=2 ** 63),
         [REJECT, b"bad_value"]),
        ("late", mutated(record("late", "x"), created_at=1e308), [REJECT, b"bad_value"]),
        ("nan-time", mutated(record("nan-time", "x"), created_at=math.nan),
         [REJECT, b"bad_value"]),
        ("bins", mutated(record("bins", "x"), num_bins=1), [REJECT, b"bad_value"]),
        ("timings", mutated(record("timings", "x"), timings={f"k{i}": 0.0 for i in range(40)}),
         [REJECT, b"too_large"]),
        ("expert", encode(record("expert", "e", 1, policy_version=-1)),
         [REJECT, b"expert_record"]),
        ("mix-0", encode(record("mix-0", "mix")), [ACK, b"stored"]),
        ("mix-1", encode(hot), [REJECT, b"group_conflict"]),
        ("poison-value", encode(record("poison-value", "p")), [REJECT, b"bad_value"]),
        ("w1", encode(w1), [ACK, b"duplicate"]),
        ("w2", encode(changed), [REJECT, b"conflict"]),
        ("poison-store", encode(record("poison-store", "p")), [REJECT, b"store_error"]),
        ("ok-1", encode(ok[1]), [ACK, b"stored"]),
        ("ok-2", encode(ok[2]), [REJECT, b"group_full"]),
    ]
    with serving(server):
        dealer = Dealer(server.address)
        dealer.send([("w1", encode(w1)), ("w2", encode(w2))])
        assert dealer.wait(["w1", "w2"]) == {"w1": [ACK, b"stored"], "w2": [ACK, b"stored"]}
        dealer.send([("hold", encode(record("hold", "h", 1)))])
        wait_until(commits.holding, 30, "the held commit")
        dealer.send([(tid, payload) for tid, payload, _ in batch])
        wait_until(lambda: server.counters["received"] == 3 + len(batch), 30,
                   "every message received while the commit is held")
        commits.release()
        replies = dealer.wait([tid for tid, _, _ in batch] + ["hold"])
        dealer.close()
    assert replies.pop("hold") == [ACK, b"stored"]
    assert {tid: r[:2] for tid, r in replies.items()} == {tid: e for tid, _, e in batch}
    assert b"w2" in replies["w2"][2] and b"OverflowError" in replies["poison-value"][2]
    decoded = {"nan-logp", "big-version", "late", "nan-time", "bins", "timings"}
    store_level = [tid for tid, _, _ in batch if tid not in decoded]
    assert commits.calls[-1] == store_level          # one batch, one commit call
    kept = ["ok-0", "ok-1", "mix-0", "w1", "w2", "hold"]
    assert {t for t in {*kept, *store_level} if t in store} == set(kept)
    assert store.get_raw("w2") == encode(w2)         # the conflicting payload changed nothing
    assert server.rejected["bad_value"] == 6 and server.rejected["too_large"] == 1
    assert server.counters["stored"] == 6
    store.close()


def test_a_demo_store_takes_expert_groups_but_not_mixed_kinds(tmp_path):
    store = TrajectoryStore(str(tmp_path / "demos"), accept_expert=True)
    server = IngestServer("tcp://127.0.0.1:*", store.commit)
    demo = record("demo", "d", 1, policy_version=-1)
    sampled = record("s-0", "s")
    intruder = record("s-1", "s", policy_version=-1)
    with serving(server):
        dealer = Dealer(server.address)
        dealer.send([(t.trajectory_id, encode(t)) for t in (demo, sampled, intruder)])
        replies = dealer.wait(["demo", "s-0", "s-1"])
        dealer.close()
    assert replies["demo"] == [ACK, b"stored"] and replies["s-0"] == [ACK, b"stored"]
    assert replies["s-1"][:2] == [REJECT, b"group_conflict"]
    assert b"expert True" in replies["s-1"][2]
    store.close()


def test_a_burst_of_oversized_timings_maps_is_refused_and_memory_stays_bounded(tmp_path):
    """200 records whose timings map has 100,000 keys (about 1.8 MB of msgpack each) are
    all refused as too_large; the store keeps none of them and this process (the ingest
    server and the store) grows by far less than the burst's 360 MB."""
    import psutil
    store = TrajectoryStore(str(tmp_path / "store"))
    server = IngestServer("tcp://127.0.0.1:*", store.commit)
    huge = {f"timing-{i:06d}": 0.0 for i in range(100_000)}
    rss = psutil.Process().memory_info
    with serving(server):
        dealer = Dealer(server.address)
        payload = mutated(record("burst-0", "b"), timings=huge)
        before = rss().rss
        for start in range(0, 200, 20):
            tids = [f"burst-{i}" for i in range(start, start + 20)]
            dealer.send([(tid, payload) for tid in tids])
            replies = dealer.wait(tids, 60)
            assert all(r[:2] == [REJECT, b"too_large"] for r in replies.values())
        grown = rss().rss - before
        dealer.close()
    assert len(payload) > 1_000_000 and grown < 100 * 2 ** 20, grown
    assert store.stats()["trajectories"] == 0
    store.close()


@pytest.mark.parametrize("limit_mb", [64, 8])
def test_a_12_mb_record_of_a_million_timings_is_refused_and_the_stream_goes_on(
        tmp_path, limit_mb):
    """Over a real socket: refused as too_large by the map's header (or, under a lower
    message limit, by its size), while the valid record sent after it is stored."""
    store = TrajectoryStore(str(tmp_path / "store"))
    server = IngestServer("tcp://127.0.0.1:*", store.commit, max_message_bytes=limit_mb << 20)
    bad = oversized_timings_record("bad-0")
    with serving(server), TrajectorySender(server.address, resend_after_s=60) as sender:
        sender.send(bad, "bad-0")
        sender.send(record("ok-0", "g", 1))
        assert sender.flush(60)
    assert len(bad) > 12_000_000
    assert sender.rejected == {"too_large": 1} and list(sender.acked_ids) == ["ok-0"]
    assert sender.rejections[0][:2] == ("bad-0", "too_large")
    assert (f"{len(bad)} bytes > limit {8 << 20}" if limit_mb == 8
            else "1000000 exceeds max_map_len") in sender.rejections[0][2]
    assert "ok-0" in store and "bad-0" not in store
    store.close()
