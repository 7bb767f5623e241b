"""learner/replay.py: which successes the replay keeps and how it draws them."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from learner.replay import SuccessReplay
from tests.learner.helpers import make_trajectory


def group(task_id: str, successes: list[bool], version: int = 0) -> list:
    rng = np.random.default_rng(len(task_id) + version)
    return [make_trajectory(rng, group_id=f"{task_id}-{version}", group_size=len(successes),
                            length=4, policy_version=version, success=s, task_id=task_id)
            for s in successes]


def test_keeps_only_successes_and_the_newest_per_task():
    replay = SuccessReplay(per_task=2)
    assert replay.sample(4) == []
    assert replay.add([group("goal/2", [True, False, True]), group("goal/3", [False, False])]) == 2
    assert replay.report() == {"replay_tasks": 1, "replay_size": 2}
    assert replay.add([group("goal/2", [True], version=5)]) == 1
    kept = {(t.policy_version, t.success) for t in replay.tasks["goal/2"]}
    assert kept == {(0, True), (5, True)} and len(replay) == 2   # the oldest fell out
    with pytest.raises(ValueError, match="per_task"):
        SuccessReplay(per_task=0)


def test_draws_round_robin_over_tasks_and_never_more_than_it_holds():
    """A task that has lost its successes in the actors' rollouts still gets its share: every
    task with a success kept gives one before any gives a second."""
    replay = SuccessReplay(per_task=8, seed=3)
    replay.add([group("spatial/0", [True] * 6), group("goal/2", [True]), group("long/1", [True] * 3)])
    first = replay.sample(3)
    assert sorted(t.task_id for t in first) == ["goal/2", "long/1", "spatial/0"]
    drawn = replay.sample(7)
    counts = Counter(t.task_id for t in drawn)
    assert counts["goal/2"] == 1 and counts["long/1"] == 3 and counts["spatial/0"] == 3
    assert len({t.trajectory_id for t in drawn}) == 7           # no trajectory twice in a draw
    assert len(replay.sample(100)) == 10 and replay.sample(0) == []
