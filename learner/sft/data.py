"""Demonstrations -> supervised examples for SFT: one example per decision.

In: expert :class:`~common.wire.trajectory.Trajectory` records (``pushcut demos``; one
observation every S env steps, actions float32 [T, S, D], valid_mask [T, S*D]). Out: flat
arrays over all observations, each paired with the chunk of the C actions that follow it
(zero-padded and masked past the episode's end), the action tokenizer and proprio
statistics fitted on them, target tokens, the image-shift augmentation and the masked
cross-entropy. Pure functions; the
training loop and its files are in :mod:`learner.sft.train`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from common.models.policy import ObsBatch
from common.models.action_tokenizer import ActionTokenizer
from common.wire.trajectory import Trajectory

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


def rechunk(traj: Trajectory, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A record observed every S steps -> (actions float32 [T, C, D], valid bool [T, C*D]):
    for each of its T observations, the C executed actions from there on (zeros, invalid,
    past the episode's end). C = S gives back the record's own chunks."""
    S, D, C = traj.chunk_size, traj.action_dim, chunk_size
    steps = np.zeros((traj.num_decisions * S + C, D), np.float32)
    steps[:traj.length] = traj.actions.reshape(-1, D)[:traj.length]
    idx = np.arange(traj.num_decisions)[:, None] * S + np.arange(C)          # [T, C]
    valid = np.repeat(idx < traj.length, D, axis=1)
    return steps[idx], valid


def examples_from_trajectories(trajectories: Iterable[Trajectory],
                               chunk_size: int | None = None) -> SftExamples:
    """Successful demonstrations -> SftExamples with action chunks of ``chunk_size`` steps
    (None: each record's own chunks); ValueError if there are none or their shapes disagree
    (naming the record)."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    keep: list[Trajectory] = []
    skipped = 0
    for traj in trajectories:
        if not traj.success:
            skipped += 1
            continue
        if keep:
            ref = keep[0]
            for name in ("images", "proprio"):
                a, b = getattr(traj, name).shape[1:], getattr(ref, name).shape[1:]
                if a != b:
                    raise ValueError(f"demo {traj.trajectory_id}: {name} per decision has shape "
                                     f"{a}, demo {ref.trajectory_id} has {b}")
            if traj.action_dim != ref.action_dim or (
                    chunk_size is None and traj.chunk_size != ref.chunk_size):
                raise ValueError(f"demo {traj.trajectory_id}: actions per decision have shape "
                                 f"{traj.actions.shape[1:]}, demo {ref.trajectory_id} has "
                                 f"{ref.actions.shape[1:]}")
        keep.append(traj)
    if not keep:
        raise ValueError(f"no successful demonstrations ({skipped} unsuccessful ones)")
    chunks = [rechunk(t, chunk_size or t.chunk_size) for t in keep]
    return SftExamples(
        images=np.concatenate([t.images for t in keep]),
        proprio=np.concatenate([t.proprio for t in keep]).astype(np.float32),
        actions=np.concatenate([c[0] for c in chunks]),
        valid=np.concatenate([c[1] for c in chunks]),
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


def soft_targets(targets: torch.Tensor, num_bins: int, sigma: float) -> torch.Tensor:
    """int64 [...] bins -> float [..., num_bins]: a gaussian of ``sigma`` bins around each
    target, renormalised over the bins (HL-Gauss, Imani & White 2018)."""
    bins = torch.arange(num_bins, dtype=torch.float32, device=targets.device)
    return torch.softmax(-(bins - targets.unsqueeze(-1).float()) ** 2 / (2 * sigma ** 2), dim=-1)


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
             sigma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """logits float [B, K, bins], targets int64 [B, K], valid bool [B, K] -> (mean
    cross-entropy over valid tokens, token accuracy over valid tokens, no grad).

    ``sigma`` > 0: the target is a gaussian over neighbouring bins rather than one bin.
    Bins are ordered values of a continuous action, so a prediction one bin off is nearly
    right; one-hot targets treat it as wrong as any other, which makes learning precise
    actions slow (and pulls the argmax towards the saturated ends, whose one bin collects
    what elsewhere spreads over many)."""
    if not valid.any():
        raise ValueError("sft_loss: batch has no valid tokens")
    flat = logits.flatten(0, 1)
    if sigma > 0:
        q = soft_targets(targets.flatten(), logits.shape[-1], sigma)
        ce = -(q * torch.log_softmax(flat, dim=-1)).sum(-1)
    else:
        ce = F.cross_entropy(flat, targets.flatten(), reduction="none")
    mask = valid.flatten().float()
    loss = (ce * mask).sum() / mask.sum()
    with torch.no_grad():
        hit = (logits.argmax(-1) == targets).flatten().float()
        acc = (hit * mask).sum() / mask.sum()
    return loss, acc
