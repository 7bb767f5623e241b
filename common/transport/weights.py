"""Actor side of the weight broadcast: :class:`WeightClient`.

The learner's :class:`common.transport.weight_publisher.WeightPublisher` announces and serves
each policy version in chunks; the messages are in :mod:`common.wire.weights`. The client
verifies each chunk against the manifest's digest (a corrupted chunk is re-requested, up to
``max_retries`` times) and the whole file against ``sha256`` before it hands the weights over.

The client fetches on a background thread, so the actor never waits for weights: ``poll()``
returns ``(policy_version, state_dict)`` once a newer version is complete, else ``None``.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

import torch
import zmq

from common.transport.curve import CurveClientKeys, apply_client_keys
from common.wire.weights import (
    ANNOUNCE_TOPIC, Manifest, WeightWireError, bytes_to_state_dict, pack, parse_manifest,
    unpack_map,
)

log = logging.getLogger(__name__)


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
