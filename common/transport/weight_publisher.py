"""Learner side of the weight broadcast: :class:`WeightPublisher`.

In: ``publish(policy_version, state_dict)`` from the learner after each optimiser step.
Out: a ZeroMQ PUB announcement of the version on ``announce_address`` (at once, and again every
``announce_every_s`` for subscribers that join late) and a ROUTER on ``weights_address`` that
serves the version's safetensors bytes in ``chunk_mb`` chunks with sha256 digests. The wire
messages are in :mod:`common.wire.weights`, the client in :mod:`common.transport.weights`;
the learner process (``pushcut learner``) owns one publisher.

Both sockets live on one background thread, so ``publish`` only serialises and hashes; the
newest ``keep_versions`` versions stay servable, so an actor half-way through a fetch finishes
it even if the learner publishes again meanwhile.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import torch
import zmq
import zmq.auth

from common.transport.curve import CurveServerKeys, apply_server_keys
from common.wire.weights import (
    ANNOUNCE_TOPIC, Manifest, WeightWireError, make_manifest, pack, state_dict_to_bytes,
    unpack_map,
)

log = logging.getLogger(__name__)


class WeightPublisher:
    """Announce and serve versioned weights. Addresses may end in ``:*`` (a free port); the
    bound addresses are then in ``.weights_address`` and ``.announce_address``."""

    def __init__(self, weights_address: str, announce_address: str, chunk_mb: float = 4, *,
                 announce_every_s: float = 1.0, keep_versions: int = 2,
                 curve: CurveServerKeys | None = None):
        self.chunk_bytes = max(1, int(chunk_mb * (1 << 20)))
        self.announce_every_s = announce_every_s
        self.keep_versions = max(1, keep_versions)
        self.stats = {"requests": 0, "chunks_served": 0, "bytes_served": 0, "bad_requests": 0,
                      "announcements": 0}
        # Own context: a CURVE authenticator is one per context.
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._pub = self._ctx.socket(zmq.PUB)
        for sock in (self._router, self._pub):
            sock.setsockopt(zmq.LINGER, 0)
        self._auth = None
        if curve is not None:
            self._auth = apply_server_keys(self._router, curve)
            # the same key pair on the PUB; the one authenticator serves the whole context
            public, secret = zmq.auth.load_certificate(curve.secret_key_file)
            self._pub.curve_secretkey, self._pub.curve_publickey = secret, public
            self._pub.curve_server = True
        try:
            self._router.bind(weights_address)
            self._pub.bind(announce_address)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise OSError(f"cannot bind the weight sockets {weights_address} / "
                          f"{announce_address}: {exc}") from None
        self.weights_address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.announce_address = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self._versions: OrderedDict[int, tuple[Manifest, bytes]] = OrderedDict()
        self._paused = False
        self._announce_now = threading.Event()
        self._stop = threading.Event()
        # The sockets move to the thread here; thread start is the memory barrier zmq asks for.
        self._thread = threading.Thread(target=self._serve, name="weight-publisher", daemon=True)
        self._thread.start()

    @property
    def policy_version(self) -> int | None:
        with self._lock:
            return next(reversed(self._versions)) if self._versions else None

    def publish(self, policy_version: int, state_dict: dict[str, torch.Tensor]) -> Manifest:
        """Make ``policy_version`` the current one; versions must increase."""
        current = self.policy_version
        if current is not None and policy_version <= current:
            raise ValueError(f"policy_version {policy_version} is not newer than the published "
                             f"{current}")
        blob = state_dict_to_bytes(state_dict)
        manifest = make_manifest(policy_version, blob, self.chunk_bytes)
        with self._lock:
            self._versions[policy_version] = (manifest, blob)
            while len(self._versions) > self.keep_versions:
                self._versions.popitem(last=False)
        self._announce_now.set()
        # the digest names the weights: one version, one digest, across learner restarts
        log.info("published policy_version %d (%.1f MB, %d chunks, sha256 %s)", policy_version,
                 len(blob) / 1e6, manifest.num_chunks, manifest.sha256)
        return manifest

    def pause(self) -> None:
        """mode=sync: tell actors to hold their next round (the learner is updating)."""
        self._paused = True
        self._announce_now.set()

    def resume(self) -> None:
        self._paused = False
        self._announce_now.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> "WeightPublisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- background thread ----------------------------------------------------------------
    def _serve(self) -> None:
        next_announce = time.monotonic()
        try:
            while not self._stop.is_set():
                if self._announce_now.is_set() or time.monotonic() >= next_announce:
                    self._announce_now.clear()
                    self._announce()
                    next_announce = time.monotonic() + self.announce_every_s
                # short poll so that a publish() is announced within ~20 ms
                if self._router.poll(20):
                    self._handle(self._router.recv_multipart())
        finally:
            self._close_sockets()

    def _close_sockets(self) -> None:
        self._router.close(0)
        self._pub.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def _announce(self) -> None:
        with self._lock:
            if not self._versions:
                return
            manifest = next(reversed(self._versions.values()))[0]
        self._pub.send(ANNOUNCE_TOPIC + pack({**manifest.announcement(), "paused": self._paused}))
        self.stats["announcements"] += 1

    def _handle(self, frames: list[bytes]) -> None:
        """One request; REQ and DEALER peers both send ``[identity, b"", body]``."""
        self.stats["requests"] += 1
        if len(frames) != 3 or frames[1] != b"":
            self.stats["bad_requests"] += 1
            log.warning("dropping a weight request with %d frames", len(frames))
            return
        identity, body = frames[0], frames[2]
        try:
            reply = self._reply(unpack_map(body))
        except WeightWireError as exc:
            self.stats["bad_requests"] += 1
            reply = [pack({"ok": False, "error": "bad_request", "detail": str(exc)})]
        self._router.send_multipart([identity, b"", *reply])

    def _reply(self, req: dict[str, Any]) -> list[bytes]:
        op, version = req.get("op"), req.get("policy_version")
        with self._lock:
            if op == "latest":
                if not self._versions:
                    return [pack({"ok": False, "error": "no_version", "detail": "none yet"})]
                version = next(reversed(self._versions))
            held = self._versions.get(version) if isinstance(version, int) else None
        if op not in ("latest", "manifest", "chunk"):
            raise WeightWireError("bad_request", f"unknown op {op!r}")
        if held is None:
            return [pack({"ok": False, "error": "unknown_version",
                          "detail": f"policy_version {version!r} is not held "
                                    f"(current: {self.policy_version})"})]
        manifest, blob = held
        if op != "chunk":
            return [pack({"ok": True, **manifest.announcement(),
                          "chunk_sha256": manifest.chunk_sha256})]
        index = req.get("index")
        if not isinstance(index, int) or not 0 <= index < manifest.num_chunks:
            raise WeightWireError("bad_request", f"chunk index {index!r} not in "
                                                 f"[0, {manifest.num_chunks})")
        start = index * self.chunk_bytes
        data = blob[start:start + self.chunk_bytes]
        self.stats["chunks_served"] += 1
        self.stats["bytes_served"] += len(data)
        return [pack({"ok": True, "policy_version": version, "index": index}), data]
