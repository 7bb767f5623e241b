"""The rollout actor's logic: schedule groups, roll them out, turn episodes into trajectory
records, send them, and swap weights only between groups.

In: a :class:`VectorRollout` (envs + policy), a :class:`TaskScheduler`, a ``send`` callable
(``TrajectorySender.send``, which blocks while the store is behind), optionally a
:class:`~common.transport.weights.WeightClient`. Out: :class:`~common.wire.trajectory.Trajectory` records,
complete groups only, each stamped with the ``policy_version`` it was generated with.

A round rolls out ``groups_per_round`` groups of ``group_size`` members that share
(task_id, init_state_id) and differ only in sampling at ``temperature``. Weights are swapped
before a round, never during one, so every trajectory of a group has the same version.
The process shell around this is :mod:`actors.actor_process` (``pushcut actor``).

Trajectory timings are each trajectory's share of the actor's wall time: ``env_s`` (its env's
stepping), ``inference_s`` (its share of the batched forward passes) and ``wait_s`` (its share
of the time the actor spent blocked on the sender or swapping weights before the round).
"""
from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from actors.rollout import Episode, EpisodeRequest, VectorRollout, steps_in_background
from actors.scheduler import TaskScheduler
from common.wire.trajectory import Trajectory

log = logging.getLogger(__name__)


def episode_to_trajectory(ep: Episode, *, actor_id: str, policy_version: int, group_size: int,
                          temperature: float, member: int, num_bins: int,
                          wait_s: float = 0.0) -> Trajectory:
    """One finished episode -> its wire record (tokens narrowed to int16); ``num_bins``: the
    policy's action bins per dimension, which the record declares."""
    if ep.tokens.size and (ep.tokens.min() < 0 or ep.tokens.max() > np.iinfo(np.int16).max):
        raise ValueError(f"action tokens outside int16: [{ep.tokens.min()}, {ep.tokens.max()}]")
    return Trajectory(
        trajectory_id=f"{ep.request.group_id}.{member}",
        group_id=ep.request.group_id, actor_id=actor_id, task_id=ep.request.task_id,
        instruction=ep.instruction, init_state_id=int(ep.request.init_state_id),
        policy_version=int(policy_version), group_size=int(group_size),
        success=bool(ep.success), length=int(ep.length), temperature=float(temperature),
        num_bins=int(num_bins), images=ep.images, proprio=ep.proprio, actions=ep.actions,
        action_tokens=ep.tokens.astype(np.int16), behaviour_log_probs=ep.log_probs,
        valid_mask=ep.valid_mask, created_at=time.time(),
        timings={"env_s": ep.timings.get("env_s", 0.0),
                 "inference_s": ep.timings.get("inference_s", 0.0), "wait_s": wait_s})


def double_buffer_for(actor_cfg, workers: list) -> bool:
    """Whether an actor's rollout should be double-buffered (see actors/rollout.py): when its
    env workers step in processes of their own (``actor.subprocess_envs=true``, LIBERO
    always) and ``actor.double_buffer`` (default true) allows it."""
    return bool(actor_cfg.double_buffer) and steps_in_background(workers)


@dataclass
class ActorStats:
    """Counters the process shell logs (read from another thread; ints and floats only)."""
    rounds: int = 0
    groups: int = 0
    episodes: int = 0
    successes: int = 0
    env_steps: int = 0
    dropped_episodes: int = 0      # unfinished groups at shutdown, or dropped after crashes
    worker_restarts: int = 0       # env workers restarted after dying or hanging
    rerun_episodes: int = 0        # episodes lost with a crashed worker and re-run
    swaps: int = 0
    wait_s: float = 0.0
    by_version: dict[int, int] = field(default_factory=lambda: defaultdict(int))


class Actor:
    """Generates complete groups with the current weights; see the module docstring."""

    def __init__(self, rollout: VectorRollout, scheduler: TaskScheduler, *, actor_id: str,
                 group_size: int, temperature: float, policy_version: int = 0,
                 groups_per_round: int | None = None, weight_client=None,
                 load_weights: Callable[[dict[str, torch.Tensor]], None] | None = None,
                 generator: torch.Generator | None = None):
        self.rollout = rollout
        self.scheduler = scheduler
        self.actor_id = actor_id
        self.group_size = group_size
        self.temperature = temperature
        self.policy_version = policy_version
        # as many whole groups as there are envs for, so one round keeps every env busy
        self.groups_per_round = groups_per_round or max(1, len(rollout.workers) // group_size)
        self.weight_client = weight_client
        self.load_weights = load_weights or rollout.policy.load_state_dict
        self.generator = generator
        self.stats = ActorStats()
        self._blocked_s = 0.0

    def swap_weights(self) -> bool:
        """Take the newest fetched weights, if any (call only between groups)."""
        if self.weight_client is None:
            return False
        got = self.weight_client.poll()
        if got is None:
            return False
        version, state_dict = got
        self.load_weights(state_dict)
        log.info("%s: policy_version %d -> %d", self.actor_id, self.policy_version, version)
        self.policy_version = version
        self.stats.swaps += 1
        return True

    def wait_for_learner(self, timeout_s: float,
                         should_stop: Callable[[], bool] | None = None) -> bool:
        """mode=sync: hold the next round while the learner is updating (paused) or a newer
        version than ours is announced but not yet swapped in. -> True when clear to go."""
        client = self.weight_client
        if client is None:
            return True
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        try:
            while not (should_stop and should_stop()):
                self.swap_weights()
                if not client.paused and client.announced_version <= self.policy_version:
                    return True
                if time.monotonic() >= deadline:
                    return False
                client.wait_update(min(0.5, max(0.0, deadline - time.monotonic())))
            return False
        finally:
            self._blocked_s += time.perf_counter() - t0

    def plan_round(self, max_groups: int | None = None) -> list[EpisodeRequest]:
        """Requests for the next round: group members share (task_id, init_state_id)."""
        n = self.groups_per_round if max_groups is None else min(self.groups_per_round, max_groups)
        requests = []
        for _ in range(n):
            task_id, init_state_id = self.scheduler.next()
            group_id = uuid.uuid4().hex
            requests += [EpisodeRequest(task_id, init_state_id, group_id)
                         for _ in range(self.group_size)]
        return requests

    def run_round(self, send: Callable[[Trajectory], None], max_groups: int | None = None,
                  should_stop: Callable[[], bool] | None = None) -> int:
        """Swap weights if a newer version is ready, roll out one round, send its complete
        groups. -> number of groups sent."""
        t0 = time.perf_counter()
        self.swap_weights()
        self._blocked_s += time.perf_counter() - t0
        version = self.policy_version
        requests = self.plan_round(max_groups)
        episodes = self.rollout.run(requests, self.temperature, self.generator, should_stop)
        groups = self._complete_groups(episodes)
        trajs = self._to_trajectories(groups, version)
        t0 = time.perf_counter()
        for traj in trajs:
            send(traj)
        self._blocked_s += time.perf_counter() - t0
        self._count(groups, version, dropped=len(requests) - len(trajs))
        return len(groups)

    def _complete_groups(self, episodes: list[Episode]) -> list[list[Episode]]:
        by_group: dict[str, list[Episode]] = defaultdict(list)
        for ep in episodes:
            by_group[ep.request.group_id].append(ep)
        return [eps for eps in by_group.values() if len(eps) == self.group_size]

    def _to_trajectories(self, groups: list[list[Episode]], version: int) -> list[Trajectory]:
        count = sum(len(g) for g in groups)
        wait_share = self._blocked_s / count if count else 0.0
        if count:
            self.stats.wait_s += self._blocked_s
            self._blocked_s = 0.0
        return [episode_to_trajectory(ep, actor_id=self.actor_id, policy_version=version,
                                      group_size=self.group_size, temperature=self.temperature,
                                      member=m, num_bins=self.rollout.policy.num_bins,
                                      wait_s=wait_share)
                for g in groups for m, ep in enumerate(g)]

    def _count(self, groups: list[list[Episode]], version: int, dropped: int) -> None:
        s = self.stats
        s.rounds += 1
        s.groups += len(groups)
        s.dropped_episodes += dropped
        s.worker_restarts = self.rollout.worker_restarts
        s.rerun_episodes = self.rollout.rerun_episodes
        for g in groups:
            self.scheduler.record(g[0].request.task_id, sum(ep.success for ep in g), len(g))
            s.episodes += len(g)
            s.successes += sum(ep.success for ep in g)
            s.env_steps += sum(ep.length for ep in g)
            s.by_version[version] += len(g)
