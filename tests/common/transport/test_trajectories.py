"""common/transport/trajectories.py over real ZeroMQ sockets: backpressure, resends, rejections,
reconnects, commit-then-ack, CurveZMQ."""
from __future__ import annotations

import contextlib
import threading

import msgpack
import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from common.config import StoreConfig
from common.transport.curve import CurveClientKeys, CurveServerKeys, generate_keypair
from common.synthetic import make_trajectory
from common.wire.trajectory import WireError, encode
from common.transport.trajectories import ACK, REJECT, IngestServer, TrajectorySender
from learner.store import TrajectoryStore
from learner.store_process import StoreService
from tests.ingest_helpers import free_tcp_address, wait_until


def small(i: int, **kw):
    kw.setdefault("group_id", f"g{i // 2}")
    return make_trajectory(np.random.default_rng(i), trajectory_id=f"t{i}", group_size=2,
                           image_size=8, length=16, **kw)


@pytest.fixture
def router():
    """A bare ROUTER standing in for a store that we steer by hand."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close()


def recv_until(sock, sender, timeout_s=10.0):
    """Receive one message on the bare ROUTER while the sender services its socket."""
    def ready():
        sender.poll(0.01)
        return sock.poll(10, zmq.POLLIN) and sock.recv_multipart()
    return wait_until(ready, timeout_s, "a message at the router")


@contextlib.contextmanager
def serving(server: IngestServer):
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop.is_set, 0.05))
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(10)
        server.close()


def test_send_blocks_at_the_in_flight_limit(router):
    sock, address = router
    with TrajectorySender(address, max_in_flight=3, resend_after_s=30) as sender:
        for i in range(3):
            sender.send(small(i), timeout_s=5)
        with pytest.raises(TimeoutError, match="3 trajectories unacknowledged"):
            sender.send(small(3), timeout_s=0.3)
        assert sender.in_flight == 3
        identity, tid, _ = recv_until(sock, sender)
        sock.send_multipart([identity, ACK, tid, b"stored"])
        sender.send(small(3), timeout_s=5)          # one slot freed by the ack
        assert sender.in_flight == 3 and sender.counters["acked"] == 1


def test_unacknowledged_trajectories_are_resent(router):
    sock, address = router
    with TrajectorySender(address, max_in_flight=4, resend_after_s=0.2) as sender:
        sender.send(small(0))
        first = recv_until(sock, sender)
        again = recv_until(sock, sender)            # nobody acked: the sender sends it again
        assert again[1:] == first[1:] == [b"t0", encode(small(0))]
        sock.send_multipart([again[0], ACK, b"t0", b"stored"])
        assert sender.flush(5)
        assert sender.counters["resent"] >= 1 and list(sender.acked_ids) == ["t0"]
        assert sender.ack_latencies_s[0] >= 0.2


def test_rejections_are_counted_by_reason_and_not_resent(router):
    sock, address = router
    with TrajectorySender(address, resend_after_s=0.2) as sender:
        sender.send(small(0))
        identity, tid, _ = recv_until(sock, sender)
        sock.send_multipart([identity, REJECT, tid, b"bad_shape", b"images: no"])
        assert sender.flush(5)
        assert sender.rejected == {"bad_shape": 1} and sender.counters["acked"] == 0
        assert sender.rejections[0] == ("t0", "bad_shape", "images: no")


def test_too_large_is_refused_before_sending(router):
    _, address = router
    with TrajectorySender(address, max_message_bytes=1000) as sender:
        with pytest.raises(WireError) as err:
            sender.send(small(0))
        assert err.value.reason == "too_large" and sender.in_flight == 0


def test_ack_only_after_commit_and_a_failed_commit_acks_nothing(tmp_path):
    store = TrajectoryStore(str(tmp_path / "store"))
    calls = []

    def commit(items):   # the first commit fails as a full disk would
        calls.append([t.trajectory_id for t, _ in items])
        if len(calls) == 1:
            raise OSError("disk full")
        return store.commit(items)

    server = IngestServer("tcp://127.0.0.1:*", commit)
    with serving(server), TrajectorySender(server.address, resend_after_s=0.3) as sender:
        sender.send(small(0))
        assert sender.flush(10)
        assert sender.counters["resent"] >= 1 and list(sender.acked_ids) == ["t0"]
    assert calls[0] == ["t0"] and server.counters["commit_errors"] == 1
    assert "t0" in store and server.counters["stored"] == 1
    store.close()


def raw_dealer(address):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def ask(sock, frames, timeout_s=10.0):
    sock.send_multipart(frames)
    assert sock.poll(int(timeout_s * 1000), zmq.POLLIN), f"no reply to {frames[:1]}"
    return sock.recv_multipart()


def test_bad_messages_get_reasons_and_the_server_keeps_serving(tmp_path):
    store = TrajectoryStore(str(tmp_path / "store"))
    server = IngestServer("tcp://127.0.0.1:*", store.commit, max_message_bytes=100_000)
    good = encode(small(0))
    wrong_version = msgpack.unpackb(good)
    wrong_version["schema"] = 7
    cases = [
        ([b"only-one-frame"], b"only-one-frame", b"bad_frames"),
        ([b"t9", good, b"extra"], b"t9", b"bad_frames"),
        ([b"t9", b"\xc1garbage"], b"t9", b"not_msgpack"),
        ([b"t9", msgpack.packb(wrong_version)], b"t9", b"unknown_version"),
        ([b"t9", good], b"t9", b"id_mismatch"),
        ([b"big", b"\x00" * 100_001], b"big", b"too_large"),   # by its size, before unpacking
        ([b"", good], b"", b"bad_frames"),
        ([b"x" * 129, good], b"x" * 129, b"bad_frames"),      # no valid id is that long
        ([b"y" * 5000, good], b"y" * 200, b"bad_frames"),     # the reply echoes 200 bytes
    ]
    with serving(server):
        dealer = raw_dealer(server.address)
        for frames, tid, reason in cases:
            reply = ask(dealer, frames)
            assert reply[:3] == [REJECT, tid, reason], reply
        assert len(store) == 0
        assert ask(dealer, [b"t0", good]) == [ACK, b"t0", b"stored"]
        assert ask(dealer, [b"t0", good]) == [ACK, b"t0", b"duplicate"]
        dealer.close()
    assert len(store) == 1 and sum(server.rejected.values()) == len(cases)
    assert server.rejected["bad_frames"] == 5
    store.close()


def saw(monitor, event) -> bool:
    """Whether the next event of a socket monitor (within 0.1 s) is ``event``."""
    return bool(monitor.poll(100)) and recv_monitor_message(monitor)["event"] == event


def test_a_frame_past_the_socket_limit_cuts_its_peer_off_unread(tmp_path):
    """ZeroMQ's MAXMSGSIZE (twice the message limit and 1 MiB) holds per frame: the peer that
    sends more is disconnected before the frame is read, and nothing of it reaches decode."""
    store = TrajectoryStore(str(tmp_path / "store"))
    server = IngestServer("tcp://127.0.0.1:*", store.commit, max_message_bytes=100_000)
    with serving(server):
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        monitor = dealer.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        dealer.connect(server.address)
        wait_until(lambda: saw(monitor, zmq.EVENT_CONNECTED), 10, "the connection")
        dealer.send_multipart([b"t0", b"\x00" * (2 * 100_000 + (1 << 20) + 1)])
        wait_until(lambda: saw(monitor, zmq.EVENT_DISCONNECTED), 10,
                   "the server to cut the peer off")
        assert server.counters["received"] == 0 and server.counters["bytes"] == 0
        assert ask(dealer, [b"t0", encode(small(0))]) == [ACK, b"t0", b"stored"]  # reconnected
        dealer.disable_monitor()
        monitor.close()
        dealer.close()
    store.close()


def test_sender_reconnects_and_resends_across_a_store_restart(tmp_path):
    cfg = StoreConfig(path=str(tmp_path / "store"), ingest_address=free_tcp_address())
    service = StoreService(cfg).start()
    with TrajectorySender(cfg.ingest_address, max_in_flight=8, resend_after_s=0.3) as sender:
        for i in range(4):
            sender.send(small(i))
        assert sender.flush(10)
        service.stop()
        for i in range(4, 8):                   # the store is down: these wait
            sender.send(small(i))
        assert not sender.flush(0.3) and sender.in_flight == 4
        service = StoreService(cfg).start()
        assert sender.flush(20)
        assert sorted(sender.acked_ids) == sorted(f"t{i}" for i in range(8))
    final = service.stop()
    assert final["trajectories"] == 8


def test_curve_keys_admit_authorized_clients_only(tmp_path):
    server_pub, server_secret = generate_keypair(tmp_path / "server", "store")
    generate_keypair(tmp_path / "authorized", "actor")       # public key for the server
    (tmp_path / "actor").mkdir()
    for name in ("actor.key", "actor.key_secret"):
        (tmp_path / "actor" / name).write_bytes((tmp_path / "authorized" / name).read_bytes())
    (tmp_path / "authorized" / "actor.key_secret").unlink()
    _, stranger_secret = generate_keypair(tmp_path / "stranger", "stranger")
    store = TrajectoryStore(str(tmp_path / "store"))
    server = IngestServer("tcp://127.0.0.1:*", store.commit,
                          curve=CurveServerKeys(str(server_secret), str(tmp_path / "authorized")))
    with serving(server):
        actor = CurveClientKeys(str(tmp_path / "actor" / "actor.key_secret"), str(server_pub))
        with TrajectorySender(server.address, curve=actor) as sender:
            sender.send(small(0))
            assert sender.flush(10)
        stranger = CurveClientKeys(str(stranger_secret), str(server_pub))
        with TrajectorySender(server.address, curve=stranger, resend_after_s=0.2) as sender:
            sender.send(small(1))
            assert not sender.flush(1.0)
    assert "t0" in store and "t1" not in store
    store.close()
