"""The policy interface that actors and the learner share.

Any VLA fills it: the tiny VLA (``common/models/tiny_vla/modeling.py``) and OpenVLA-OFT
(``common/models/openvla_oft/modeling.py``). A model call sees one observation per env and emits a
chunk of C steps × D dims action tokens, each a bin among ``num_bins``, decoded in parallel
(one forward pass gives C·D categorical distributions, as OpenVLA-OFT does).

Observation batch (:class:`ObsBatch`), B envs, V cameras:
  images       uint8   [B, V, H, W, 3]
  proprio      float32 [B, P]
  instructions list[str] of length B

Tokens are bin indices ``int64 [B, K]`` with K = C·D; log-probs are of the *tempered*
distribution softmax(logits / T). ``temperature == 0`` means greedy (argmax, log-prob of the
argmax under T = 1): :func:`logprob_temperature` is that rule, for every policy and the learner.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch


def logprob_temperature(temperature: float) -> float:
    """The T of softmax(logits / T) that log-probs are taken at: ``temperature`` itself, or 1
    for ``temperature == 0`` (greedy: the argmax is scored under the untempered policy)."""
    return temperature if temperature > 0 else 1.0


@dataclass
class ObsBatch:
    images: np.ndarray          # uint8 [B, V, H, W, 3]
    proprio: np.ndarray         # float32 [B, P]
    instructions: list[str]

    def __len__(self) -> int:
        return len(self.instructions)


@runtime_checkable
class Policy(Protocol):
    chunk_size: int   # C
    action_dim: int   # D
    num_bins: int

    def sample(self, obs: ObsBatch, temperature: float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (tokens int64 [B, K], log_probs float32 [B, K]); no grad. T == 0: greedy."""

    def log_probs(self, obs: ObsBatch, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        """tokens int64 [B, K] -> log-probs float32 [B, K] of softmax(logits / T), with grad."""

    def tokens_to_actions(self, tokens: np.ndarray) -> np.ndarray:
        """int [B, K] -> continuous env actions float32 [B, C, D] (un-normalised)."""

    def save_pretrained(self, path: str) -> None: ...
