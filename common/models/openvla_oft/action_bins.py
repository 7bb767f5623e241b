"""OpenVLA's action-token rules: continuous action <-> bin index <-> Llama token id.

OpenVLA (and OpenVLA-OFT, and SimpleVLA-RL on top of them) cut [-1, 1] with
``bins = np.linspace(-1, 1, 256)``; an action value ``a`` is discretised with
``np.digitize(a, bins)`` (a value in 1..256) and written as the Llama token
``vocab_size - digitized`` with ``vocab_size = 32000``, i.e. one of the last 256 ids of the
base vocabulary, 31744..31999. Decoding takes ``vocab_size - token_id - 1`` (clipped to
0..254) as an index into the 255 bin centres ``(bins[:-1] + bins[1:]) / 2``.

pushcut's policy tokens are *bin indices* ``b = digitized - 1`` in 0..255, increasing with
the action value, so ``token_id = vocab_size - 1 - b``; bin 255 (only a = +1.0 exactly)
decodes to the same centre as bin 254, as in OpenVLA.

Normalisation ("bounds_q99"): ``n = 2 (a - q01) / (q99 - q01) - 1`` clipped to [-1, 1];
un-normalisation ``a = 0.5 (n + 1) (q99 - q01) + q01`` on dims whose ``mask`` is True, the
raw value on the others (the gripper, already in [-1, 1]).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

NUM_BINS = 256
BASE_VOCAB_SIZE = 32000                    # Llama-2's vocabulary before padding
ACTION_TOKEN_BEGIN = BASE_VOCAB_SIZE - NUM_BINS   # 31744: first action token id
BIN_EDGES = np.linspace(-1.0, 1.0, NUM_BINS)
BIN_CENTERS = (BIN_EDGES[:-1] + BIN_EDGES[1:]) / 2.0   # 255 centres


def normalized_to_bins(x: np.ndarray) -> np.ndarray:
    """float [...] in [-1, 1] -> int64 bin indices [...] in 0..255 (np.digitize - 1)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    return np.digitize(x, BIN_EDGES).astype(np.int64) - 1


def bins_to_normalized(bins: np.ndarray) -> np.ndarray:
    """int [...] bin indices 0..255 -> float64 [...] bin centres in (-1, 1)."""
    bins = np.asarray(bins)
    if bins.size and (bins.min() < 0 or bins.max() >= NUM_BINS):
        raise ValueError(f"bin indices must lie in 0..{NUM_BINS - 1}, "
                         f"got min {bins.min()} max {bins.max()}")
    return BIN_CENTERS[np.minimum(bins.astype(np.int64), NUM_BINS - 2)]


def bins_to_token_ids(bins: np.ndarray, vocab_size: int = BASE_VOCAB_SIZE) -> np.ndarray:
    """int [...] bin indices -> int64 Llama token ids (vocab_size - 1 - bin)."""
    return vocab_size - 1 - np.asarray(bins, dtype=np.int64)


def token_ids_to_bins(token_ids: np.ndarray, vocab_size: int = BASE_VOCAB_SIZE) -> np.ndarray:
    """int [...] Llama token ids in the action range -> int64 bin indices 0..255."""
    bins = vocab_size - 1 - np.asarray(token_ids, dtype=np.int64)
    if bins.size and (bins.min() < 0 or bins.max() >= NUM_BINS):
        raise ValueError(f"token ids must lie in {vocab_size - NUM_BINS}..{vocab_size - 1}")
    return bins


def action_stats(norm_stats: Mapping[str, Any] | None, unnorm_key: str | None,
                 action_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick (q01, q99, mask), each [D], from OpenVLA ``norm_stats`` / dataset_statistics.json.

    ``norm_stats`` is ``{dataset: {"action": {"q01", "q99", "mask"?, ...}, ...}}``; with no
    statistics at all the identity (q01 = -1, q99 = 1) is returned. Several datasets need
    ``unnorm_key`` to choose one.
    """
    if not norm_stats:
        ones = np.ones(action_dim)
        return -ones, ones, np.ones(action_dim, dtype=bool)
    if unnorm_key is None:
        if len(norm_stats) != 1:
            raise ValueError(f"the checkpoint has statistics of several datasets "
                             f"{sorted(norm_stats)}; choose one with unnorm_key")
        unnorm_key = next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        raise ValueError(f"unnorm_key {unnorm_key!r} not among the checkpoint's datasets "
                         f"{sorted(norm_stats)}")
    stats = norm_stats[unnorm_key].get("action")
    if not stats or "q01" not in stats or "q99" not in stats:
        raise ValueError(f"dataset statistics {unnorm_key!r} lack action q01/q99")
    q01 = np.asarray(stats["q01"], dtype=np.float64)
    q99 = np.asarray(stats["q99"], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    if not (q01.shape == q99.shape == mask.shape == (action_dim,)):
        raise ValueError(f"action statistics {unnorm_key!r} have {q01.size} dims "
                         f"(mask {mask.size}), the policy emits action_dim={action_dim}")
    return q01, q99, mask


def unnormalize(x: np.ndarray, q01: np.ndarray, q99: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float [..., D] in [-1, 1] -> float32 env actions [..., D] (OpenVLA's formula)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(mask, 0.5 * (x + 1.0) * (q99 - q01) + q01, x).astype(np.float32)


def normalize(actions: np.ndarray, q01: np.ndarray, q99: np.ndarray,
              mask: np.ndarray) -> np.ndarray:
    """float [..., D] env actions -> float64 [..., D] in [-1, 1] (masked dims pass through)."""
    a = np.asarray(actions, dtype=np.float64)
    span = np.where(q99 > q01, q99 - q01, 1.0)   # a constant dim maps to -1, not NaN
    return np.clip(np.where(mask, 2.0 * (a - q01) / span - 1.0, a), -1.0, 1.0)


class OpenVLAActionTokenizer:
    """OpenVLA's rules behind the interface of common.models.action_tokenizer.ActionTokenizer (encode,
    decode, encode_chunk, decode_chunk, to_dict), so pushcut's SFT code tokenises
    demonstrations for OpenVLA-OFT exactly as OpenVLA does. q01, q99, mask: [D]."""

    def __init__(self, q01: np.ndarray, q99: np.ndarray, mask: np.ndarray):
        self.q01, self.q99 = np.asarray(q01, np.float64), np.asarray(q99, np.float64)
        self.normalize_mask = np.asarray(mask, bool)
        self.num_bins = NUM_BINS

    @property
    def action_dim(self) -> int:
        return int(self.q01.size)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """float [..., D] env actions -> int64 bins [..., D]."""
        return normalized_to_bins(normalize(actions, self.q01, self.q99, self.normalize_mask))

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """int [..., D] bins -> float32 env actions [..., D] at OpenVLA's bin centres."""
        return unnormalize(bins_to_normalized(bins), self.q01, self.q99, self.normalize_mask)

    def encode_chunk(self, actions: np.ndarray) -> np.ndarray:
        """float [..., C, D] -> int64 tokens [..., C·D] (C-major)."""
        bins = self.encode(actions)
        return bins.reshape(*bins.shape[:-2], -1)

    def decode_chunk(self, tokens: np.ndarray, chunk_size: int) -> np.ndarray:
        """int [..., C·D] -> float32 [..., C, D]."""
        tokens = np.asarray(tokens)
        if tokens.ndim < 1 or tokens.shape[-1] != chunk_size * self.action_dim:
            raise ValueError(f"tokens must be [..., K={chunk_size * self.action_dim}], "
                             f"got shape {tokens.shape}")
        return self.decode(tokens.reshape(*tokens.shape[:-1], chunk_size, self.action_dim))

    def to_dict(self) -> dict[str, Any]:
        return {"q01": self.q01.tolist(), "q99": self.q99.tolist(), "num_bins": self.num_bins,
                "normalize_mask": self.normalize_mask.tolist()}
