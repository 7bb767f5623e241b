"""The trajectory record: the one wire contract between actors and the learner side.

A trajectory is one episode of one group member. It goes over ZeroMQ and into LMDB as a
single msgpack map (never pickle). Arrays travel as ``{"dtype", "shape", "data"}`` with
the dtype fixed per field; :func:`decode` validates every field and raises
:class:`WireError` with a machine-readable ``reason`` and a human-readable detail.

Shapes (T decisions, V cameras, H×W images, P proprio dims, C chunk steps, D action dims,
K = C·D tokens per decision; K = 0 for scripted-expert records, ``policy_version == -1``):

========================  =========  ===================
images                    uint8      [T, V, H, W, 3]
proprio                   float32    [T, P]
actions                   float32    [T, C, D]   continuous actions sent to the env
action_tokens             int16      [T, K]      bin index per token (0..num_bins-1)
behaviour_log_probs       float32    [T, K]      log-prob of each token at ``temperature``
valid_mask                bool       [T, C·D]    token executed (steps after the end are not)
========================  =========  ===================

``num_bins`` is the size of the action space's token vocabulary per dimension (the policy's
``num_bins``): every action token lies in ``[0, num_bins)``. Expert records carry no tokens
(0 is allowed there).

Value ranges (``bad_value`` otherwise): the ints the store keys and orders by fit a signed
64-bit key (``policy_version`` in [-1, 2**63), ``init_state_id`` >= 0, ``length`` >= 1);
``group_size`` in [1, 1024]; ``temperature`` in [0.01, 100] for sampled records (experts':
any finite value >= 0); ``created_at`` from 0 to a day past the receiver's clock; proprio,
actions and timing values finite; behaviour log-probs finite and <= 0; at most 32 timings,
keys of 1..64 characters. Before any of that, the unpacker refuses maps of more than 32
entries, lists of more than 8 and strings longer than the longest text field (``too_large``),
so a record built to be expensive to decode costs little to reject. Before the unpacker even
starts, the size is checked against ``max_bytes`` and, when the record opens with its
``schema`` field (:func:`encode` writes it first), its version (``unknown_version``): a record
of another version is refused from its first bytes, and by that reason rather than whatever
its other fields break.

``length`` is the number of env steps executed, so ``T == ceil(length / C)`` and the
valid tokens are exactly those of the first ``length`` steps (step-major: token ``c·D + d``
of decision ``t`` belongs to step ``t·C + c``), hence ``valid_mask.sum() == length · D``.

On the wire every array is little-endian and its ``dtype`` string is exactly the one in
:data:`WIRE_DTYPES` (``"|u1"``, ``"<f4"``, ``"<i2"``, ``"|b1"``): the receiver compares strings
and never asks numpy to parse a string it did not write, so ``encode(decode(raw)) == raw``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack
import numpy as np

from common.wire.codec import pack_array, unpack_array
from common.wire.errors import WireError  # also imported from here by the record's users

SCHEMA_VERSION = 2           # 2: num_bins
EXPERT_VERSION = -1          # policy_version of scripted-expert demonstrations
DEFAULT_MAX_BYTES = 64 << 20
MAX_ID_LEN = 128
MAX_TEXT_LEN = 4096
INT64_MAX = (1 << 63) - 1    # the store packs policy_version etc. into signed 64-bit keys
MAX_NUM_BINS = 1 << 15       # action_tokens are int16
MAX_TIMINGS, MAX_TIMING_KEY = 32, 64
MAX_GROUP_SIZE = 1024        # a group that size never completes on any actor pool here
# sampled records: logits / T is finite and sampling is not argmax-in-disguise or uniform
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 1e2
MAX_CLOCK_AHEAD_S = 86_400   # created_at from the future would sort first for ever
# what the unpacker may allocate before any rule is checked: a record's maps are its fields,
# an array's {dtype, shape, data} and the timings; its lists are array shapes
MAX_MAP_LEN, MAX_LIST_LEN = 32, 8

ARRAY_DTYPES: dict[str, np.dtype] = {
    "images": np.dtype(np.uint8),
    "proprio": np.dtype(np.float32),
    "actions": np.dtype(np.float32),
    "action_tokens": np.dtype(np.int16),
    "behaviour_log_probs": np.dtype(np.float32),
    "valid_mask": np.dtype(np.bool_),
}
WIRE_DTYPES = {name: dt.newbyteorder("<").str for name, dt in ARRAY_DTYPES.items()}
ARRAY_NDIMS = {"images": 5, "proprio": 2, "actions": 3, "action_tokens": 2,
               "behaviour_log_probs": 2, "valid_mask": 2}
# scalar field -> accepted python types (bool is not an int here)
SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "trajectory_id": (str,), "group_id": (str,), "actor_id": (str,), "task_id": (str,),
    "instruction": (str,), "init_state_id": (int,), "policy_version": (int,),
    "group_size": (int,), "success": (bool,), "length": (int,), "temperature": (float, int),
    "num_bins": (int,),
    "created_at": (float, int), "timings": (dict,),
}
FIELDS = ("schema", *SCALAR_TYPES, *ARRAY_DTYPES)


@dataclass
class Trajectory:
    trajectory_id: str
    group_id: str
    actor_id: str
    task_id: str
    instruction: str
    init_state_id: int
    policy_version: int
    group_size: int
    success: bool
    length: int
    temperature: float
    num_bins: int                # action bins per dimension: tokens lie in [0, num_bins)
    images: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    action_tokens: np.ndarray
    behaviour_log_probs: np.ndarray
    valid_mask: np.ndarray
    created_at: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_decisions(self) -> int:
        return int(self.images.shape[0])

    @property
    def chunk_size(self) -> int:
        return int(self.actions.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[2])

    @property
    def is_expert(self) -> bool:
        return self.policy_version == EXPERT_VERSION

    def equals(self, other: "Trajectory") -> bool:
        """Field-by-field equality, arrays compared by dtype, shape and bytes."""
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                    return False
            elif a != b:
                return False
        return True


def _plain(value: Any) -> Any:
    # actors naturally hand over numpy scalars (np.bool_, np.int64); msgpack only packs builtins
    return value.item() if isinstance(value, np.generic) else value


def encode(traj: Trajectory) -> bytes:
    """Trajectory -> msgpack bytes. Validates first, so nothing malformed leaves a sender."""
    msg: dict[str, Any] = {"schema": SCHEMA_VERSION}
    for name in SCALAR_TYPES:
        msg[name] = _plain(getattr(traj, name))
    try:
        msg["temperature"] = float(traj.temperature)
        msg["created_at"] = float(traj.created_at)
        msg["timings"] = {str(k): float(v) for k, v in dict(traj.timings).items()}
    except (TypeError, ValueError) as exc:
        raise WireError("wrong_type", f"temperature, created_at or timings: {exc}") from None
    for name, dtype in ARRAY_DTYPES.items():
        arr = np.asarray(getattr(traj, name))
        if arr.dtype != dtype:
            raise WireError("bad_dtype", f"{name}: {arr.dtype} (expected {dtype})")
        msg[name] = pack_array(arr, WIRE_DTYPES[name])  # little-endian on every host
    try:
        raw = msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError("wrong_type", f"not encodable: {exc}"[:200]) from None
    decode(raw, max_bytes=max(DEFAULT_MAX_BYTES, len(raw)))  # same checks as the receiver
    return raw


def _unpack_array(name: str, obj: Any, max_bytes: int) -> np.ndarray:
    arr = unpack_array(obj, name, dtype=WIRE_DTYPES[name], ndim=ARRAY_NDIMS[name],
                       max_dim=max_bytes)
    if name == "valid_mask" and arr.size and arr.view(np.uint8).max() > 1:
        raise WireError("bad_value", "valid_mask: bytes other than 0/1")
    if name == "action_tokens" and arr.size and arr.min() < 0:
        raise WireError("bad_value", f"action_tokens: negative bin index {int(arr.min())}")
    return arr


def _check_scalars(msg: dict[str, Any]) -> None:
    for name, types in SCALAR_TYPES.items():
        value = msg[name]
        if isinstance(value, bool) and bool not in types:
            raise WireError("wrong_type", f"{name}: bool (expected {types[0].__name__})")
        if not isinstance(value, types):
            raise WireError("wrong_type", f"{name}: {type(value).__name__} "
                                          f"(expected {' or '.join(t.__name__ for t in types)})")
        if isinstance(value, str):
            # ids become LMDB keys (at most 511 bytes), so their limit is in UTF-8 bytes
            limit = MAX_TEXT_LEN if name == "instruction" else MAX_ID_LEN
            size = len(value.encode())
            if size > limit or (name != "instruction" and not value):
                raise WireError("bad_value", f"{name}: {size} UTF-8 bytes, not in [1, {limit}]")
    if not all(isinstance(k, str) and isinstance(v, (float, int)) and not isinstance(v, bool)
               for k, v in msg["timings"].items()):
        raise WireError("wrong_type", "timings: expected a map of str to float")
    _check_ranges(msg)


# int field -> (lowest, highest) accepted: what the store's keys and the token dtype hold
INT_RANGES = {"policy_version": (EXPERT_VERSION, INT64_MAX), "init_state_id": (0, INT64_MAX),
              "group_size": (1, MAX_GROUP_SIZE), "length": (1, INT64_MAX),
              "num_bins": (0, MAX_NUM_BINS)}


def _check_ranges(msg: dict[str, Any]) -> None:
    """Scalars of the right types -> WireError ``bad_value`` unless every int is inside
    :data:`INT_RANGES`, the temperature in range (see the module docstring), created_at
    between 0 and MAX_CLOCK_AHEAD_S past now, and timings at most MAX_TIMINGS keys of at
    most MAX_TIMING_KEY characters, values finite."""
    for name, (lo, hi) in INT_RANGES.items():
        if not lo <= msg[name] <= hi:
            raise WireError("bad_value", f"{name} {msg[name]} not in [{lo}, {hi}]")
    t = float(msg["temperature"])    # a msgpack int has at most 64 bits: this never overflows
    lo, hi = ((0.0, math.inf) if msg["policy_version"] == EXPERT_VERSION
              else (MIN_TEMPERATURE, MAX_TEMPERATURE))
    if not (lo <= t <= hi and math.isfinite(t)):    # NaN fails this too
        raise WireError("bad_value", f"temperature {msg['temperature']} not in [{lo:g}, {hi:g}]")
    latest = time.time() + MAX_CLOCK_AHEAD_S
    if not 0.0 <= msg["created_at"] <= latest:
        raise WireError("bad_value", f"created_at {msg['created_at']} is not finite and in "
                                     f"[0, {latest:.0f}] seconds (now + a day)")
    timings = msg["timings"]
    if len(timings) > MAX_TIMINGS or any(len(k) > MAX_TIMING_KEY for k in timings):
        raise WireError("bad_value", f"timings: {len(timings)} keys (at most {MAX_TIMINGS}, "
                                     f"each of at most {MAX_TIMING_KEY} characters)")
    if not all(math.isfinite(v) for v in timings.values()):
        raise WireError("bad_value", "timings: values must be finite")


def _check_values(msg: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Arrays of checked shapes -> WireError ``bad_value`` unless proprio and actions are
    finite, behaviour log-probs finite and <= 0, and every action token < num_bins."""
    for name in ("proprio", "actions"):
        if not np.isfinite(arrays[name]).all():
            raise WireError("bad_value", f"{name}: values must be finite")
    logp = arrays["behaviour_log_probs"]
    if not (np.isfinite(logp).all() and (logp <= 0).all()):
        raise WireError("bad_value", "behaviour_log_probs: values must be finite and <= 0 "
                                     "(log-probabilities)")
    tokens = arrays["action_tokens"]
    if tokens.size and int(tokens.max()) >= msg["num_bins"]:
        raise WireError("bad_value", f"action_tokens: bin index {int(tokens.max())} outside "
                                     f"the record's num_bins {msg['num_bins']}")


def _check_shapes(msg: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    T = arrays["images"].shape[0]
    for name, arr in arrays.items():
        if arr.shape[0] != T:
            raise WireError("bad_shape", f"{name}: {arr.shape[0]} decisions, images have {T}")
    if arrays["images"].shape[-1] != 3 or min(arrays["images"].shape[:4]) < 1:
        raise WireError("bad_shape", f"images: shape {list(arrays['images'].shape)} "
                                     "(expected [T>=1, V>=1, H>=1, W>=1, 3])")
    _, C, D = arrays["actions"].shape
    if C < 1 or D < 1:
        raise WireError("bad_shape", f"actions: shape {list(arrays['actions'].shape)} "
                                     "(expected [T, C>=1, D>=1])")
    K = arrays["action_tokens"].shape[1]
    expert = msg["policy_version"] == EXPERT_VERSION
    if K != (0 if expert else C * D) or arrays["behaviour_log_probs"].shape[1] != K:
        raise WireError("bad_shape", f"action_tokens/behaviour_log_probs: {K} tokens per decision "
                                     f"(expected {0 if expert else C * D} = C*D, 0 for experts)")
    if arrays["valid_mask"].shape[1] != C * D:
        raise WireError("bad_shape", f"valid_mask: {arrays['valid_mask'].shape[1]} per decision "
                                     f"(expected C*D = {C * D})")
    length = msg["length"]
    if T != math.ceil(length / C) or int(arrays["valid_mask"].sum()) != length * D:
        raise WireError("length_mismatch", f"length {length} needs ceil(length/C) = "
                        f"{math.ceil(length / C)} decisions and {length * D} valid tokens; got "
                        f"{T} decisions and {int(arrays['valid_mask'].sum())} valid tokens")
    if not arrays["valid_mask"].reshape(T * C, D)[:length].all():
        raise WireError("length_mismatch", f"valid_mask: the tokens of the first {length} steps "
                                           "must be the valid ones")


def _check_leading_schema(raw: bytes | bytearray | memoryview) -> None:
    """WireError ``unknown_version`` if the top-level map's first entry is ``schema`` with any
    value but SCHEMA_VERSION; nothing otherwise (:func:`decode` then checks it in full).
    Reads at most the first 24 bytes."""
    # no container or long string may open in the head: an int is at most 9 bytes
    unpacker = msgpack.Unpacker(max_str_len=16, max_bin_len=16, max_array_len=0,
                                max_map_len=0, max_ext_len=0)
    unpacker.feed(bytes(raw[:24]))
    try:
        unpacker.read_map_header()
        if unpacker.unpack() != "schema":
            return
    except Exception:   # not a map, or its first key is not a short string: decode decides
        return
    try:
        version = unpacker.unpack()
    except Exception:   # cut off by the head, past a limit above, or garbage: not an int
        version = "(not an int)"
    if type(version) is not int or version != SCHEMA_VERSION:
        raise WireError("unknown_version", f"schema {version!r} (this build reads "
                                           f"{SCHEMA_VERSION})")


def decode(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Trajectory:
    """msgpack bytes (or any bytes-like) -> Trajectory, or WireError naming the first violated
    rule. The arrays of the result are read-only views of buffers that msgpack made."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise WireError("wrong_type", f"message is {type(raw).__name__}, not bytes")
    size = memoryview(raw).nbytes
    if size > max_bytes:
        raise WireError("too_large", f"{size} bytes > limit {max_bytes}")
    _check_leading_schema(raw)
    try:
        msg = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True,
                              max_map_len=MAX_MAP_LEN, max_array_len=MAX_LIST_LEN,
                              max_str_len=MAX_TEXT_LEN, max_bin_len=max_bytes, max_ext_len=0)
    except ValueError as exc:   # a length past the limits above, read from its header
        if "exceeds max" not in str(exc):
            raise WireError("not_msgpack", f"ValueError: {exc}"[:200]) from None
        raise WireError("too_large", str(exc)[:200]) from None
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise WireError("not_msgpack", f"{type(exc).__name__}: {exc}"[:200]) from None
    if not isinstance(msg, dict):
        raise WireError("not_a_map", f"top level is {type(msg).__name__}")
    if "schema" not in msg:
        raise WireError("missing_field", "schema")
    if type(msg["schema"]) is not int or msg["schema"] != SCHEMA_VERSION:
        raise WireError("unknown_version", f"schema {msg['schema']!r} (this build reads "
                                           f"{SCHEMA_VERSION})")
    missing = [f for f in FIELDS if f not in msg]
    if missing:
        raise WireError("missing_field", ", ".join(missing))
    extra = [str(k) for k in msg if k not in FIELDS]
    if extra:
        raise WireError("extra_field", ", ".join(sorted(extra))[:200])
    _check_scalars(msg)
    arrays = {name: _unpack_array(name, msg[name], max_bytes) for name in ARRAY_DTYPES}
    _check_shapes(msg, arrays)
    _check_values(msg, arrays)
    scalars = {k: msg[k] for k in SCALAR_TYPES}
    scalars["temperature"] = float(scalars["temperature"])
    scalars["created_at"] = float(scalars["created_at"])
    scalars["timings"] = {k: float(v) for k, v in scalars["timings"].items()}
    return Trajectory(**scalars, **arrays)
