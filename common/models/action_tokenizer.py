"""The action tokenizer: continuous actions <-> bin indices (the policy's action tokens).

Each action dimension is normalised to [-1, 1] with the 1st/99th percentiles of the
demonstrations (``q01 -> -1``, ``q99 -> +1``, clipped outside), then cut into ``num_bins``
uniform bins over [-1, 1]; a token decodes to its bin centre, un-normalised. The statistics
travel with the model (its config JSON), so a checkpoint always decodes its own tokens.

Dimensions with ``normalize_mask[d] == False`` skip the percentile step: they are already
in [-1, 1] (e.g. a binary gripper command, which percentiles would squash).

Chunks: a model call emits C steps × D dims; flat tokens are C-major, token ``k`` is
step ``k // D``, dim ``k % D`` (see :func:`flatten_chunk` / :func:`unflatten_chunk`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# A dimension whose q01 == q99 (constant in the demos) still needs a non-zero range.
_MIN_RANGE = 1e-3


class ActionTokenizer:
    """Per-dimension percentile normalisation + uniform binning.

    q01, q99: float [D]; num_bins: bins over [-1, 1]; normalize_mask: bool [D] (default all).
    """

    def __init__(self, q01: Sequence[float], q99: Sequence[float], num_bins: int = 256,
                 normalize_mask: Sequence[bool] | None = None):
        self.q01 = np.asarray(q01, dtype=np.float64).reshape(-1)
        self.q99 = np.asarray(q99, dtype=np.float64).reshape(-1)
        if self.q01.shape != self.q99.shape or self.q01.size == 0:
            raise ValueError(f"ActionTokenizer: q01 {self.q01.shape} and q99 {self.q99.shape} "
                             "must be non-empty vectors of the same length D")
        if not (np.all(np.isfinite(self.q01)) and np.all(np.isfinite(self.q99))):
            raise ValueError("ActionTokenizer: q01/q99 must be finite")
        if np.any(self.q99 < self.q01):
            bad = np.flatnonzero(self.q99 < self.q01).tolist()
            raise ValueError(f"ActionTokenizer: q99 < q01 in dims {bad}")
        if num_bins < 2:
            raise ValueError(f"ActionTokenizer: num_bins must be >= 2, got {num_bins}")
        self.num_bins = int(num_bins)
        mask = np.ones(self.q01.size, bool) if normalize_mask is None else \
            np.asarray(normalize_mask, dtype=bool).reshape(-1)
        if mask.shape != self.q01.shape:
            raise ValueError(f"ActionTokenizer: normalize_mask has {mask.size} dims, "
                             f"q01 has {self.q01.size}")
        self.normalize_mask = mask
        # Widen degenerate ranges symmetrically so that the constant value sits mid-range.
        half = np.maximum(self.q99 - self.q01, _MIN_RANGE) / 2
        mid = (self.q99 + self.q01) / 2
        self._low = np.where(mask, mid - half, -1.0)
        self._high = np.where(mask, mid + half, 1.0)

    @property
    def action_dim(self) -> int:
        return int(self.q01.size)

    @property
    def bin_width(self) -> float:
        """Width of one bin in normalised [-1, 1] units."""
        return 2.0 / self.num_bins

    @classmethod
    def fit(cls, actions: np.ndarray, num_bins: int = 256,
            normalize_mask: Sequence[bool] | None = None) -> "ActionTokenizer":
        """actions float [N, D] (N >= 1) -> tokenizer with their per-dim 1st/99th percentiles."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] < 1:
            raise ValueError(f"ActionTokenizer.fit: actions must be [N>=1, D], got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("ActionTokenizer.fit: actions contain NaN or inf")
        q01, q99 = np.quantile(actions, [0.01, 0.99], axis=0)
        return cls(q01, q99, num_bins=num_bins, normalize_mask=normalize_mask)

    def _check_dim(self, x: np.ndarray, what: str) -> None:
        if x.ndim == 0 or x.shape[-1] != self.action_dim:
            raise ValueError(f"ActionTokenizer.{what}: last axis must be D={self.action_dim}, "
                             f"got shape {x.shape}")

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """float [..., D] -> float [..., D] in [-1, 1] (clipped)."""
        actions = np.asarray(actions, dtype=np.float64)
        self._check_dim(actions, "normalize")
        return np.clip(2 * (actions - self._low) / (self._high - self._low) - 1, -1.0, 1.0)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        """float [..., D] in [-1, 1] -> float32 actions [..., D]."""
        x = np.asarray(x, dtype=np.float64)
        self._check_dim(x, "unnormalize")
        return ((x + 1) / 2 * (self._high - self._low) + self._low).astype(np.float32)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """float [..., D] -> int64 bins [..., D] in [0, num_bins)."""
        x = self.normalize(actions)
        bins = np.floor((x + 1) / self.bin_width).astype(np.int64)
        return np.clip(bins, 0, self.num_bins - 1)

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """int [..., D] -> float32 actions [..., D] at the bin centres."""
        bins = np.asarray(bins)
        self._check_dim(bins, "decode")
        if bins.size and (bins.min() < 0 or bins.max() >= self.num_bins):
            raise ValueError(f"ActionTokenizer.decode: bins outside [0, {self.num_bins}): "
                             f"min {bins.min()}, max {bins.max()}")
        return self.unnormalize(-1 + (bins.astype(np.float64) + 0.5) * self.bin_width)

    def encode_chunk(self, actions: np.ndarray) -> np.ndarray:
        """float [..., C, D] -> int64 flat tokens [..., C*D] (C-major)."""
        return flatten_chunk(self.encode(actions))

    def decode_chunk(self, tokens: np.ndarray, chunk_size: int) -> np.ndarray:
        """int [..., C*D] -> float32 actions [..., C, D]."""
        return self.decode(unflatten_chunk(np.asarray(tokens), chunk_size, self.action_dim))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready statistics (stored in the model's config.json)."""
        return {"q01": self.q01.tolist(), "q99": self.q99.tolist(), "num_bins": self.num_bins,
                "normalize_mask": self.normalize_mask.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ActionTokenizer":
        missing = {"q01", "q99"} - set(d)
        if missing:
            raise ValueError(f"ActionTokenizer.from_dict: missing {sorted(missing)}")
        return cls(d["q01"], d["q99"], num_bins=d.get("num_bins", 256),
                   normalize_mask=d.get("normalize_mask"))

    @classmethod
    def identity(cls, action_dim: int, num_bins: int = 256) -> "ActionTokenizer":
        """Actions already in [-1, 1]: no rescaling (a fresh model before any data)."""
        return cls([-1.0] * action_dim, [1.0] * action_dim, num_bins=num_bins)


def flatten_chunk(x: np.ndarray) -> np.ndarray:
    """[..., C, D] -> [..., C*D], C-major (token k = step k // D, dim k % D)."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"flatten_chunk: need [..., C, D], got shape {x.shape}")
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def unflatten_chunk(x: np.ndarray, chunk_size: int, action_dim: int) -> np.ndarray:
    """[..., C*D] -> [..., C, D]."""
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != chunk_size * action_dim:
        raise ValueError(f"unflatten_chunk: last axis must be C*D = {chunk_size}*{action_dim}, "
                         f"got shape {x.shape}")
    return x.reshape(*x.shape[:-1], chunk_size, action_dim)
