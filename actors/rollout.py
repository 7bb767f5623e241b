"""Vectorised, batched rollouts of a policy over E env workers (training and evaluation).

In: :class:`EpisodeRequest` s (task_id, init_state_id, group_id), a :class:`Policy`, a
sampling temperature (0 = greedy). Out: one :class:`Episode` per request, in request order.

Each decision step makes ONE policy forward pass for all envs that have an episode running,
then every env executes its chunk of C actions, rendering only on the chunk's last step
(the policy sees an observation every C control steps). An env whose episode ended (success,
or step limit) stops stepping and takes the next pending request, if any. Reward: success
reported by the env before its step limit.

Used by :class:`actors.actor.Actor` (groups at temperature T) and ``pushcut eval``.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from actors.env_workers import ChunkResult, InProcessWorker
from actors.envs.base import TaskSpec
from common.policy import ObsBatch, Policy


@dataclass
class EpisodeRequest:
    task_id: str
    init_state_id: int
    group_id: str
    record_video: bool = False


@dataclass
class Episode:
    """One finished episode; T decisions, K = C·D tokens per decision."""
    request: EpisodeRequest
    instruction: str
    success: bool
    length: int                 # control steps executed; T == ceil(length / C)
    images: np.ndarray          # uint8 [T, V, H, W, 3], the observation at each decision
    proprio: np.ndarray         # float32 [T, P]
    actions: np.ndarray         # float32 [T, C, D]
    tokens: np.ndarray          # int64 [T, K]
    log_probs: np.ndarray       # float32 [T, K], behaviour log-probs at the temperature
    valid_mask: np.ndarray      # bool [T, K]: the token's step was executed
    frames: list[np.ndarray] = field(default_factory=list)   # agentview per step, if recorded
    timings: dict[str, float] = field(default_factory=dict)  # env_s, inference_s


def valid_mask_for(steps: Sequence[int], chunk_size: int, action_dim: int) -> np.ndarray:
    """Steps executed per decision, ints [T] -> bool [T, C*D] (C-major tokens: token k is
    step k // D)."""
    executed = np.arange(chunk_size)[None, :] < np.asarray(steps)[:, None]    # [T, C]
    return np.repeat(executed, action_dim, axis=1)


class _Slot:
    """An episode in progress on one worker."""

    def __init__(self, index: int, request: EpisodeRequest, spec: TaskSpec):
        self.index, self.request, self.spec = index, request, spec
        self.obs: dict[str, np.ndarray] | None = None
        self.images: list[np.ndarray] = []
        self.proprio: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.tokens: list[np.ndarray] = []
        self.log_probs: list[np.ndarray] = []
        self.steps: list[int] = []
        self.frames: list[np.ndarray] = []
        self.env_s = self.inference_s = 0.0
        self.success = False

    @property
    def length(self) -> int:
        return sum(self.steps)

    def add_chunk(self, res: ChunkResult) -> None:
        self.steps.append(res.steps)
        self.frames.extend(res.frames)
        self.env_s += res.env_s
        self.success = res.success
        self.obs = res.obs

    def finish(self, chunk_size: int, action_dim: int) -> Episode:
        return Episode(
            request=self.request, instruction=self.spec.instruction, success=self.success,
            length=self.length, images=np.stack(self.images), proprio=np.stack(self.proprio),
            actions=np.stack(self.actions).astype(np.float32),
            tokens=np.stack(self.tokens).astype(np.int64),
            log_probs=np.stack(self.log_probs).astype(np.float32),
            valid_mask=valid_mask_for(self.steps, chunk_size, action_dim),
            frames=self.frames,
            timings={"env_s": self.env_s, "inference_s": self.inference_s})


def as_worker(env):
    """A TaskEnv or an already-asynchronous worker -> something with start_*/result()."""
    return env if hasattr(env, "start_chunk") else InProcessWorker(env)


class VectorRollout:
    """Runs episodes on ``envs`` (TaskEnvs, or workers from :mod:`actors.env_workers`)."""

    def __init__(self, envs: Sequence, policy: Policy):
        if not envs:
            raise ValueError("VectorRollout needs at least one env")
        self.workers = [as_worker(e) for e in envs]
        self.policy = policy
        self.specs: dict[str, TaskSpec] = {t.task_id: t for t in self.workers[0].tasks()}
        self.env_steps = 0    # every control step executed, dropped episodes included

    def run(self, requests: Sequence[EpisodeRequest], temperature: float,
            generator: torch.Generator | None = None,
            should_stop: Callable[[], bool] | None = None) -> list[Episode]:
        """Episodes for ``requests`` in request order. When ``should_stop()`` turns true the
        episodes still running are dropped and only the finished ones are returned."""
        for r in requests:
            if r.task_id not in self.specs:
                raise ValueError(f"unknown task_id {r.task_id!r}; the env has "
                                 f"{sorted(self.specs)[:8]}...")
        pending = deque(enumerate(requests))
        slots: list[_Slot | None] = [None] * len(self.workers)
        done: dict[int, Episode] = {}
        while not (should_stop and should_stop()):
            self._start_episodes(slots, pending)
            active = [i for i, s in enumerate(slots) if s is not None]
            if not active:
                break
            self._decide_and_step(slots, active, temperature, generator)
            for i in active:
                slot = slots[i]
                if slot.obs is None:   # episode over
                    done[slot.index] = slot.finish(self.policy.chunk_size, self.policy.action_dim)
                    slots[i] = None
        return [done[i] for i in sorted(done)]

    def _start_episodes(self, slots: list[_Slot | None], pending: deque) -> None:
        """Reset every idle worker onto the next pending request (resets run in parallel)."""
        started = []
        for i, slot in enumerate(slots):
            if slot is None and pending:
                index, req = pending.popleft()
                slots[i] = _Slot(index, req, self.specs[req.task_id])
                self.workers[i].start_reset(req.task_id, req.init_state_id)
                started.append(i)
        for i in started:
            obs, env_s = self.workers[i].result()
            slots[i].obs, slots[i].env_s = obs, env_s
            if slots[i].request.record_video:
                slots[i].frames.append(obs["images"][0])

    def _decide_and_step(self, slots: list, active: list[int], temperature: float,
                         generator: torch.Generator | None) -> None:
        """One batched forward pass for ``active`` workers, then one chunk on each."""
        batch = ObsBatch(
            images=np.stack([slots[i].obs["images"] for i in active]),
            proprio=np.stack([slots[i].obs["proprio"] for i in active]).astype(np.float32),
            instructions=[slots[i].spec.instruction for i in active])
        t0 = time.perf_counter()
        if hasattr(self.policy, "select_envs"):   # privileged policies (the scripted expert)
            self.policy.select_envs(active)
        tokens, log_probs = self.policy.sample(batch, temperature, generator)
        tokens = tokens.detach().cpu().numpy()
        log_probs = log_probs.detach().float().cpu().numpy()
        actions = np.asarray(self.policy.tokens_to_actions(tokens), dtype=np.float32)
        share = (time.perf_counter() - t0) / len(active)
        for j, i in enumerate(active):
            slot = slots[i]
            slot.images.append(batch.images[j])
            slot.proprio.append(batch.proprio[j])
            slot.actions.append(actions[j])
            slot.tokens.append(tokens[j])
            slot.log_probs.append(log_probs[j])
            slot.inference_s += share
            steps_left = slot.spec.max_steps - slot.length
            self.workers[i].start_chunk(actions[j], steps_left, slot.request.record_video)
        for i in active:
            res = self.workers[i].result()
            slots[i].add_chunk(res)
            self.env_steps += res.steps

