"""``pushcut store`` as a real process: 4 sender processes, exactly-once storage, a SIGKILL
mid-stream, malformed and random messages over the socket, clean shutdown."""
from __future__ import annotations

import multiprocessing as mp
import signal

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.synthetic import make_trajectory
from common.wire.trajectory import encode
from common.transport.trajectories import ACK, REJECT
from learner.store import TrajectoryStore
from tests.ingest_helpers import (StoreProcess, digest, free_tcp_address, sender_worker,
                                  wait_until)

WIRE_REASONS = {b"too_large", b"not_msgpack", b"not_a_map", b"unknown_version",
                b"missing_field", b"extra_field", b"wrong_type", b"bad_dtype", b"bad_shape",
                b"length_mismatch", b"bad_value", b"bad_frames", b"id_mismatch"}


def start_senders(address, count, *, first_again=False, hold=None):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    progress = [ctx.Value("i", 0) for _ in range(4)]
    procs = [ctx.Process(target=sender_worker,
                         args=(address, w, count, out, progress[w], 0.5, first_again and w == 0,
                               hold))
             for w in range(4)]
    for p in procs:
        p.start()
    return procs, out, progress


def collect(procs, out, timeout_s=180):
    results = [out.get(timeout=timeout_s) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return sorted(results)


def check_exactly_once(path, results, expected_total):
    """Every acknowledged id is stored once, byte-exact; LMDB opens cleanly."""
    with TrajectoryStore(str(path), readonly=True) as store:
        assert len(store) == expected_total
        for worker, acked, digests, stats, flushed in results:
            assert flushed, f"worker {worker} left trajectories unacknowledged: {stats}"
            assert set(acked) == set(digests), f"worker {worker}: acked {len(set(acked))}"
            for tid in set(acked):
                assert digest(store.get_raw(tid)) == digests[tid]
        groups = store.complete_groups()
        members = [tid for g in groups for tid in g.trajectory_ids]
        assert len(members) == len(set(members)) == expected_total
        return store.stats()


@pytest.mark.slow
def test_four_sender_processes_store_every_acknowledged_trajectory_once(tmp_path):
    address = free_tcp_address()
    store = StoreProcess(tmp_path / "store", address, tmp_path / "store.log")
    procs, out, _ = start_senders(address, 40, first_again=True)
    results = collect(procs, out)
    assert store.stop(signal.SIGTERM) == 0
    assert "store stopped:" in store.output()
    stats = check_exactly_once(tmp_path / "store", results, 160)
    assert stats["complete_groups"] == 40
    assert results[0][3]["duplicate"] == 1 and results[0][3]["acked"] == 41   # sent twice


@pytest.mark.slow
def test_store_killed_mid_stream_loses_nothing_acknowledged(tmp_path):
    address = free_tcp_address()
    store = StoreProcess(tmp_path / "store", address, tmp_path / "store.log")
    hold = mp.get_context("spawn").Event()
    procs, out, progress = start_senders(address, 60, hold=hold)
    # every sender has its first half acknowledged and waits: the kill lands mid-stream
    wait_until(lambda: sum(p.value for p in progress) == 120, 120, "120 acknowledgements")
    store.kill()
    hold.set()      # the second half goes out while no store listens
    store = StoreProcess(tmp_path / "store", address, tmp_path / "store.log")
    results = collect(procs, out)
    assert store.stop(signal.SIGINT) == 0
    # all 240, once each: what was sent into the dead socket arrived by resend or requeue
    check_exactly_once(tmp_path / "store", results, 240)


@pytest.fixture(scope="module")
def live_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "store"
    address = free_tcp_address()
    store = StoreProcess(path, address, path.parent / "store.log", "store.max_message_mb=1")
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(address)
    yield path, dealer
    dealer.close()
    assert store.stop(signal.SIGTERM) == 0


def ask(dealer, frames, timeout_s=30.0):
    dealer.send_multipart(frames)
    assert dealer.poll(int(timeout_s * 1000), zmq.POLLIN), "the store stopped answering"
    return dealer.recv_multipart()


def assert_rejected(dealer, frames):
    reply = ask(dealer, frames)
    assert reply[0] == REJECT and reply[2] in WIRE_REASONS, reply


FUZZ = settings(max_examples=600, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
values = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats()
          | st.text(max_size=12) | st.binary(max_size=32))
maps = st.dictionaries(st.text(max_size=12), values | st.lists(values, max_size=4), max_size=6)


@pytest.mark.slow
@FUZZ
@given(payload=st.binary(max_size=256))
def test_random_bytes_over_the_socket_are_rejected(live_store, payload):
    assert_rejected(live_store[1], [b"fuzz", payload])


@pytest.mark.slow
@FUZZ
@given(obj=values | maps | st.lists(values, max_size=6))
def test_random_msgpack_over_the_socket_is_rejected(live_store, obj):
    assert_rejected(live_store[1], [b"fuzz", msgpack.packb(obj, use_bin_type=True)])


@pytest.mark.slow
def test_after_the_fuzzing_nothing_was_written_and_the_store_still_answers(live_store):
    path, dealer = live_store
    assert_rejected(dealer, [b"big", b"\x00" * ((1 << 20) + 1)])       # store.max_message_mb=1
    assert_rejected(dealer, [b"one frame only"])
    with TrajectoryStore(str(path), readonly=True) as store:
        assert len(store) == 0
    traj = make_trajectory(np.random.default_rng(0), image_size=8, length=16)
    assert ask(dealer, [traj.trajectory_id.encode(), encode(traj)])[:3] == [
        ACK, traj.trajectory_id.encode(), b"stored"]
