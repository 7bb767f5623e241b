"""common/wire/declaration.py: what a learner trains on, each refusal reason, the record's
own encoding and what a reader does with one it cannot read."""
from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest

from common.synthetic import make_trajectory
from common.wire.declaration import (
    FUTURE_VERSION, SHAPE_MISMATCH, TEMPERATURE_MISMATCH, TrainingDeclaration, read_declaration,
)
from common.wire.errors import WireError

DECLARED = TrainingDeclaration(num_bins=256, chunk_size=8, action_dim=7, num_views=1,
                               image_size=8, proprio_dim=8, temperatures=(1.6,),
                               policy_version=10, version_margin=3)


def record(**kw):
    kw = {"image_size": 8, "length": 16, "policy_version": 10, **kw}
    return make_trajectory(np.random.default_rng(0), **kw)


def test_a_record_the_policy_trains_on_passes():
    assert DECLARED.check(record()) is None
    assert DECLARED.check(record(policy_version=13)) is None      # the margin, exactly
    assert DECLARED.check(record(policy_version=0)) is None       # stale is the filter's call
    assert DECLARED.check(record(temperature=1.6 * (1 + 9e-7))) is None   # within tolerance


@pytest.mark.parametrize("fields, reason, words", [
    ({"image_size": 32, "cameras": 2, "proprio_dim": 17}, SHAPE_MISMATCH,
     ["2 views, the policy's 1", "images 32x32, the policy's 8x8",
      "17 proprio dims, the policy's 8"]),
    ({"image_size": 1}, SHAPE_MISMATCH, ["images 1x1, the policy's 8x8"]),
    ({"chunk_size": 4, "action_dim": 3, "num_bins": 7}, SHAPE_MISMATCH,
     ["num_bins 7, the policy's 256", "chunk length 4, the policy's 8",
      "3 action dims, the policy's 7"]),
    ({"policy_version": 14}, FUTURE_VERSION, ["policy_version 14", "at 10"]),
    ({"policy_version": 2 ** 63 - 1, "temperature": 0.7}, FUTURE_VERSION, ["at 10"]),
    ({"temperature": 0.7}, TEMPERATURE_MISMATCH, ["temperature 0.7", "trains at 1.6"]),
    ({"temperature": 1.6 * (1 + 2e-6)}, TEMPERATURE_MISMATCH, ["trains at 1.6"]),
])
def test_each_reason_names_what_differs(fields, reason, words):
    problem = DECLARED.check(record(**fields))
    assert isinstance(problem, WireError) and problem.reason == reason
    assert all(w in problem.detail for w in words), problem.detail


def test_open_dimensions_and_expert_records():
    open_obs = dataclasses.replace(DECLARED, num_views=None, image_size=None, proprio_dim=None)
    assert open_obs.check(record(image_size=16, cameras=2, proprio_dim=3)) is None
    # an expert record: no tokens, temperature or version to judge, only its shapes
    expert = record(policy_version=-1, temperature=0.0, num_bins=0)
    assert DECLARED.check(expert) is None
    assert DECLARED.check(record(policy_version=-1, chunk_size=4)).reason == SHAPE_MISMATCH
    several = dataclasses.replace(DECLARED, temperatures=(1.0, 1.6))
    assert several.check(record(temperature=1.0)) is None


def test_encoding_round_trips_and_a_foreign_declaration_is_refused():
    assert TrainingDeclaration.decode(DECLARED.encode()) == DECLARED
    fields = msgpack.unpackb(DECLARED.encode())
    for broken in ({**fields, "schema": 2}, {**fields, "extra": 1},
                   {k: v for k, v in fields.items() if k != "num_bins"},
                   {**fields, "num_bins": True}, {**fields, "chunk_size": 0},
                   {**fields, "policy_version": -1}, {**fields, "temperatures": []},
                   {**fields, "temperatures": [float("nan")]}, {**fields, "num_views": "1"},
                   {**fields, "temperatures": 1.6}):
        with pytest.raises(WireError) as err:
            TrainingDeclaration.decode(msgpack.packb(broken))
        assert err.value.reason == "bad_value"
    with pytest.raises(WireError):
        TrainingDeclaration.decode(b"\xc1")
    assert read_declaration(b"\xc1") is None          # a reader keeps its own checks
    assert read_declaration(DECLARED.encode()) == DECLARED
