"""Demonstrations -> supervised examples for SFT: one example per decision.

In: expert :class:`~common.trajectory.Trajectory` records (``pushcut demos``; actions
float32 [T, C, D], one observation per decision, valid_mask [T, C*D]). Out: flat arrays
over all decisions, the action tokenizer and proprio statistics fitted on them, target
tokens, the image-shift augmentation and the masked cross-entropy. Pure functions; the
training loop and its files are in :mod:`learner.sft`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from common.policy import ObsBatch
from common.tokenizer import ActionTokenizer
from common.trajectory import Trajectory

GRIPPER_DIM = 6   # in the 7-dim (dx, dy, dz, droll, dpitch, dyaw, gripper) action


@dataclass
class SftExamples:
    """N decisions: images uint8 [N, V, H, W, 3], proprio float32 [N, P], actions float32
    [N, C, D], valid bool [N, C*D], and the instruction and task_id of each."""
    images: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    valid: np.ndarray
    instructions: list[str]
    task_ids: list[str]
    skipped: int = 0          # unsuccessful demonstrations left out

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def chunk_size(self) -> int:
        return int(self.actions.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[2])

    def obs(self, idx: np.ndarray, images: np.ndarray | None = None) -> ObsBatch:
        """The observations of examples ``idx`` (optionally with replaced images)."""
        return ObsBatch(images=self.images[idx] if images is None else images,
                        proprio=self.proprio[idx],
                        instructions=[self.instructions[i] for i in idx])


def examples_from_trajectories(trajectories: Iterable[Trajectory]) -> SftExamples:
    """Successful demonstrations -> SftExamples; ValueError if there are none or their
    shapes disagree (naming the record)."""
    keep: list[Trajectory] = []
    skipped = 0
    for traj in trajectories:
        if not traj.success:
            skipped += 1
            continue
        if keep:
            ref = keep[0]
            for name in ("images", "proprio", "actions"):
                a, b = getattr(traj, name).shape[1:], getattr(ref, name).shape[1:]
                if a != b:
                    raise ValueError(f"demo {traj.trajectory_id}: {name} per decision has shape "
                                     f"{a}, demo {ref.trajectory_id} has {b}")
        keep.append(traj)
    if not keep:
        raise ValueError(f"no successful demonstrations ({skipped} unsuccessful ones)")
    return SftExamples(
        images=np.concatenate([t.images for t in keep]),
        proprio=np.concatenate([t.proprio for t in keep]).astype(np.float32),
        actions=np.concatenate([t.actions for t in keep]).astype(np.float32),
        valid=np.concatenate([t.valid_mask for t in keep]).astype(bool),
        instructions=[t.instruction for t in keep for _ in range(t.num_decisions)],
        task_ids=[t.task_id for t in keep for _ in range(t.num_decisions)],
        skipped=skipped)


def executed_actions(examples: SftExamples) -> np.ndarray:
    """The actions of executed steps only, float32 [M, D] (padding steps excluded)."""
    D = examples.action_dim
    step_valid = examples.valid.reshape(len(examples), examples.chunk_size, D)[..., 0]
    return examples.actions[step_valid]


def fit_action_tokenizer(examples: SftExamples, num_bins: int = 256) -> ActionTokenizer:
    """Percentile statistics of the executed demo actions. A 7-dim action's gripper keeps
    its own [-1, 1] scale: demos hold it open or closed most of the time, so its
    percentiles can collapse onto one value."""
    D = examples.action_dim
    mask = [d != GRIPPER_DIM for d in range(D)] if D == 7 else None
    return ActionTokenizer.fit(executed_actions(examples), num_bins=num_bins, normalize_mask=mask)


def proprio_stats(examples: SftExamples) -> tuple[np.ndarray, np.ndarray]:
    """-> (mean, std) float64 [P] over all decisions."""
    p = examples.proprio.astype(np.float64)
    return p.mean(axis=0), p.std(axis=0)


def token_targets(tokenizer: ActionTokenizer, examples: SftExamples) -> np.ndarray:
    """-> int64 [N, C*D] target tokens (C-major)."""
    return tokenizer.encode_chunk(examples.actions)


def shift_images(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [B, V, H, W, 3] -> same shape, each image translated by up to ``max_shift``
    pixels in x and y (edge pixels repeated): the 1-demo regime overfits to exact pixels."""
    if max_shift <= 0:
        return images
    B, V, H, W, _ = images.shape
    s = max_shift
    padded = np.pad(images, ((0, 0), (0, 0), (s, s), (s, s), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * s + 1, size=(2, B, V))
    out = np.empty_like(images)
    for b in range(B):
        for v in range(V):
            out[b, v] = padded[b, v, dy[b, v]:dy[b, v] + H, dx[b, v]:dx[b, v] + W]
    return out


def sft_loss(logits: torch.Tensor, targets: torch.Tensor,
             valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits float [B, K, bins], targets int64 [B, K], valid bool [B, K] -> (mean
    cross-entropy over valid tokens, token accuracy over valid tokens, no grad)."""
    if not valid.any():
        raise ValueError("sft_loss: batch has no valid tokens")
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    mask = valid.flatten().float()
    loss = (ce * mask).sum() / mask.sum()
    with torch.no_grad():
        hit = (logits.argmax(-1) == targets).flatten().float()
        acc = (hit * mask).sum() / mask.sum()
    return loss, acc
