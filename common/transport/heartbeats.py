"""Actor heartbeats on the wire, and the receivers' view of actor health.

Actors PUSH a heartbeat (:mod:`common.wire.heartbeat`) every ``actor.heartbeat_s`` to each
address in ``actor.heartbeat_address`` (one address, or several separated by commas: the
learner's PULL socket at ``learner.heartbeat_address`` and, under ``pushcut run``, the
launcher's status). A :class:`HealthMonitor` classifies each actor it has heard from:

- ``live``: a heartbeat within ``heartbeat_timeout_s`` and env steps progressing;
- ``stalled``: heartbeats arrive but its env step count has not moved for ``stall_s``
  (blocked on a slow store, a hung simulator);
- ``dead``: no heartbeat for ``heartbeat_timeout_s``;

and its env steps/s over the last ``rate_window_s`` of its heartbeats (by their ``sent_at``).
A heartbeat is validated like every other message (fixed typed fields, a size limit); a bad
one is counted and dropped. With CurveZMQ keys the PULL side accepts only the listed client
keys (see :mod:`common.transport.curve`).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import zmq

from common.transport.curve import (
    CurveClientKeys, CurveServerKeys, apply_client_keys, apply_server_keys,
)
from common.wire.heartbeat import MAX_HEARTBEAT_BYTES, decode_heartbeat, encode_heartbeat


def heartbeat_addresses(address: str) -> list[str]:
    """``"tcp://a:1,tcp://b:2"`` -> the addresses a sender pushes every heartbeat to."""
    found = [a.strip() for a in address.split(",") if a.strip()]
    if not found:
        raise ValueError(f"no heartbeat address in {address!r}")
    return found


class HeartbeatSender:
    """Actor side: every heartbeat to every address (one PUSH socket each). ``beat()`` never
    blocks: a heartbeat is dropped for a receiver that is away."""

    def __init__(self, address: str, curve: Optional[CurveClientKeys] = None,
                 context: Optional[zmq.Context] = None):
        self._ctx = context or zmq.Context.instance()
        self._socks = []
        for addr in heartbeat_addresses(address):
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 4)
            sock.setsockopt(zmq.LINGER, 0)
            if curve is not None:
                apply_client_keys(sock, curve)
            sock.connect(addr)
            self._socks.append(sock)

    def beat(self, actor_id: str, policy_version: int, env_steps: int, episodes: int) -> bool:
        """-> whether every receiver's queue took it."""
        raw = encode_heartbeat(actor_id, policy_version, env_steps, episodes)
        sent = 0
        for sock in self._socks:
            try:
                sock.send(raw, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
        return sent == len(self._socks)

    def close(self) -> None:
        for sock in self._socks:
            sock.close(0)


@dataclass
class ActorHealth:
    actor_id: str
    state: str               # live | stalled | dead
    policy_version: int
    env_steps: int
    episodes: int
    seen_ago_s: float
    env_steps_per_s: Optional[float] = None   # None until two heartbeats were heard


class HealthMonitor:
    """Drains heartbeats with :meth:`poll`, classifies with :meth:`report`."""

    def __init__(self, address: str, timeout_s: float = 10.0, stall_s: float = 30.0,
                 curve: Optional[CurveServerKeys] = None, context: Optional[zmq.Context] = None,
                 rate_window_s: float = 10.0):
        self.timeout_s, self.stall_s, self.rate_window_s = timeout_s, stall_s, rate_window_s
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
        # actor_id -> (sent_at, env_steps) of its heartbeats over the rate window
        self._history: dict[str, deque[tuple[float, int]]] = {}

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
            self._record(hb)
            n += 1

    def _record(self, hb: dict) -> None:
        now = time.monotonic()
        prev = self._last.get(hb["actor_id"])
        moved = now if prev is None or hb["env_steps"] != prev[0]["env_steps"] else prev[2]
        self._last[hb["actor_id"]] = (hb, now, moved)
        history = self._history.setdefault(hb["actor_id"], deque())
        if history and (hb["env_steps"] < history[-1][1] or hb["sent_at"] <= history[-1][0]):
            history.clear()   # a restarted actor of the same id counts from 0 again
        history.append((hb["sent_at"], hb["env_steps"]))
        # keep the newest heartbeat at least rate_window_s older than this one, none before
        while len(history) > 2 and history[1][0] <= hb["sent_at"] - self.rate_window_s:
            history.popleft()

    def _rate(self, actor_id: str) -> Optional[float]:
        history = self._history.get(actor_id)
        if not history or len(history) < 2:
            return None
        (t0, steps0), (t1, steps1) = history[0], history[-1]
        return (steps1 - steps0) / (t1 - t0)

    def report(self) -> list[ActorHealth]:
        now = time.monotonic()
        out = []
        for actor_id, (hb, seen, moved) in sorted(self._last.items()):
            state = ("dead" if now - seen > self.timeout_s
                     else "stalled" if now - moved > self.stall_s else "live")
            out.append(ActorHealth(actor_id, state, hb["policy_version"], hb["env_steps"],
                                   hb["episodes"], now - seen, self._rate(actor_id)))
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
