"""Vectorised, batched rollouts of a policy over E env workers (training and evaluation).

In: :class:`EpisodeRequest` s (task_id, init_state_id, group_id), a :class:`Policy`, a
sampling temperature (0 = greedy). Out: one :class:`Episode` per request, in request order.

Each decision step makes ONE policy forward pass for all envs that have an episode running,
then every env executes its chunk of C actions, rendering only on the chunk's last step
(the policy sees an observation every C control steps). An env whose episode ended (success,
or step limit) stops stepping and takes the next pending request, if any. Reward: success
reported by the env before its step limit.

A subprocess env worker that dies or stops answering (EnvWorkerError) is restarted in its
slot and the episode it was running is discarded and re-run from its reset, once: members of
a group are independent samples of the same (task, init state, policy), so a re-run member is
as valid as the lost one. If the re-run is lost too, the whole group is dropped (its other
members are cancelled and not returned), so no group is ever returned incomplete by a crash.

Double buffering (``VectorRollout(..., double_buffer=True)``, Sample Factory's scheme): the
workers are split into two halves that take turns, so that one half steps its chunks in the
workers' own processes while the policy runs the other half's forward pass. Only subprocess
workers step in the background (:func:`steps_in_background`); the actor turns it on for them.

Used by :class:`actors.actor.Actor` (groups at temperature T) and ``pushcut eval``.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from actors.env_workers import ChunkResult, EnvWorkerError, InProcessWorker
from actors.envs.base import TaskSpec
from common.models.policy import ObsBatch, Policy

log = logging.getLogger(__name__)


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
    info: dict | None = None    # the env's episode_info() at the end (tabletop: fingerprint)


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
        self.info: dict | None = None

    @property
    def length(self) -> int:
        return sum(self.steps)

    def add_chunk(self, res: ChunkResult) -> None:
        self.steps.append(res.steps)
        self.frames.extend(res.frames)
        self.env_s += res.env_s
        self.success = res.success
        self.obs = res.obs
        self.info = res.info

    def finish(self, chunk_size: int, action_dim: int) -> Episode:
        return Episode(
            request=self.request, instruction=self.spec.instruction, success=self.success,
            length=self.length, images=np.stack(self.images), proprio=np.stack(self.proprio),
            actions=np.stack(self.actions).astype(np.float32),
            tokens=np.stack(self.tokens).astype(np.int64),
            log_probs=np.stack(self.log_probs).astype(np.float32),
            valid_mask=valid_mask_for(self.steps, chunk_size, action_dim),
            frames=self.frames,
            timings={"env_s": self.env_s, "inference_s": self.inference_s}, info=self.info)


def as_worker(env):
    """A TaskEnv or an already-asynchronous worker -> something with start_*/result()."""
    return env if hasattr(env, "start_chunk") else InProcessWorker(env)


class _RunState:
    """The bookkeeping of one :meth:`VectorRollout.run`: requests not started yet (index,
    request), the episode running on each worker (or None), finished episodes by request
    index, and how often each request was lost to a crash."""

    def __init__(self, requests: Sequence[EpisodeRequest], num_workers: int):
        self.pending: deque = deque(enumerate(requests))
        self.slots: list[_Slot | None] = [None] * num_workers
        self.done: dict[int, Episode] = {}
        self.lost: Counter = Counter()


def steps_in_background(workers: Sequence) -> bool:
    """Whether ``workers`` step in processes of their own (subprocess env workers), the only
    case where double buffering (:class:`VectorRollout`) can hide the policy's forward pass:
    in-process workers compute inside ``start_*``. Needs at least two workers."""
    return len(workers) >= 2 and all(getattr(w, "steps_in_background", False)
                                     for w in workers)


class VectorRollout:
    """Runs episodes on ``envs`` (TaskEnvs, or workers from :mod:`actors.env_workers`).

    ``double_buffer``: split the workers into two halves that take turns, Sample Factory
    style: while one half steps its chunks (in the workers' own processes), the policy
    infers for the other half, one batched forward pass per half. Every guarantee of the
    rollout holds either way; it pays off only with subprocess workers
    (:func:`steps_in_background`), at the price of two smaller forward passes per decision
    step. Off: one forward pass for all running envs, then every env steps."""

    def __init__(self, envs: Sequence, policy: Policy, double_buffer: bool = False):
        if not envs:
            raise ValueError("VectorRollout needs at least one env")
        self.workers = [as_worker(e) for e in envs]
        self.policy = policy
        self.double_buffer = double_buffer
        self.specs: dict[str, TaskSpec] = {t.task_id: t for t in self.workers[0].tasks()}
        self.env_steps = 0    # every control step executed, dropped episodes included
        self.worker_restarts = 0        # env workers replaced after dying or hanging
        self.rerun_episodes = 0         # episodes lost to a worker crash and re-queued
        self.dropped_groups = 0         # groups dropped after a member was lost twice
        self.max_reruns = 1             # re-runs of one request before its group is dropped
        self.max_crashes_in_a_row = 3 * len(self.workers)   # then the env itself is broken
        self._crashes_in_a_row = 0

    def halves(self) -> list[list[int]]:
        """The groups of worker indices that take turns: all of them, or (double buffering,
        two workers or more) the first ceil(E/2) and the rest."""
        n = len(self.workers)
        if not self.double_buffer or n < 2:
            return [list(range(n))]
        mid = (n + 1) // 2
        return [list(range(mid)), list(range(mid, n))]

    def run(self, requests: Sequence[EpisodeRequest], temperature: float,
            generator: torch.Generator | None = None,
            should_stop: Callable[[], bool] | None = None) -> list[Episode]:
        """Episodes for ``requests`` in request order. When ``should_stop()`` turns true the
        episodes still running are dropped and only the finished ones are returned.

        Each turn of a half: read the chunks it started on its previous turn, refill its idle
        workers from the pending requests, one forward pass for its running envs, start their
        chunks. With one half this is the plain loop; with two, a half's chunks step while
        the other half's forward pass runs."""
        for r in requests:
            if r.task_id not in self.specs:
                raise ValueError(f"unknown task_id {r.task_id!r}; the env has "
                                 f"{sorted(self.specs)[:8]}...")
        st = _RunState(requests, len(self.workers))
        halves = self.halves()
        in_flight: list[list[int]] = [[] for _ in halves]
        h = 0
        while True:
            self._collect(in_flight[h], st)
            in_flight[h] = []
            if should_stop and should_stop():
                for k in range(len(halves)):     # no worker is left with an unread reply
                    self._collect(in_flight[k], st)
                break
            self._recover(self._start_episodes(st, halves[h]), st)
            active = [i for i in halves[h] if st.slots[i] is not None]
            if active:
                in_flight[h] = self._decide(st, active, temperature, generator)
            if not st.pending and not any(in_flight):
                break
            h = (h + 1) % len(halves)
        return [st.done[i] for i in sorted(st.done)]

    def _recover(self, crashed: dict[int, EnvWorkerError], st: _RunState) -> None:
        """Restart each crashed worker; re-queue its episode, or drop the episode's group."""
        for i, err in crashed.items():
            worker, slot = self.workers[i], st.slots[i]
            if not hasattr(worker, "restart"):
                raise err
            self._crashes_in_a_row += 1
            if self._crashes_in_a_row > self.max_crashes_in_a_row:
                raise EnvWorkerError(f"{self._crashes_in_a_row} env worker crashes in a row "
                                     f"without a finished episode; last: {err}") from err
            st.slots[i] = None
            worker.restart()
            self.worker_restarts += 1
            if slot is None:       # its group was dropped by an earlier crash
                continue
            req = slot.request
            st.lost[slot.index] += 1
            if st.lost[slot.index] <= self.max_reruns:
                st.pending.appendleft((slot.index, req))
                self.rerun_episodes += 1
                log.warning("env worker %d failed (%s); restarted; episode %d of group %s "
                            "discarded and re-run", i, err, slot.index, req.group_id)
                continue
            self.dropped_groups += 1
            log.warning("env worker %d failed (%s); restarted; group %s lost a member twice "
                        "and is dropped", i, err, req.group_id)
            self._drop_group(req.group_id, st)

    @staticmethod
    def _drop_group(group_id: str, st: _RunState) -> None:
        """Forget every member of ``group_id``: pending, running, done. A running member's
        worker may still be stepping: its reply is read and discarded (:meth:`_collect`)."""
        for i, s in enumerate(st.slots):
            if s is not None and s.request.group_id == group_id:
                st.slots[i] = None
        kept = [(k, r) for k, r in st.pending if r.group_id != group_id]
        st.pending.clear()
        st.pending.extend(kept)
        for k in [k for k, ep in st.done.items() if ep.request.group_id == group_id]:
            del st.done[k]

    def _start_episodes(self, st: _RunState, indices: list[int]) -> dict[int, EnvWorkerError]:
        """Reset every idle worker of ``indices`` onto the next pending request (resets run
        in parallel). -> the workers that failed, with their errors."""
        started, crashed = [], {}
        for i in indices:
            if st.slots[i] is None and st.pending:
                index, req = st.pending.popleft()
                st.slots[i] = _Slot(index, req, self.specs[req.task_id])
                try:
                    self.workers[i].start_reset(req.task_id, req.init_state_id)
                    started.append(i)
                except EnvWorkerError as err:
                    crashed[i] = err
        for i in started:
            try:
                obs, env_s = self.workers[i].result()
            except EnvWorkerError as err:
                crashed[i] = err
                continue
            st.slots[i].obs, st.slots[i].env_s = obs, env_s
            if st.slots[i].request.record_video:
                st.slots[i].frames.append(obs["images"][0])
        return crashed

    def _decide(self, st: _RunState, active: list[int], temperature: float,
                generator: torch.Generator | None) -> list[int]:
        """One batched forward pass for ``active`` workers, then start one chunk on each
        (workers that fail to start are recovered). -> the workers now stepping."""
        slots = st.slots
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
        started, crashed = [], {}
        for j, i in enumerate(active):
            slot = slots[i]
            slot.images.append(batch.images[j])
            slot.proprio.append(batch.proprio[j])
            slot.actions.append(actions[j])
            slot.tokens.append(tokens[j])
            slot.log_probs.append(log_probs[j])
            slot.inference_s += share
            steps_left = slot.spec.max_steps - slot.length
            try:
                self.workers[i].start_chunk(actions[j], steps_left, slot.request.record_video)
                started.append(i)
            except EnvWorkerError as err:
                crashed[i] = err
        self._recover(crashed, st)
        return started

    def _collect(self, started: list[int], st: _RunState) -> None:
        """Read the chunk results of ``started`` workers; finished episodes go to ``done``;
        failed workers are recovered. A worker whose group was dropped while it stepped has
        its reply read and discarded (its steps still count in ``env_steps``)."""
        crashed: dict[int, EnvWorkerError] = {}
        for i in started:
            try:
                res = self.workers[i].result()
            except EnvWorkerError as err:
                crashed[i] = err
                continue
            self.env_steps += res.steps
            slot = st.slots[i]
            if slot is None:
                continue
            slot.add_chunk(res)
            if slot.obs is None:                         # episode over
                st.done[slot.index] = slot.finish(self.policy.chunk_size,
                                                  self.policy.action_dim)
                st.slots[i] = None
                self._crashes_in_a_row = 0
        self._recover(crashed, st)
