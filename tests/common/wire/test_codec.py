"""The one array codec (common/wire/codec.py) and the one wire error class: round trips, and
every malformed array map refused with its reason, also without an expected dtype."""
from __future__ import annotations

import numpy as np
import pytest

from common.wire.codec import pack_array, unpack_array
from common.wire.errors import WireError
from common.wire.trajectory import WireError as TrajectoryWireError
from common.wire.weights import WeightWireError, unpack_map


@pytest.mark.parametrize("arr", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.zeros((0, 5), np.uint8),
    np.array([True, False]), np.arange(6, dtype=">i4").reshape(3, 2).T,   # big-endian, strided
    np.float64(3.5),
])
def test_round_trip_keeps_dtype_shape_and_bytes(arr):
    got = unpack_array(pack_array(arr))
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert np.ascontiguousarray(arr).tobytes() == got.tobytes()


def test_a_fixed_dtype_is_written_little_endian_and_checked_as_a_string():
    msg = pack_array(np.arange(3, dtype=">f4"), "<f4")
    assert msg["dtype"] == "<f4"
    assert unpack_array(msg, "x", dtype="<f4", ndim=1).tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(WireError) as err:
        unpack_array(msg, "x", dtype="<f8")
    assert err.value.reason == "bad_dtype" and "x" in err.value.detail


def _mutated(**changes):
    msg = pack_array(np.zeros((2, 3), np.float32))
    msg.update(changes)
    return msg


@pytest.mark.parametrize("obj, reason", [
    ([1, 2], "wrong_type"),
    ({"dtype": "<f4", "shape": [1]}, "wrong_type"),
    (_mutated(extra=1), "wrong_type"),
    (_mutated(data="text"), "wrong_type"),
    (_mutated(shape=(2, 3)), "wrong_type"),
    (_mutated(dtype="|O"), "bad_dtype"),            # object arrays: never
    (_mutated(dtype="O,<f4"), "bad_dtype"),
    (_mutated(dtype="not a dtype"), "bad_dtype"),
    (_mutated(dtype="float32"), "bad_dtype"),       # not the string numpy writes ("<f4")
    (_mutated(dtype="|V0", data=b""), "bad_dtype"),
    (_mutated(shape=[2, -3]), "bad_shape"),
    (_mutated(shape=[2.0, 3]), "bad_shape"),
    (_mutated(shape=[0] * 40, data=b""), "bad_shape"),
    (_mutated(shape=[0, 1 << 30, 1 << 30, 1 << 30], data=b""), "bad_shape"),
    (_mutated(shape=[3, 3]), "length_mismatch"),
])
def test_malformed_array_is_refused_with_its_reason(obj, reason):
    with pytest.raises(WireError) as err:
        unpack_array(obj, "obs")
    assert err.value.reason == reason, err.value
    assert "obs" in err.value.detail


def test_rank_is_checked_when_asked():
    with pytest.raises(WireError) as err:
        unpack_array(pack_array(np.zeros((2, 3))), "proprio", ndim=3)
    assert err.value.reason == "bad_shape" and "3 dims" in err.value.detail


def test_one_error_class_for_every_wire_contract():
    assert TrajectoryWireError is WireError
    with pytest.raises(WireError) as err:
        unpack_map(b"\xc1")
    assert isinstance(err.value, WeightWireError) and err.value.reason == "not_msgpack"
