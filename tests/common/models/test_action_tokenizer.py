"""ActionTokenizer: normalisation, binning, round trips, chunk layout, serialisation."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.models.action_tokenizer import ActionTokenizer, flatten_chunk, unflatten_chunk


def _tok(rng, D=7, bins=256):
    q01 = rng.uniform(-2, 0, D)
    return ActionTokenizer(q01, q01 + rng.uniform(0.1, 3, D), num_bins=bins)


@given(arrays(np.float64, (40, 7), elements=st.floats(-1e3, 1e3)),
       st.sampled_from([16, 256]))
@settings(max_examples=50, deadline=None)
def test_round_trip_within_half_a_bin(actions, bins):
    tok = ActionTokenizer.fit(actions, num_bins=bins)
    inside = np.clip(actions, tok.q01, tok.q99)   # outside [q01, q99] clips by design
    back = tok.decode(tok.encode(inside))
    half_bin = (tok._high - tok._low) / bins / 2   # half a bin in action units, per dim
    f32_rounding = (np.abs(inside) + half_bin) * np.finfo(np.float32).eps  # decode gives f32
    assert np.all(np.abs(back - inside) <= half_bin * (1 + 1e-9) + f32_rounding)


def test_bins_are_uniform_over_minus_one_one():
    tok = ActionTokenizer([-1.0], [1.0], num_bins=4)
    x = np.array([[-1.0], [-0.51], [-0.49], [0.0], [0.49], [0.51], [1.0]])
    assert tok.encode(x)[:, 0].tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert tok.decode(np.array([[0], [1], [2], [3]]))[:, 0].tolist() == [-0.75, -0.25, 0.25, 0.75]


def test_fit_uses_percentiles_and_clips_outliers():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 10, (10000, 2))
    tok = ActionTokenizer.fit(a)
    assert np.allclose(tok.q01, 0.1, atol=0.1) and np.allclose(tok.q99, 9.9, atol=0.1)
    assert tok.encode(np.array([[-100.0, 100.0]])).tolist() == [[0, 255]]


def test_constant_dimension_and_unnormalised_gripper():
    a = np.zeros((50, 2))
    a[:, 1] = 1.0   # gripper always closed in the demos: percentiles collapse
    tok = ActionTokenizer.fit(a, normalize_mask=[True, False])
    back = tok.decode(tok.encode(np.array([[0.0, -1.0], [0.0, 1.0]])))
    assert np.allclose(back[:, 0], 0.0, atol=1e-3)          # the constant decodes to itself
    assert np.allclose(back[:, 1], [-1.0, 1.0], atol=1 / 256)  # gripper keeps its full range


def test_chunks_are_c_major():
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4)   # [B, C, D]
    flat = flatten_chunk(x)
    assert flat.shape == (2, 12)
    k = 7
    assert flat[1, k] == x[1, k // 4, k % 4]
    assert np.array_equal(unflatten_chunk(flat, 3, 4), x)


def test_chunk_encode_decode_shapes():
    tok = _tok(np.random.default_rng(1))
    actions = np.random.default_rng(2).uniform(-1, 1, (5, 8, 7))
    tokens = tok.encode_chunk(actions)
    assert tokens.shape == (5, 56) and tokens.dtype == np.int64
    assert tok.decode_chunk(tokens, 8).shape == (5, 8, 7)


def test_dict_round_trip_through_json():
    tok = ActionTokenizer([0.0, -1.0], [2.0, 1.0], num_bins=64, normalize_mask=[True, False])
    again = ActionTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    x = np.random.default_rng(3).uniform(-2, 3, (100, 2))
    assert np.array_equal(tok.encode(x), again.encode(x))
    assert again.num_bins == 64 and again.normalize_mask.tolist() == [True, False]


@pytest.mark.parametrize("call, match", [
    (lambda: ActionTokenizer([0.0, 0.0], [1.0]), "same length"),
    (lambda: ActionTokenizer([1.0], [0.0]), "q99 < q01"),
    (lambda: ActionTokenizer.fit(np.zeros(5)), r"\[N>=1, D\]"),
    (lambda: ActionTokenizer([0.0], [1.0]).encode(np.zeros((3, 2))), "D=1"),
    (lambda: ActionTokenizer([0.0], [1.0], num_bins=8).decode(np.array([[8]])), "outside"),
    (lambda: unflatten_chunk(np.zeros((2, 10)), 3, 4), "C\\*D"),
])
def test_bad_input_names_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()
