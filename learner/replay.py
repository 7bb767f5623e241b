"""Success replay: the newest successful trajectories of each task, kept for self-imitation.

In: the groups of every batch the learner trained on (:meth:`SuccessReplay.add`). Out:
``algo.replay_trajectories`` of the kept successes per update (:meth:`SuccessReplay.sample`),
drawn round-robin over tasks so that every task that has ever succeeded is represented,
whatever the actors happen to sample now. GRPO adds their log-likelihood to the update
(learner/loss.py ``imitation_loss``), which holds a task's learned behaviour while the updates
for its sibling tasks (same scene, another instruction) move the shared weights.

Why: in the 1-demo run tasks were learned and then lost (goal/2 34 % -> 0 % while goal/3
0 -> 80 %); once a task fails in every member of its groups the filter drops them and GRPO
has no signal left to bring it back. A success kept here still has one.

The buffer lives in rank 0's memory; a resumed learner starts with it empty. Logic only: no
store, no sockets.
"""
from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from common.wire.trajectory import Trajectory


class SuccessReplay:
    """Per task, the newest ``per_task`` successes (older ones fall out first)."""

    def __init__(self, per_task: int, seed: int = 0):
        if per_task < 1:
            raise ValueError(f"per_task must be >= 1, got {per_task}")
        self.per_task = per_task
        self.tasks: OrderedDict[str, deque[Trajectory]] = OrderedDict()
        self.rng = np.random.default_rng(seed)
        self._next = 0   # the task the next draw starts at (round-robin across calls)

    def __len__(self) -> int:
        return sum(len(q) for q in self.tasks.values())

    def add(self, groups: list[list[Trajectory]]) -> int:
        """Keep the successes of ``groups`` -> how many were added."""
        added = 0
        for group in groups:
            for traj in group:
                if traj.success:
                    queue = self.tasks.setdefault(traj.task_id, deque(maxlen=self.per_task))
                    queue.append(traj)
                    added += 1
        return added

    def sample(self, count: int) -> list[Trajectory]:
        """``count`` successes (fewer only when fewer are kept), round-robin over the tasks
        from where the last call stopped, each task's pick uniform over its successes kept;
        a task gives a second one only after every task gave one."""
        queues = list(self.tasks.values())
        if not queues or count <= 0:
            return []
        count = min(count, len(self))
        picks: list[Trajectory] = []
        unused = [list(self.rng.permutation(len(q))) for q in queues]
        while len(picks) < count:
            i = self._next % len(queues)
            self._next += 1
            if unused[i]:
                picks.append(queues[i][unused[i].pop()])
        return picks

    def report(self) -> dict[str, int]:
        """{'replay_tasks': tasks with a success kept, 'replay_size': successes kept}."""
        return {"replay_tasks": len(self.tasks), "replay_size": len(self)}
