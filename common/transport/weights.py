"""Weight broadcast: the wire messages, and the actor-side :class:`WeightClient`.

The learner's :class:`common.transport.weight_publisher.WeightPublisher` serves each policy version as the
bytes of a safetensors file (``state_dict_to_bytes``), cut into fixed-size chunks:

- announcements, ZeroMQ PUB -> SUB, one frame ``ANNOUNCE_TOPIC + msgpack`` with
  ``{policy_version, total_bytes, chunk_bytes, num_chunks, sha256, paused}``, sent on every
  new version and again every ``announce_every_s`` so that a subscriber that joins late hears
  it (``paused``: mode=sync, the learner is updating and actors hold their next round);
- fetches, DEALER/REQ -> ROUTER, envelope ``[b"", msgpack request]``:
  ``{"op": "latest"}`` or ``{"op": "manifest", "policy_version": v}`` -> ``[b"", manifest]``
  where the manifest adds ``chunk_sha256`` (one hex digest per chunk);
  ``{"op": "chunk", "policy_version": v, "index": i}`` -> ``[b"", header, data]``;
  a failure is ``[b"", {"ok": False, "error": reason, "detail": text}]`` with reason one of
  ``no_version`` (nothing published yet), ``unknown_version`` (superseded), ``bad_request``.

Every message is msgpack or raw bytes, never pickle. The client verifies each chunk against
the manifest's digest (a corrupted chunk is re-requested, up to ``max_retries`` times) and the
whole file against ``sha256`` before it hands the weights over.

The client fetches on a background thread, so the actor never waits for weights: ``poll()``
returns ``(policy_version, state_dict)`` once a newer version is complete, else ``None``.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import torch
import zmq
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from common.transport.curve import CurveClientKeys, apply_client_keys

log = logging.getLogger(__name__)

ANNOUNCE_TOPIC = b"pushcut.weights.v1 "
MAX_HEADER_BYTES = 16 << 20


class WeightWireError(ValueError):
    """A weight message that does not satisfy the protocol; ``reason`` names the rule."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Manifest:
    """What a client needs to fetch and verify one policy version."""
    policy_version: int
    total_bytes: int
    chunk_bytes: int
    num_chunks: int
    sha256: str
    chunk_sha256: list[str] = field(default_factory=list)

    def announcement(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "chunk_sha256"}


_MANIFEST_TYPES = {"policy_version": int, "total_bytes": int, "chunk_bytes": int,
                   "num_chunks": int, "sha256": str}


def state_dict_to_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """A state dict -> safetensors bytes (CPU, contiguous; tied tensors stored once each
    under every name, since safetensors refuses shared storage)."""
    seen: set[int] = set()
    flat = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        flat[name] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return st_save(flat)


def bytes_to_state_dict(raw: bytes) -> dict[str, torch.Tensor]:
    return st_load(bytes(raw))


def make_manifest(policy_version: int, blob: bytes, chunk_bytes: int) -> Manifest:
    """Digests of ``blob`` as a whole and of each ``chunk_bytes`` slice."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    view = memoryview(blob)
    digests = [hashlib.sha256(view[i:i + chunk_bytes]).hexdigest()
               for i in range(0, len(blob), chunk_bytes)]
    return Manifest(policy_version, len(blob), chunk_bytes, len(digests),
                    hashlib.sha256(view).hexdigest(), digests)


def pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_map(raw: bytes) -> dict[str, Any]:
    """msgpack bytes -> a map, or WeightWireError."""
    if len(raw) > MAX_HEADER_BYTES:
        raise WeightWireError("too_large", f"{len(raw)} bytes")
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise WeightWireError("not_msgpack", f"{type(exc).__name__}: {exc}"[:200]) from None
    if not isinstance(obj, dict):
        raise WeightWireError("not_a_map", type(obj).__name__)
    return obj


def parse_manifest(obj: dict[str, Any], with_chunks: bool) -> Manifest:
    """Validate an announcement (``with_chunks=False``) or a manifest."""
    for key, typ in _MANIFEST_TYPES.items():
        if not isinstance(obj.get(key), typ) or isinstance(obj.get(key), bool):
            raise WeightWireError("wrong_type", f"{key}: {obj.get(key)!r}")
    m = Manifest(**{k: obj[k] for k in _MANIFEST_TYPES})
    if m.chunk_bytes < 1 or m.num_chunks != -(-m.total_bytes // m.chunk_bytes):
        raise WeightWireError("bad_value", f"{m.num_chunks} chunks of {m.chunk_bytes} bytes "
                                           f"for {m.total_bytes} bytes")
    if with_chunks:
        digests = obj.get("chunk_sha256")
        if not isinstance(digests, list) or len(digests) != m.num_chunks or not all(
                isinstance(d, str) for d in digests):
            raise WeightWireError("wrong_type", "chunk_sha256: expected one digest per chunk")
        m.chunk_sha256 = digests
    return m


class FetchError(RuntimeError):
    """A fetch that could not complete (timeout, superseded version, repeated corruption)."""


class WeightClient:
    """Actor side of the broadcast: hears announcements, fetches newer versions in chunks on a
    background thread, verifies them, and hands them over through :meth:`poll`."""

    def __init__(self, weights_address: str, announce_address: str, *,
                 request_timeout_s: float = 5.0, window: int = 4, max_retries: int = 3,
                 latest_every_s: float = 2.0, min_version: int = -1,
                 curve: CurveClientKeys | None = None, context: zmq.Context | None = None):
        self.weights_address = weights_address
        self.announce_address = announce_address
        self.request_timeout_s = request_timeout_s
        self.window = max(1, window)
        self.max_retries = max_retries
        self.latest_every_s = latest_every_s
        self.curve = curve
        self.stats = {"announcements": 0, "fetched": 0, "checksum_failures": 0,
                      "timeouts": 0, "unreachable": 0, "aborted": 0, "bad_messages": 0}
        self._ctx = context or zmq.Context.instance()
        self._cond = threading.Condition()
        self._ready: tuple[int, dict[str, torch.Tensor]] | None = None
        self._have = min_version          # newest version fetched (or given at start)
        self.announced_version = -1       # newest version heard of
        self.paused = False               # the learner's latest word (mode=sync)
        self._delivered = min_version     # newest version handed out by poll()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-client", daemon=True)
        self._thread.start()

    # -- caller side ----------------------------------------------------------------------
    def poll(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """Non-blocking: the newest fully fetched version newer than the last one returned."""
        with self._cond:
            ready, self._ready = self._ready, None
        if ready is None or ready[0] <= self._delivered:
            return None
        self._delivered = ready[0]
        return ready

    def wait(self, timeout_s: float, min_version: int | None = None
             ) -> tuple[int, dict[str, torch.Tensor]] | None:
        """Block until a version > ``min_version`` (default: the last returned) is fetched,
        or ``timeout_s`` passes (-> None)."""
        floor = self._delivered if min_version is None else min_version
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._ready is None or self._ready[0] <= floor:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return None
                self._cond.wait(min(left, 0.2))
        return self.poll()

    @property
    def latest_fetched(self) -> int:
        return self._have

    def wait_update(self, timeout_s: float) -> None:
        """Block until an announcement or a finished fetch, at most ``timeout_s``."""
        with self._cond:
            self._cond.wait(timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> "WeightClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- background thread ----------------------------------------------------------------
    def _socket(self, kind: int, address: str) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, ANNOUNCE_TOPIC)
        if self.curve is not None:
            apply_client_keys(sock, self.curve)
        sock.connect(address)
        return sock

    def _dealer(self) -> zmq.Socket:
        return self._socket(zmq.DEALER, self.weights_address)

    def _run(self) -> None:
        sub = self._socket(zmq.SUB, self.announce_address)
        self._sock = self._dealer()
        last_latest = -float("inf")
        try:
            while not self._stop.is_set():
                target = self._next_announced(sub, timeout_ms=100)
                if target is None and time.monotonic() - last_latest >= self.latest_every_s:
                    # A late joiner asks instead of waiting for the next periodic announcement.
                    last_latest = time.monotonic()
                    latest = self._ask_latest()
                    if latest is not None:
                        self.announced_version = max(self.announced_version,
                                                     latest.policy_version)
                    if latest is not None and latest.policy_version > self._have:
                        self._fetch_and_store(latest.policy_version, latest)
                        continue
                if target is not None and target > self._have:
                    self._fetch_and_store(target)
        finally:
            sub.close(0)
            self._sock.close(0)

    def _next_announced(self, sub: zmq.Socket, timeout_ms: int) -> int | None:
        """Drain announcements; the newest announced version, if any."""
        newest = None
        if not sub.poll(timeout_ms):
            return None
        while True:
            try:
                raw = sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return newest
            try:
                msg = unpack_map(raw[len(ANNOUNCE_TOPIC):])
                ann = parse_manifest(msg, with_chunks=False)
            except WeightWireError as exc:
                self.stats["bad_messages"] += 1
                log.warning("ignoring bad weight announcement: %s", exc)
                continue
            self.stats["announcements"] += 1
            newest = max(newest if newest is not None else -1, ann.policy_version)
            with self._cond:
                self.announced_version = max(self.announced_version, ann.policy_version)
                self.paused = bool(msg.get("paused", False))
                self._cond.notify_all()

    def _ask_latest(self) -> Manifest | None:
        try:
            return self._request({"op": "latest"})
        except FetchError:
            return None

    def _fetch_and_store(self, version: int, manifest: Manifest | None = None) -> None:
        try:
            if manifest is None:
                manifest = self._request({"op": "manifest", "policy_version": version})
            if manifest is None:
                return
            blob = self._fetch_chunks(manifest)
            state_dict = bytes_to_state_dict(blob)
        except FetchError as exc:
            self.stats["aborted"] += 1
            log.info("weight fetch of version %d abandoned: %s", version, exc)
            return
        self.stats["fetched"] += 1
        with self._cond:
            self._have = manifest.policy_version
            self._ready = (manifest.policy_version, state_dict)
            self._cond.notify_all()

    def _send(self, req: dict[str, Any]) -> None:
        try:   # never block: a DEALER with no live peer would hold the thread forever
            self._sock.send_multipart([b"", pack(req)], zmq.NOBLOCK)
        except zmq.Again:
            self.stats["unreachable"] += 1
            self._reset_socket()
            raise FetchError(f"weight server {self.weights_address} not reachable") from None

    def _reset_socket(self) -> None:
        self._sock.close(0)
        self._sock = self._dealer()

    def _recv(self) -> list[bytes]:
        """One reply, or FetchError after ``request_timeout_s`` (the socket is replaced, so
        late replies to abandoned requests never confuse the next fetch)."""
        deadline = time.monotonic() + self.request_timeout_s
        while not self._sock.poll(100):
            if self._stop.is_set() or time.monotonic() > deadline:
                self.stats["timeouts"] += int(not self._stop.is_set())
                self._reset_socket()
                raise FetchError("no reply from the weight server "
                                 f"{self.weights_address} within {self.request_timeout_s}s")
        frames = self._sock.recv_multipart()
        if len(frames) < 2 or frames[0] != b"":
            raise FetchError(f"malformed reply with {len(frames)} frames")
        return frames[1:]

    def _request(self, req: dict[str, Any]) -> Manifest | None:
        """latest/manifest request -> Manifest, None when the server has no such version."""
        self._send(req)
        frames = self._recv()
        try:
            reply = unpack_map(frames[0])
            if not reply.get("ok"):
                if reply.get("error") in ("no_version", "unknown_version"):
                    return None
                raise FetchError(f"server refused {req['op']}: {reply.get('error')}: "
                                 f"{reply.get('detail')}")
            return parse_manifest(reply, with_chunks=True)
        except WeightWireError as exc:
            self.stats["bad_messages"] += 1
            raise FetchError(f"bad {req['op']} reply: {exc}") from None

    def _fetch_chunks(self, m: Manifest) -> bytes:
        """All chunks of ``m``, ``window`` requests in flight, each verified on arrival."""
        chunks: list[bytes | None] = [None] * m.num_chunks
        retries = [0] * m.num_chunks
        todo = list(range(m.num_chunks - 1, -1, -1))   # popped from the end: 0, 1, ...
        in_flight = 0
        while todo or in_flight:
            while todo and in_flight < self.window:
                index = todo.pop()
                self._send({"op": "chunk", "policy_version": m.policy_version, "index": index})
                in_flight += 1
            frames = self._recv()
            in_flight -= 1
            index, data = self._check_chunk(m, frames)
            if hashlib.sha256(data).hexdigest() == m.chunk_sha256[index]:
                chunks[index] = data
                continue
            self.stats["checksum_failures"] += 1
            retries[index] += 1
            if retries[index] > self.max_retries:
                raise FetchError(f"chunk {index} of version {m.policy_version} failed its "
                                 f"checksum {retries[index]} times")
            log.warning("chunk %d of version %d failed its checksum; fetching it again",
                        index, m.policy_version)
            todo.append(index)
        blob = b"".join(chunks)  # type: ignore[arg-type]
        if len(blob) != m.total_bytes or hashlib.sha256(blob).hexdigest() != m.sha256:
            self.stats["checksum_failures"] += 1
            raise FetchError(f"version {m.policy_version}: whole-file checksum mismatch")
        return blob

    def _check_chunk(self, m: Manifest, frames: list[bytes]) -> tuple[int, bytes]:
        try:
            header = unpack_map(frames[0])
        except WeightWireError as exc:
            raise FetchError(f"bad chunk header: {exc}") from None
        if not header.get("ok"):
            raise FetchError(f"chunk refused: {header.get('error')}: {header.get('detail')}")
        index = header.get("index")
        if (header.get("policy_version") != m.policy_version or not isinstance(index, int)
                or not 0 <= index < m.num_chunks or len(frames) != 2):
            raise FetchError(f"chunk reply does not match version {m.policy_version}: "
                             f"{ {k: v for k, v in header.items() if k != 'data'} }")
        return index, frames[1]
