"""The actor heartbeat: a small msgpack map an actor PUSHes every ``actor.heartbeat_s``
(sent by :class:`common.transport.heartbeats.HeartbeatSender`, read by its
:class:`~common.transport.heartbeats.HealthMonitor`: the learner's, and ``pushcut run``'s
status).

==================  =======  ===============================================
field               type     meaning
==================  =======  ===============================================
``v``               int      :data:`HEARTBEAT_VERSION`
``actor_id``        str      1 to 128 characters
``policy_version``  int      the version the actor generates with
``env_steps``       int      env steps since the actor process started
``episodes``        int      episodes finished since the actor process started
``sent_at``         float    the sender's ``time.time()``
==================  =======  ===============================================

:func:`decode_heartbeat` checks exactly these fields and types and a size limit
(:data:`MAX_HEARTBEAT_BYTES`), and raises :class:`~common.wire.errors.WireError` (a
ValueError) naming what is wrong; never pickle.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import msgpack

from common.wire.errors import WireError

HEARTBEAT_VERSION = 1
MAX_HEARTBEAT_BYTES = 4096
FIELDS: dict[str, type] = {"v": int, "actor_id": str, "policy_version": int, "env_steps": int,
                           "episodes": int, "sent_at": float}


def encode_heartbeat(actor_id: str, policy_version: int, env_steps: int, episodes: int,
                     sent_at: Optional[float] = None) -> bytes:
    """One heartbeat; ``sent_at`` defaults to now."""
    return msgpack.packb({"v": HEARTBEAT_VERSION, "actor_id": actor_id,
                          "policy_version": int(policy_version), "env_steps": int(env_steps),
                          "episodes": int(episodes),
                          "sent_at": float(time.time() if sent_at is None else sent_at)})


def decode_heartbeat(raw: bytes) -> dict[str, Any]:
    """-> the heartbeat map; WireError (a ValueError) naming what is wrong."""
    if len(raw) > MAX_HEARTBEAT_BYTES:
        raise WireError("too_large", f"heartbeat of {len(raw)} bytes > {MAX_HEARTBEAT_BYTES}")
    try:
        msg = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:
        raise WireError("not_msgpack", f"heartbeat: {type(exc).__name__}") from None
    if not isinstance(msg, dict):
        raise WireError("not_a_map", f"heartbeat is a {type(msg).__name__}")
    missing, extra = set(FIELDS) - set(msg), set(map(str, msg)) - set(FIELDS)
    if missing:
        raise WireError("missing_field", f"heartbeat fields missing: {sorted(missing)}")
    if extra:
        raise WireError("extra_field", f"heartbeat fields unknown: {sorted(extra)[:8]}")
    for name, typ in FIELDS.items():
        if not isinstance(msg[name], typ) or isinstance(msg[name], bool):
            raise WireError("wrong_type", f"heartbeat field {name}: {type(msg[name]).__name__}")
    if msg["v"] != HEARTBEAT_VERSION:
        raise WireError("unknown_version", f"heartbeat version {msg['v']}")
    if not 0 < len(msg["actor_id"]) <= 128:
        raise WireError("bad_value", f"heartbeat actor_id of {len(msg['actor_id'])} characters")
    return msg
