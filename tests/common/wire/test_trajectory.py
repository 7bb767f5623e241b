"""The wire contract: byte-exact round trip, every malformed case rejected with its reason,
and random input (hypothesis) never raising anything but WireError."""
import math
import time

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.synthetic import make_trajectory
from common.wire.codec import pack_array
from common.wire.trajectory import (FIELDS, WIRE_DTYPES, Trajectory, WireError,
                               decode, encode)


def realistic() -> Trajectory:
    """64 decisions x two 128x128 cameras, 8x7 action chunks: a LIBERO-sized record."""
    return make_trajectory(np.random.default_rng(0), length=509, cameras=2, image_size=128)


def small_msg() -> dict:
    traj = make_trajectory(np.random.default_rng(1), length=20, image_size=8)
    return msgpack.unpackb(encode(traj))


def reason_of(msg) -> WireError:
    with pytest.raises(WireError) as err:
        decode(msgpack.packb(msg, use_bin_type=True))
    return err.value


def test_round_trip_is_byte_exact():
    traj = realistic()
    raw = encode(traj)
    back = decode(raw)
    assert back.equals(traj)
    assert encode(back) == raw
    assert back.images.shape == (64, 2, 128, 128, 3)
    assert back.images.tobytes() == traj.images.tobytes()


def test_decode_accepts_zero_copy_buffers():
    raw = encode(make_trajectory(np.random.default_rng(3), image_size=8))
    assert decode(memoryview(raw)).equals(decode(raw))


def test_expert_records_carry_no_tokens():
    traj = make_trajectory(np.random.default_rng(1), policy_version=-1)
    assert decode(encode(traj)).action_tokens.shape[1] == 0


def test_encode_accepts_numpy_scalars():
    traj = make_trajectory(np.random.default_rng(4), image_size=8)
    traj.success, traj.length = np.bool_(True), np.int64(traj.length)
    back = decode(encode(traj))
    assert back.success is True and type(back.length) is int


def test_encode_refuses_what_decode_would_reject():
    traj = make_trajectory(np.random.default_rng(2), length=20)
    traj.length = 21
    with pytest.raises(WireError) as err:
        encode(traj)
    assert err.value.reason == "length_mismatch"
    traj = make_trajectory(np.random.default_rng(2), length=20)
    traj.images = traj.images.astype(np.float32)
    with pytest.raises(WireError) as err:
        encode(traj)
    assert err.value.reason == "bad_dtype" and "images" in err.value.detail


def _set(path, value):
    """A mutation of the valid message: set msg[path[0]][path[1]]... = value."""
    def mutate(msg):
        target = msg
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return msg
    return mutate


def _delete(key):
    def mutate(msg):
        del msg[key]
        return msg
    return mutate


def _array(name, dtype=None, shape=None, data=None):
    def mutate(msg):
        arr = msg[name]
        if dtype is not None:
            arr["dtype"] = dtype
        if shape is not None:
            arr["shape"] = shape(arr["shape"])
        if data is not None:
            arr["data"] = data(arr["data"])
        return msg
    return mutate


def _mask_not_prefix(msg):
    mask = np.frombuffer(msg["valid_mask"]["data"], np.bool_).copy().reshape(-1, 7)
    mask[0], mask[msg["length"]] = False, True   # same count, wrong steps
    msg["valid_mask"]["data"] = mask.tobytes()
    return msg


MALFORMED = {
    # case name: (mutation, expected reason, a word the detail must contain)
    "version 1 (before num_bins)": (_set(["schema"], 1), "unknown_version", "1"),
    "version 3": (_set(["schema"], 3), "unknown_version", "3"),
    "version as text": (_set(["schema"], "1"), "unknown_version", "'1'"),
    "version as float": (_set(["schema"], 1.0), "unknown_version", "1.0"),
    "no schema": (_delete("schema"), "missing_field", "schema"),
    "no success": (_delete("success"), "missing_field", "success"),
    "no images": (_delete("images"), "missing_field", "images"),
    "extra field": (_set(["reward"], 1.0), "extra_field", "reward"),
    "success as int": (_set(["success"], 1), "wrong_type", "success"),
    "length as bool": (_set(["length"], True), "wrong_type", "length"),
    "init_state_id as text": (_set(["init_state_id"], "3"), "wrong_type", "init_state_id"),
    "group_id as bytes": (_set(["group_id"], b"g"), "wrong_type", "group_id"),
    "timings values": (_set(["timings"], {"env_s": "fast"}), "wrong_type", "timings"),
    "array as list": (_set(["proprio"], [1.0, 2.0]), "wrong_type", "proprio"),
    "array data as text": (_array("proprio", data=lambda d: "x"), "wrong_type", "proprio"),
    "images as float32": (_array("images", dtype="<f4"), "bad_dtype", "images"),
    "proprio as float64": (_array("proprio", dtype="<f8"), "bad_dtype", "proprio"),
    "proprio big-endian": (_array("proprio", dtype=">f4"), "bad_dtype", "proprio"),
    "valid_mask as uint8": (_array("valid_mask", dtype="|u1"), "bad_dtype", "valid_mask"),
    "object dtype": (_array("actions", dtype="|O"), "bad_dtype", "actions"),
    "images 4 dims": (_array("images", shape=lambda s: s[1:]), "bad_shape", "images"),
    "images 4 channels": (_array("images", shape=lambda s: s[:4] + [4],
                                 data=lambda d: d + d[: len(d) // 3]), "bad_shape", "images"),
    "negative dim": (_array("proprio", shape=lambda s: [-s[0], s[1]]), "bad_shape", "proprio"),
    "decisions differ": (_array("proprio", shape=lambda s: [s[0] - 1, s[1]],   # P = 8
                                data=lambda d: d[:-8 * 4]), "bad_shape", "proprio"),
    "tokens per decision": (_array("action_tokens", shape=lambda s: [s[0] * 2, s[1] // 2]),
                            "bad_shape", "decisions"),
    "no action dims": (_array("actions", shape=lambda s: [s[0], s[1], 0], data=lambda d: b""),
                       "bad_shape", "actions"),
    "data too short": (_array("images", data=lambda d: d[:-1]), "length_mismatch", "images"),
    "length field": (_set(["length"], 21), "length_mismatch", "length 21"),
    "mask not a prefix": (_mask_not_prefix, "length_mismatch", "first"),
    "mask byte 2": (_array("valid_mask", data=lambda d: b"\x02" + d[1:]), "bad_value",
                    "valid_mask"),
    "empty trajectory_id": (_set(["trajectory_id"], ""), "bad_value", "trajectory_id"),
    "long group_id": (_set(["group_id"], "é" * 100), "bad_value", "group_id"),
    "group_size 0": (_set(["group_size"], 0), "bad_value", "group_size"),
    "nan temperature": (_set(["temperature"], math.nan), "bad_value", "temperature"),
    "inf created_at": (_set(["created_at"], math.inf), "bad_value", "created_at"),
    "negative token": (_array("action_tokens", data=lambda d: b"\xff\xff" + d[2:]),
                       "bad_value", "action_tokens"),
    # ranges: what the store keys and orders by, and values the learner can use
    "policy_version 2**63": (_set(["policy_version"], 2 ** 63), "bad_value", "policy_version"),
    "policy_version -2": (_set(["policy_version"], -2), "bad_value", "policy_version"),
    "init_state_id 2**64-1": (_set(["init_state_id"], 2 ** 64 - 1), "bad_value",
                              "init_state_id"),
    "group_size 2**63": (_set(["group_size"], 2 ** 63), "bad_value", "group_size"),
    "huge created_at": (_set(["created_at"], 1e308), "bad_value", "created_at"),
    "nan created_at": (_set(["created_at"], math.nan), "bad_value", "created_at"),
    "negative created_at": (_set(["created_at"], -1.0), "bad_value", "created_at"),
    "no num_bins": (_delete("num_bins"), "missing_field", "num_bins"),
    "num_bins as float": (_set(["num_bins"], 256.0), "wrong_type", "num_bins"),
    "num_bins 2**15+1": (_set(["num_bins"], 2 ** 15 + 1), "bad_value", "num_bins"),
    "token past num_bins": (_set(["num_bins"], 4), "bad_value", "num_bins 4"),
    "nan log-prob": (_array("behaviour_log_probs",
                            data=lambda d: np.float32(np.nan).tobytes() + d[4:]),
                     "bad_value", "behaviour_log_probs"),
    "-inf log-prob": (_array("behaviour_log_probs",
                             data=lambda d: np.float32(-np.inf).tobytes() + d[4:]),
                      "bad_value", "behaviour_log_probs"),
    "positive log-prob": (_array("behaviour_log_probs",
                                 data=lambda d: np.float32(0.5).tobytes() + d[4:]),
                          "bad_value", "behaviour_log_probs"),
    "inf proprio": (_array("proprio", data=lambda d: np.float32(np.inf).tobytes() + d[4:]),
                    "bad_value", "proprio"),
    "nan action": (_array("actions", data=lambda d: d[:-4] + np.float32(np.nan).tobytes()),
                   "bad_value", "actions"),
    # refused by the unpacker from the map's header, before its entries are read
    "33 timings": (_set(["timings"], {f"t{i}": 0.0 for i in range(33)}), "too_large",
                   "max_map_len"),
    "long timing key": (_set(["timings"], {"k" * 65: 0.0}), "bad_value", "timings"),
    "inf timing": (_set(["timings"], {"env_s": math.inf}), "bad_value", "timings"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_message_is_rejected_with_its_reason(case):
    mutate, reason, word = MALFORMED[case]
    err = reason_of(mutate(small_msg()))
    assert err.reason == reason, err
    assert word in err.detail, err


def test_the_largest_values_in_range_are_accepted():
    """The range checks reject only what is outside: the bounds themselves decode (and the
    store can key them: tests/learner/test_store.py)."""
    msg = small_msg()
    msg.update(policy_version=2 ** 63 - 1, init_state_id=2 ** 63 - 1, group_size=1024,
               created_at=time.time() + 86_000, temperature=100, num_bins=2 ** 15,
               timings={"k" * 64: -1.0, **{f"t{i}": 0.0 for i in range(31)}})
    traj = decode(msgpack.packb(msg, use_bin_type=True))
    assert traj.num_bins == 2 ** 15 and traj.policy_version == 2 ** 63 - 1
    tokens = np.asarray(traj.action_tokens)
    msg["num_bins"] = int(tokens.max()) + 1          # the tightest declaration still fits
    assert decode(msgpack.packb(msg, use_bin_type=True)).num_bins == tokens.max() + 1


def test_decisions_differ_case_really_changes_the_decision_count():
    msg = MALFORMED["decisions differ"][0](small_msg())
    assert msg["proprio"]["shape"][0] == msg["images"]["shape"][0] - 1


def test_message_over_the_size_limit_is_rejected_before_parsing():
    raw = encode(make_trajectory(np.random.default_rng(5), image_size=8))
    with pytest.raises(WireError) as err:
        decode(raw, max_bytes=len(raw) - 1)
    assert err.value.reason == "too_large" and str(len(raw)) in err.value.detail
    assert decode(raw, max_bytes=len(raw)).trajectory_id


@pytest.mark.parametrize("raw, reason", [
    (b"\xc1", "not_msgpack"), (b"", "not_msgpack"), (msgpack.packb([1, 2]), "not_a_map"),
    (msgpack.packb({1: 2}), "not_msgpack"), ("text", "wrong_type"),
])
def test_garbage_is_rejected(raw, reason):
    with pytest.raises(WireError) as err:
        decode(raw)
    assert err.value.reason == reason


# ---------------------------------------------------------------- hypothesis
# Two levels of nesting, built without st.recursive (which is many times slower to draw).
scalars = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats()
           | st.text(max_size=12) | st.binary(max_size=24))
keys = st.text(max_size=8) | st.binary(max_size=8) | st.sampled_from(FIELDS)
level1 = st.lists(scalars, max_size=4) | st.dictionaries(keys, scalars, max_size=4)
structures = (scalars | level1 | st.lists(level1, max_size=3)
              | st.dictionaries(keys, level1, max_size=3))
BASE = small_msg()
ARRAY_KEYS = ["dtype", "shape", "data"]
# 4 x 800 = 3200 cases, a few seconds on an idle core
FUZZ = settings(max_examples=800, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def only_wire_errors(raw) -> None:
    try:
        traj = decode(raw)
    except WireError as err:
        assert err.reason and err.detail is not None
    else:   # a valid record: then it must round-trip
        assert decode(encode(traj)).equals(traj)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_wire_errors(raw):
    only_wire_errors(raw)


@FUZZ
@given(st.sampled_from([b"\x85", b"\xde\x00\x15", b"\xdf\x00\x00\x00\x15"]),
       st.binary(max_size=40))
def test_random_bytes_after_a_leading_schema_key_raise_only_wire_errors(header, tail):
    only_wire_errors(header + msgpack.packb("schema") + tail)


@FUZZ
@given(structures)
def test_random_msgpack_raises_only_wire_errors(obj):
    only_wire_errors(msgpack.packb(obj, use_bin_type=True))


@FUZZ
@given(st.sampled_from(FIELDS), structures)
def test_valid_message_with_a_random_field_raises_only_wire_errors(name, value):
    msg = msgpack.unpackb(msgpack.packb(BASE))
    msg[name] = value
    only_wire_errors(msgpack.packb(msg, use_bin_type=True))


@FUZZ
@given(st.sampled_from(sorted(WIRE_DTYPES)), st.sampled_from(ARRAY_KEYS),
       st.lists(st.integers(-2, 70), max_size=6) | st.text(max_size=8) | st.binary(max_size=64)
       | st.sampled_from(sorted(set(WIRE_DTYPES.values()))))
def test_valid_message_with_a_random_array_part_raises_only_wire_errors(name, part, value):
    msg = msgpack.unpackb(msgpack.packb(BASE))
    msg[name][part] = value
    only_wire_errors(msgpack.packb(msg, use_bin_type=True))


@pytest.mark.parametrize("field, value", [
    ("temperature", 0.0), ("temperature", 5e-324), ("temperature", 1e308),
    ("temperature", 2 ** 64 - 1), ("group_size", 2 ** 63 - 1), ("created_at", 1e12)])
def test_values_legal_as_numbers_that_would_poison_a_run_are_rejected(field, value):
    err = reason_of({**small_msg(), field: value})
    assert err.reason == "bad_value" and field in err.detail, err


def test_an_expert_record_may_carry_temperature_0():
    msg = small_msg()
    msg.update(policy_version=-1, temperature=0.0, action_tokens=pack_array(
        np.zeros((msg["images"]["shape"][0], 0), np.int16), "<i2"),
        behaviour_log_probs=pack_array(np.zeros((msg["images"]["shape"][0], 0), np.float32),
                                       "<f4"))
    assert decode(msgpack.packb(msg, use_bin_type=True)).temperature == 0.0


def test_a_map_of_a_million_keys_is_refused_from_its_header():
    """An expensive record is refused by the unpacker on its map's header, before the
    million entries are read."""
    msg = {**small_msg(), "timings": {f"k{i}": 0.0 for i in range(1_000_000)}}
    with pytest.raises(WireError) as err:
        decode(msgpack.packb(msg, use_bin_type=True))
    assert err.value.reason == "too_large" and "1000000 exceeds max_map_len" in err.value.detail


def test_a_record_of_another_version_is_refused_by_its_first_bytes():
    """The schema field, which encode writes first, is read before the unpacker starts: a
    record of another version gets unknown_version even where the rest is unreadable to this
    build (more fields, a huge map, cut short), and only its head is read."""
    msg = {"schema": 3, **{k: v for k, v in small_msg().items() if k != "schema"},
           **{f"new_{i}": 0 for i in range(40)}}
    raw = msgpack.packb(msg, use_bin_type=True)
    for cut in (raw, raw[:24]):
        err = reason_of_raw(cut)
        assert err.reason == "unknown_version" and "schema 3" in err.detail, err
    as_text = msgpack.packb({"schema": "2", "timings": {f"k{i}": 0 for i in range(100)}})
    assert reason_of_raw(as_text).reason == "unknown_version"


def test_the_schema_check_is_unchanged_where_schema_is_not_the_first_field():
    """Any field order stays legal: the full checks, in their order, decide."""
    msg = small_msg()
    reordered = {**{k: v for k, v in msg.items() if k != "schema"}, "schema": msg["schema"]}
    assert decode(msgpack.packb(reordered, use_bin_type=True)).equals(
        decode(msgpack.packb(msg, use_bin_type=True)))
    late = {**reordered, "schema": 3, "timings": {f"k{i}": 0.0 for i in range(40)}}
    assert reason_of_raw(msgpack.packb(late, use_bin_type=True)).reason == "too_large"


def test_the_oversized_timings_record_is_a_million_keys_refused_from_its_header():
    from common.synthetic import oversized_timings_record
    raw = oversized_timings_record("bad-0")
    assert 12_000_000 <= len(raw) < 12_100_000
    assert len(msgpack.unpackb(oversized_timings_record("bad-1", keys=100))["timings"]) == 100
    err = reason_of_raw(raw)
    assert err.reason == "too_large" and "1000000 exceeds max_map_len" in err.detail


def reason_of_raw(raw: bytes) -> WireError:
    with pytest.raises(WireError) as err:
        decode(raw)
    return err.value
