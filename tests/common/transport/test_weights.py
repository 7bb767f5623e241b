"""Weight broadcast over real ZeroMQ sockets: WeightPublisher (learner) -> WeightClient (actor)."""
from __future__ import annotations

import threading

import pytest
import torch
import zmq

from common.transport.weight_publisher import WeightPublisher
from common.transport.weights import WeightClient
from common.wire.weights import bytes_to_state_dict, state_dict_to_bytes
from tests.waiting import wait_until as wait_for

ADDR = "tcp://127.0.0.1:*"


def make_state_dict(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(300, 64, generator=g)
    return {
        "emb.weight": emb,
        "head.weight": emb,                      # tied, as in many language models
        "block.0.w": torch.randn(64, 128, generator=g).to(torch.bfloat16),
        "block.0.b": torch.randn(128, generator=g, dtype=torch.float64),
        "steps": torch.tensor([seed], dtype=torch.int64),
        "view": torch.randn(16, 16, generator=g).t(),   # non-contiguous
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def publisher():
    pub = WeightPublisher(ADDR, ADDR, chunk_mb=0.004, announce_every_s=0.2)  # ~4 KB chunks
    yield pub
    pub.close()


def test_serialisation_roundtrip_is_exact():
    sd = make_state_dict(0)
    assert_same(bytes_to_state_dict(state_dict_to_bytes(sd)),
                {k: v.contiguous() for k, v in sd.items()})


def test_chunked_fetch_reproduces_state_dict(publisher):
    sd = make_state_dict(1)
    manifest = publisher.publish(1, sd)
    assert manifest.num_chunks > 10
    with WeightClient(publisher.weights_address, publisher.announce_address) as client:
        got = client.wait(timeout_s=20)
        assert got is not None, "no weights fetched"
        version, fetched = got
        assert version == 1
        assert_same(fetched, {k: v.contiguous() for k, v in sd.items()})
        assert client.stats["checksum_failures"] == 0
        assert client.poll() is None   # nothing newer
    assert publisher.stats["chunks_served"] >= manifest.num_chunks


def test_newer_versions_are_announced_and_fetched(publisher):
    publisher.publish(1, make_state_dict(1))
    with WeightClient(publisher.weights_address, publisher.announce_address) as client:
        assert client.wait(timeout_s=20)[0] == 1
        publisher.publish(2, make_state_dict(2))
        version, fetched = client.wait(timeout_s=20)
        assert version == 2
        assert torch.equal(fetched["steps"], torch.tensor([2]))
    with pytest.raises(ValueError, match="not newer"):
        publisher.publish(2, make_state_dict(3))


def test_late_joiner_gets_current_version(publisher):
    for v in (1, 2, 3):
        publisher.publish(v, make_state_dict(v))
    with WeightClient(publisher.weights_address, publisher.announce_address) as client:
        version, fetched = client.wait(timeout_s=20)
        assert version == 3
        assert_same(fetched, {k: v.contiguous() for k, v in make_state_dict(3).items()})


def test_client_keeps_waiting_while_learner_is_away():
    # Reserve two free ports, then let the publisher bind them later.
    ctx = zmq.Context.instance()
    probes = [ctx.socket(zmq.PAIR) for _ in range(2)]
    ports = [s.bind_to_random_port("tcp://127.0.0.1") for s in probes]
    for s in probes:
        s.close(0)
    weights, announce = (f"tcp://127.0.0.1:{p}" for p in ports)
    with WeightClient(weights, announce, request_timeout_s=0.5, latest_every_s=0.2) as client:
        wait_for(lambda: client.stats["timeouts"] + client.stats["unreachable"] >= 1,
                 what="a failed request")
        assert client.poll() is None
        with WeightPublisher(weights, announce, chunk_mb=0.004, announce_every_s=0.2) as pub:
            pub.publish(7, make_state_dict(7))
            got = client.wait(timeout_s=20)
            assert got is not None and got[0] == 7


class CorruptingProxy:
    """A hostile hop between client and publisher: flips one byte in the first
    ``corrupt`` chunk replies it forwards (real sockets, nothing mocked)."""

    def __init__(self, backend: str, corrupt: int):
        ctx = zmq.Context.instance()
        self.front = ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.back = ctx.socket(zmq.DEALER)
        self.back.setsockopt(zmq.LINGER, 0)
        self.back.connect(backend)
        self.left = corrupt
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.front.poll(20):
                continue
            ident, empty, body = self.front.recv_multipart()
            self.back.send_multipart([empty, body])
            reply = self.back.recv_multipart()
            if len(reply) == 3 and self.left > 0:   # [b"", header, data]: a chunk
                self.left -= 1
                data = bytearray(reply[2])
                data[len(data) // 2] ^= 0xFF
                reply[2] = bytes(data)
            self.front.send_multipart([ident, *reply])
        self.front.close(0)
        self.back.close(0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_corrupted_chunk_is_detected_and_refetched(publisher):
    sd = make_state_dict(4)
    publisher.publish(1, sd)
    proxy = CorruptingProxy(publisher.weights_address, corrupt=1)
    try:
        with WeightClient(proxy.address, publisher.announce_address) as client:
            version, fetched = client.wait(timeout_s=20)
            assert version == 1
            assert_same(fetched, {k: v.contiguous() for k, v in sd.items()})
            assert client.stats["checksum_failures"] == 1
    finally:
        proxy.close()


def test_persistently_corrupted_version_is_never_handed_over(publisher):
    publisher.publish(1, make_state_dict(5))
    proxy = CorruptingProxy(publisher.weights_address, corrupt=10**9)
    try:
        with WeightClient(proxy.address, publisher.announce_address, max_retries=2) as client:
            wait_for(lambda: client.stats["aborted"] >= 1, what="an abandoned fetch")
            assert client.poll() is None
            assert client.stats["checksum_failures"] >= 3
    finally:
        proxy.close()


def test_curve_keys_admit_known_actors_only(tmp_path):
    from common.transport.curve import CurveClientKeys, CurveServerKeys, generate_keypair
    server_pub, server_sec = generate_keypair(tmp_path, "learner")
    _, actor_sec = generate_keypair(tmp_path / "authorized", "actor")
    _, stranger_sec = generate_keypair(tmp_path / "elsewhere", "stranger")
    sd = make_state_dict(6)
    with WeightPublisher(ADDR, ADDR, chunk_mb=0.004, announce_every_s=0.2,
                         curve=CurveServerKeys(str(server_sec), str(tmp_path / "authorized"))
                         ) as pub:
        pub.publish(1, sd)
        with WeightClient(pub.weights_address, pub.announce_address,
                          curve=CurveClientKeys(str(actor_sec), str(server_pub))) as client:
            version, fetched = client.wait(timeout_s=20)
            assert version == 1
            assert_same(fetched, {k: v.contiguous() for k, v in sd.items()})
        with WeightClient(pub.weights_address, pub.announce_address, request_timeout_s=0.5,
                          latest_every_s=0.2,
                          curve=CurveClientKeys(str(stranger_sec), str(server_pub))) as client:
            wait_for(lambda: client.stats["timeouts"] + client.stats["unreachable"] >= 2,
                     what="two refused requests of the stranger")
            assert client.poll() is None and client.stats["announcements"] == 0
