"""Collation: complete GRPO groups of :class:`~common.wire.trajectory.Trajectory` -> one
:class:`Batch` of decisions, and its split over ranks and micro-batches.

In: ``list[list[Trajectory]]`` (one inner list per group, every member present). Out: a
:class:`Batch` whose rows are decisions (one model call each); every row carries its
trajectory's index and group advantage, so the loss can take the token-mean per
trajectory (learner/loss.py). Splits are always by whole trajectories.

Also the rank-to-rank transport of a batch: rank 0 encodes the groups with the wire codec
(msgpack, no pickle) and the other ranks decode them (:func:`pack_groups`,
:func:`unpack_groups`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import msgpack
import numpy as np
import torch

from common.models.policy import ObsBatch
from common.wire.declaration import TEMPERATURE_TOLERANCE
from common.wire.trajectory import Trajectory, decode, encode
from learner.loss import group_advantages


@dataclass
class Batch:
    """R decision rows of N trajectories (V cameras, K = C·D tokens per decision)."""
    images: np.ndarray                  # uint8 [R, V, H, W, 3]
    proprio: np.ndarray                 # float32 [R, P]
    instructions: list[str]             # R
    tokens: torch.Tensor                # int64 [R, K]
    behaviour_log_probs: torch.Tensor   # float32 [R, K]
    valid_mask: torch.Tensor            # bool [R, K]
    advantages: torch.Tensor            # float32 [R], the row's trajectory advantage
    traj_index: torch.Tensor            # int64 [R], 0..N-1
    policy_versions: np.ndarray         # int64 [N]
    rewards: np.ndarray                 # float32 [N], 1.0 = success
    trajectory_ids: list[str]           # N
    temperature: float

    @property
    def num_trajectories(self) -> int:
        return len(self.trajectory_ids)

    @property
    def num_rows(self) -> int:
        return int(self.traj_index.shape[0])

    def obs(self) -> ObsBatch:
        return ObsBatch(images=self.images, proprio=self.proprio,
                        instructions=self.instructions)

    def select(self, trajectories: np.ndarray | list[int]) -> "Batch":
        """The sub-batch of the given trajectory indices (rows kept in order, re-indexed
        0..len−1)."""
        trajectories = np.asarray(trajectories, dtype=np.int64)
        remap = np.full(self.num_trajectories, -1, dtype=np.int64)
        remap[trajectories] = np.arange(len(trajectories))
        row_traj = self.traj_index.numpy()
        rows = np.nonzero(remap[row_traj] >= 0)[0]
        rows_t = torch.from_numpy(rows)
        return Batch(
            images=self.images[rows], proprio=self.proprio[rows],
            instructions=[self.instructions[r] for r in rows],
            tokens=self.tokens[rows_t], behaviour_log_probs=self.behaviour_log_probs[rows_t],
            valid_mask=self.valid_mask[rows_t], advantages=self.advantages[rows_t],
            traj_index=torch.from_numpy(remap[row_traj[rows]]),
            policy_versions=self.policy_versions[trajectories],
            rewards=self.rewards[trajectories],
            trajectory_ids=[self.trajectory_ids[t] for t in trajectories],
            temperature=self.temperature)


def _check_group(group: list[Trajectory]) -> None:
    first = group[0]
    if len(group) != first.group_size:
        raise ValueError(f"group {first.group_id}: {len(group)} members, group_size "
                         f"{first.group_size}; GRPO needs complete groups")
    for t in group:
        if t.group_id != first.group_id:
            raise ValueError(f"group {first.group_id} holds trajectory {t.trajectory_id} "
                             f"of group {t.group_id}")
        if t.is_expert:
            raise ValueError(f"trajectory {t.trajectory_id} is an expert demonstration "
                             "(policy_version -1, no behaviour log-probs)")


def collate(groups: list[list[Trajectory]], adv_eps: float = 1e-6) -> Batch:
    """Complete groups -> a Batch. Rewards are the success flags (1/0); advantages are
    group-normalised (learner.loss.group_advantages). All trajectories must share one
    sampling temperature (the loss divides logits by it), up to twice the relative tolerance
    the learner admits each record within (common/wire/declaration.py); the batch takes the
    first's."""
    if not groups or not all(groups):
        raise ValueError("collate needs at least one non-empty group")
    for group in groups:
        _check_group(group)
    trajs = [t for group in groups for t in group]
    rewards = torch.tensor([float(t.success) for t in trajs])
    group_index = torch.tensor([g for g, group in enumerate(groups) for _ in group])
    return stack(trajs, group_advantages(rewards, group_index, adv_eps))


def stack(trajs: list[Trajectory], advantages: torch.Tensor) -> Batch:
    """Trajectories with one advantage each (float [N]) -> a Batch (no group rule: the
    success replay stacks single trajectories of many groups). One sampling temperature,
    as :func:`collate` says."""
    if not trajs:
        raise ValueError("a batch needs at least one trajectory")
    temperatures = sorted({float(t.temperature) for t in trajs})
    if temperatures[-1] - temperatures[0] > 2 * TEMPERATURE_TOLERANCE * temperatures[-1]:
        raise ValueError(f"trajectories sampled at several temperatures {temperatures}; "
                         "a batch needs one")
    rewards = torch.tensor([float(t.success) for t in trajs])
    rows_per_traj = torch.tensor([t.num_decisions for t in trajs])
    return Batch(
        images=np.concatenate([t.images for t in trajs]),
        proprio=np.concatenate([t.proprio for t in trajs]).astype(np.float32, copy=False),
        instructions=[t.instruction for t in trajs for _ in range(t.num_decisions)],
        tokens=torch.from_numpy(np.concatenate([t.action_tokens for t in trajs]).astype(np.int64)),
        behaviour_log_probs=torch.from_numpy(
            np.concatenate([t.behaviour_log_probs for t in trajs]).astype(np.float32)),
        valid_mask=torch.from_numpy(np.concatenate([t.valid_mask for t in trajs])),
        advantages=advantages.float().repeat_interleave(rows_per_traj),
        traj_index=torch.arange(len(trajs)).repeat_interleave(rows_per_traj),
        policy_versions=np.array([t.policy_version for t in trajs], dtype=np.int64),
        rewards=rewards.numpy().astype(np.float32),
        trajectory_ids=[t.trajectory_id for t in trajs],
        temperature=float(trajs[0].temperature))


def rank_trajectories(num_trajectories: int, rank: int, world_size: int,
                      allow_empty: bool = False) -> np.ndarray:
    """The trajectory indices rank ``rank`` trains on: contiguous, sizes differ by <= 1.
    ``allow_empty``: fewer trajectories than ranks leave some ranks none (the replayed
    successes; such a rank runs a zero-weight pass) instead of being refused."""
    if num_trajectories < world_size and not allow_empty:
        raise ValueError(f"{num_trajectories} trajectories cannot be split over "
                         f"{world_size} ranks")
    return np.array_split(np.arange(num_trajectories), world_size)[rank]


def num_micro_batches(num_trajectories: int, world_size: int, micro_batch_size: int) -> int:
    """Micro-batches per rank: the same on every rank (FSDP's collectives run in lock-step),
    enough that the largest rank shard has at most ``micro_batch_size`` per micro-batch."""
    largest = math.ceil(num_trajectories / world_size)
    return max(1, math.ceil(largest / max(1, micro_batch_size)))


def step_micro_batches(num_trajectories: int, world_size: int, micro_batch_size: int,
                       mini_batches: int) -> int:
    """Micro-batches per rank when an update takes ``mini_batches`` optimiser steps: the
    count of :func:`num_micro_batches`, rounded up to whole micro-batches per step."""
    count = num_micro_batches(num_trajectories, world_size, micro_batch_size)
    return math.ceil(count / mini_batches) * mini_batches


def micro_batches(batch: Batch, count: int) -> list[Batch | None]:
    """Split by whole trajectories into ``count`` near-equal parts; ``None`` for a part with
    no trajectory (a rank with fewer trajectories than parts still has to take part in
    the forward/backward collectives; the caller runs a zero-weight pass)."""
    parts = np.array_split(np.arange(batch.num_trajectories), count)
    return [batch.select(p) if len(p) else None for p in parts]


def pack_groups(groups: list[list[Trajectory]]) -> bytes:
    """Groups -> bytes for a rank-to-rank broadcast: a msgpack list of lists of wire records."""
    return msgpack.packb([[encode(t) for t in g] for g in groups], use_bin_type=True)


def unpack_groups(raw: bytes) -> list[list[Trajectory]]:
    """Inverse of :func:`pack_groups`; every record is validated again by the codec."""
    return [[decode(t, max_bytes=max(len(t), 1)) for t in g]
            for g in msgpack.unpackb(raw, raw=False)]
