"""The weight broadcast's wire messages: what the learner's publisher and the actors' client
say to each other (:mod:`common.transport.weight_publisher`, :mod:`common.transport.weights`).

Each policy version travels as the bytes of a safetensors file (:func:`state_dict_to_bytes`),
cut into fixed-size chunks:

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

Every message is msgpack or raw bytes, never pickle. A message that breaks these rules raises
:class:`WeightWireError`, a :class:`~common.wire.errors.WireError`.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from common.wire.errors import WireError

ANNOUNCE_TOPIC = b"pushcut.weights.v1 "
MAX_HEADER_BYTES = 16 << 20


class WeightWireError(WireError):
    """A weight message that does not satisfy the protocol; ``reason`` names the rule."""


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
