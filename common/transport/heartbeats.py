"""Actor heartbeats and the learner's view of actor health.

Actors PUSH a small msgpack heartbeat every ``actor.heartbeat_s`` to the learner's PULL
socket at ``learner.heartbeat_address``; the learner classifies each actor it has heard from:

- ``live``: a heartbeat within ``heartbeat_timeout_s`` and env steps progressing;
- ``stalled``: heartbeats arrive but its env step count has not moved for ``stall_s``
  (blocked on a slow store, a hung simulator);
- ``dead``: no heartbeat for ``heartbeat_timeout_s``.

A heartbeat is validated like every other message: a fixed set of typed fields, a size
limit; a bad one is counted and dropped. With CurveZMQ keys the PULL side accepts only the
listed client keys (see :mod:`common.transport.curve`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import msgpack
import zmq

from common.transport.curve import CurveClientKeys, CurveServerKeys, apply_client_keys, apply_server_keys

HEARTBEAT_VERSION = 1
MAX_HEARTBEAT_BYTES = 4096
_FIELDS = {"v": int, "actor_id": str, "policy_version": int, "env_steps": int,
           "episodes": int, "sent_at": float}


def encode_heartbeat(actor_id: str, policy_version: int, env_steps: int, episodes: int) -> bytes:
    return msgpack.packb({"v": HEARTBEAT_VERSION, "actor_id": actor_id,
                          "policy_version": int(policy_version), "env_steps": int(env_steps),
                          "episodes": int(episodes), "sent_at": time.time()})


def decode_heartbeat(raw: bytes) -> dict:
    """-> the heartbeat map; ValueError naming what is wrong."""
    if len(raw) > MAX_HEARTBEAT_BYTES:
        raise ValueError(f"heartbeat of {len(raw)} bytes > {MAX_HEARTBEAT_BYTES}")
    try:
        msg = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ValueError(f"heartbeat is not msgpack: {type(exc).__name__}") from None
    if not isinstance(msg, dict) or set(msg) != set(_FIELDS):
        raise ValueError(f"heartbeat fields {sorted(map(str, msg)) if isinstance(msg, dict) else msg!r}")
    for name, typ in _FIELDS.items():
        if not isinstance(msg[name], typ) or isinstance(msg[name], bool):
            raise ValueError(f"heartbeat field {name}: {type(msg[name]).__name__}")
    if msg["v"] != HEARTBEAT_VERSION or not 0 < len(msg["actor_id"]) <= 128:
        raise ValueError("heartbeat version or actor_id")
    return msg


class HeartbeatSender:
    """Actor side. ``beat()`` never blocks: heartbeats are dropped when the learner is away."""

    def __init__(self, address: str, curve: Optional[CurveClientKeys] = None,
                 context: Optional[zmq.Context] = None):
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, 4)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            apply_client_keys(self._sock, curve)
        self._sock.connect(address)

    def beat(self, actor_id: str, policy_version: int, env_steps: int, episodes: int) -> bool:
        try:
            self._sock.send(encode_heartbeat(actor_id, policy_version, env_steps, episodes),
                            zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def close(self) -> None:
        self._sock.close(0)


@dataclass
class ActorHealth:
    actor_id: str
    state: str               # live | stalled | dead
    policy_version: int
    env_steps: int
    episodes: int
    seen_ago_s: float


class HealthMonitor:
    """Learner side: drains heartbeats with :meth:`poll`, classifies with :meth:`report`."""

    def __init__(self, address: str, timeout_s: float = 10.0, stall_s: float = 30.0,
                 curve: Optional[CurveServerKeys] = None, context: Optional[zmq.Context] = None):
        self.timeout_s, self.stall_s = timeout_s, stall_s
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_HEARTBEAT_BYTES)
        self._auth = apply_server_keys(self._sock, curve) if curve is not None else None
        self._sock.bind(address)   # "tcp://host:*" picks a free port: see .address
        self.address = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.rejected = 0
        # actor_id -> (last heartbeat, monotonic time seen, monotonic time env_steps last moved)
        self._last: dict[str, tuple[dict, float, float]] = {}

    def poll(self, timeout_s: float = 0.0) -> int:
        """Drain pending heartbeats (waiting up to ``timeout_s`` for the first). -> count."""
        n = 0
        if not self._sock.poll(int(timeout_s * 1000)):
            return 0
        while True:
            try:
                raw = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return n
            try:
                hb = decode_heartbeat(raw)
            except ValueError:
                self.rejected += 1
                continue
            now = time.monotonic()
            prev = self._last.get(hb["actor_id"])
            moved = now if prev is None or hb["env_steps"] != prev[0]["env_steps"] else prev[2]
            self._last[hb["actor_id"]] = (hb, now, moved)
            n += 1

    def report(self) -> list[ActorHealth]:
        now = time.monotonic()
        out = []
        for actor_id, (hb, seen, moved) in sorted(self._last.items()):
            state = ("dead" if now - seen > self.timeout_s
                     else "stalled" if now - moved > self.stall_s else "live")
            out.append(ActorHealth(actor_id, state, hb["policy_version"], hb["env_steps"],
                                   hb["episodes"], now - seen))
        return out

    def counts(self) -> dict[str, int]:
        c = {"live": 0, "stalled": 0, "dead": 0}
        for h in self.report():
            c[h.state] += 1
        return c

    def close(self) -> None:
        self._sock.close(0)
        if self._auth is not None:
            self._auth.stop()
