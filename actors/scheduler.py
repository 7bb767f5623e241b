"""Which (task_id, init_state_id) an actor's next group rolls out.

In: the env's tasks and their TRAINING init_state_ids (held-out ids never appear), optional
task weights, a seed. Out: an endless, deterministic sequence of (task_id, init_state_id).

Tasks are drawn at random, uniformly or in proportion to ``task_weights`` (keys are task_ids
or family names, e.g. ``{"long": 2.0}``; unnamed tasks weigh 1.0; a task_id key wins over its
family's). Within a task, init states come in a fresh shuffled order each pass, so every
training state is visited once before any repeats.

Adaptive (``window`` given, ``actor.adaptive_tasks``): each task's weight is further scaled
by the chance that a group of it lands inside the dynamic-sampling filter's window
(:func:`kept_probability` at the task's recent success, which :meth:`TaskScheduler.record`
tracks from the actor's own groups), floored at ``floor`` so that no task is abandoned. A
task nobody has tried counts as success 0.5, the most informative. Rollouts then go where
GRPO can learn instead of into groups the filter would drop.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Iterator, Mapping, Sequence

import numpy as np

from actors.envs.base import TaskSpec


def task_probabilities(tasks: Sequence[TaskSpec], task_weights: Mapping[str, float]
                       ) -> np.ndarray:
    """tasks [N], weights by task_id or family -> probabilities float64 [N] summing to 1."""
    known = {t.task_id for t in tasks} | {t.family for t in tasks}
    unknown = sorted(set(task_weights) - known)
    if unknown:
        raise ValueError(f"actor.task_weights names unknown tasks or families {unknown}; "
                         f"known: {sorted(known)[:12]}...")
    bad = {k: v for k, v in task_weights.items() if not (float(v) >= 0 and np.isfinite(v))}
    if bad:
        raise ValueError(f"actor.task_weights must be finite and >= 0, got {bad}")
    w = np.array([float(task_weights.get(t.task_id, task_weights.get(t.family, 1.0)))
                  for t in tasks])
    if w.sum() <= 0:
        raise ValueError("actor.task_weights gives every task weight 0")
    return w / w.sum()


def kept_probability(p: float, group_size: int, lo: float, hi: float) -> float:
    """Chance that a group of ``group_size`` episodes, each a success with chance ``p``, has
    its success rate inside [lo, hi] (the filter keeps it)."""
    g = group_size
    return sum(comb(g, k) * p ** k * (1 - p) ** (g - k) for k in range(g + 1)
               if lo <= k / g <= hi)


@dataclass(frozen=True)
class FilterWindow:
    """What the adaptive scheduler aims for: the learner's group size and success window."""
    group_size: int
    lo: float
    hi: float
    floor: float = 0.1     # least weight factor of a task (1 = adaptivity off)
    decay: float = 0.8     # weight of a task's older groups per new group of it


class TaskScheduler:
    """Deterministic for a given seed and recorded outcomes."""

    def __init__(self, tasks: Sequence[TaskSpec], train_init_state_ids: Mapping[str, Sequence[int]],
                 task_weights: Mapping[str, float] | None = None,
                 seed: int | Sequence[int] = 0, window: FilterWindow | None = None):
        if not tasks:
            raise ValueError("TaskScheduler: no tasks (check env.suite / env.tasks)")
        empty = [t.task_id for t in tasks if not train_init_state_ids.get(t.task_id)]
        if empty:
            raise ValueError(f"TaskScheduler: no training init_state_ids for {empty}")
        self.tasks = list(tasks)
        self.train_ids = {t.task_id: np.asarray(train_init_state_ids[t.task_id], np.int64)
                          for t in self.tasks}
        self.probabilities = task_probabilities(self.tasks, task_weights or {})
        self._rng = np.random.default_rng(np.random.SeedSequence(seed))
        self._queues: dict[str, list[int]] = {t.task_id: [] for t in self.tasks}
        self.window = window
        # decayed (successes, episodes) per task; (0.5, 1) = never tried, success 0.5
        self._outcomes = {t.task_id: (0.5, 1.0) for t in self.tasks}

    def record(self, task_id: str, successes: int, episodes: int) -> None:
        """One finished group of ``task_id``: its outcomes steer adaptive scheduling."""
        if self.window and task_id in self._outcomes:
            s, n = self._outcomes[task_id]
            d = self.window.decay
            self._outcomes[task_id] = (d * s + successes, d * n + episodes)

    def success(self, task_id: str) -> float:
        """The task's recent success (decayed), 0.5 before any group of it."""
        s, n = self._outcomes[task_id]
        return s / n

    def current_probabilities(self) -> np.ndarray:
        """float64 [N]: the static probabilities, scaled by the filter window when adaptive."""
        w = self.window
        if w is None:
            return self.probabilities
        kept = np.array([max(w.floor, kept_probability(self.success(t.task_id), w.group_size,
                                                       w.lo, w.hi)) for t in self.tasks])
        p = self.probabilities * kept
        return p / p.sum()

    def next(self) -> tuple[str, int]:
        """-> (task_id, init_state_id) for the next group."""
        task = self.tasks[int(self._rng.choice(len(self.tasks), p=self.current_probabilities()))]
        queue = self._queues[task.task_id]
        if not queue:
            queue.extend(self._rng.permutation(self.train_ids[task.task_id]).tolist()[::-1])
        return task.task_id, int(queue.pop())

    def __iter__(self) -> Iterator[tuple[str, int]]:
        while True:
            yield self.next()
