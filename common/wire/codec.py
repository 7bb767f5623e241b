"""Arrays on the wire: one msgpack map ``{"dtype", "shape", "data"}`` per array, never pickle.

``data`` is the array's C-order bytes, ``dtype`` numpy's dtype string for them (``"<f4"``,
``"|u1"``, ...), ``shape`` a list of non-negative ints. :func:`pack_array` writes one;
:func:`unpack_array` checks one before it builds anything (a map with exactly those keys and
types, a dtype that is the expected string or else a plain numpy dtype without objects, the
shape's rank and bounds, the byte length against shape × itemsize) and raises
:class:`~common.wire.errors.WireError` (wrong_type, bad_dtype, bad_shape, length_mismatch)
naming the field.

Used by the trajectory record (:mod:`common.wire.trajectory`: a fixed dtype and rank per field)
and by the env worker protocol (observations and actions between an actor and its env
processes).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.wire.errors import WireError

ARRAY_KEYS = frozenset({"dtype", "shape", "data"})
MAX_DIM = (1 << 31) - 1   # default bound on one dimension
MAX_NDIM = 32             # numpy's own limit is 64; no wire array comes near either


def pack_array(arr: Any, dtype: str | np.dtype | None = None) -> dict[str, Any]:
    """An array (or anything ``np.asarray`` takes) -> ``{dtype, shape, data}``. ``dtype`` (e.g.
    ``"<f4"``) converts first, so the bytes are little-endian on every host."""
    arr = np.asarray(arr, dtype=dtype)   # 0-d stays 0-d; tobytes() writes C order
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}


def unpack_array(obj: Any, name: str = "array", *, dtype: str | None = None,
                 ndim: int | None = None, max_dim: int = MAX_DIM) -> np.ndarray:
    """``{dtype, shape, data}`` -> a read-only array over ``data``, or WireError.

    ``dtype``: the one accepted dtype string (compared as a string, so numpy never parses a
    string the receiver did not write); without it any dtype string that numpy writes itself
    is accepted, object dtypes never. ``ndim``: the required rank. ``max_dim``: the largest
    accepted dimension."""
    if not isinstance(obj, dict) or set(obj) != ARRAY_KEYS:
        raise WireError("wrong_type", f"{name}: expected a map with dtype, shape, data")
    wire, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(wire, str) or not isinstance(data, bytes) or not isinstance(shape, list):
        raise WireError("wrong_type", f"{name}: dtype must be str, shape list, data bytes")
    got = _dtype(name, wire, dtype)
    if not _shape_ok(shape, ndim, max_dim):
        expected = (f"{ndim} dims" if ndim is not None
                    else f"at most {MAX_NDIM} dims, each in [0, {max_dim}]")
        raise WireError("bad_shape", f"{name}: shape {shape} (expected {expected})")
    if math.prod(shape) * got.itemsize != len(data):
        raise WireError("length_mismatch",
                        f"{name}: {len(data)} bytes for shape {shape} of {got.str}")
    try:
        return np.frombuffer(data, dtype=got).reshape(shape)
    except ValueError as exc:   # e.g. an empty array whose other dims overflow numpy's size
        raise WireError("bad_shape", f"{name}: shape {shape}: {exc}"[:200]) from None


def _dtype(name: str, wire: str, expected: str | None) -> np.dtype:
    """The dtype that ``wire`` names, or WireError("bad_dtype")."""
    if expected is not None:
        if wire != expected:
            raise WireError("bad_dtype", f"{name}: {wire[:40]!r} (expected {expected!r})")
        return np.dtype(expected)
    try:
        got = np.dtype(wire)
    except Exception:  # numpy raises several unrelated types for strings it cannot parse
        raise WireError("bad_dtype", f"{name}: {wire[:40]!r} is not a dtype") from None
    if got.hasobject:
        raise WireError("bad_dtype", f"{name}: refusing object dtype {wire[:40]!r}")
    if got.str != wire:
        raise WireError("bad_dtype", f"{name}: {wire[:40]!r} is not a dtype string as numpy "
                                     f"writes it ({got.str!r})")
    if got.itemsize == 0:
        raise WireError("bad_dtype", f"{name}: zero-size dtype {wire!r}")
    return got


def _shape_ok(shape: list[Any], ndim: int | None, max_dim: int) -> bool:
    rank_ok = len(shape) == ndim if ndim is not None else len(shape) <= MAX_NDIM
    return rank_ok and all(type(s) is int and 0 <= s <= max_dim for s in shape)
