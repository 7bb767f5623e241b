import numpy as np
import pytest

from common.synthetic import make_trajectory
from common.trajectory import WireError, decode, encode


def test_round_trip_is_byte_exact():
    rng = np.random.default_rng(0)
    traj = make_trajectory(rng, length=61, cameras=2, image_size=32)
    raw = encode(traj)
    back = decode(raw)
    assert back.equals(traj)
    assert encode(back) == raw


def test_expert_records_carry_no_tokens():
    traj = make_trajectory(np.random.default_rng(1), policy_version=-1)
    assert decode(encode(traj)).action_tokens.shape[1] == 0


def test_length_must_match_valid_tokens():
    traj = make_trajectory(np.random.default_rng(2), length=20)
    traj.length = 21
    with pytest.raises(WireError) as err:
        encode(traj)
    assert err.value.reason == "length_mismatch"
