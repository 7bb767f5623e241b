"""TaskScheduler: training ids only, deterministic per seed, uniform or weighted, adaptive
to the filter window."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from actors.envs.base import TaskSpec
from actors.scheduler import FilterWindow, TaskScheduler, kept_probability, task_probabilities

TASKS = [TaskSpec(f"{fam}/{i}", fam, f"do {fam} {i}", 100)
         for fam in ("spatial", "long") for i in range(2)]
TRAIN = {t.task_id: list(range(5)) for t in TASKS}     # held-out ids would be 5..9


def draws(scheduler: TaskScheduler, n: int) -> list[tuple[str, int]]:
    return [scheduler.next() for _ in range(n)]


def test_same_seed_same_sequence_other_seed_other_sequence():
    a = draws(TaskScheduler(TASKS, TRAIN, seed=[3, 77]), 50)
    b = draws(TaskScheduler(TASKS, TRAIN, seed=[3, 77]), 50)
    c = draws(TaskScheduler(TASKS, TRAIN, seed=[3, 78]), 50)
    assert a == b
    assert a != c


def test_only_training_ids_and_each_visited_once_per_pass():
    s = TaskScheduler([TASKS[0]], TRAIN, seed=1)
    seq = [i for _, i in draws(s, 15)]
    assert set(seq) <= set(TRAIN["spatial/0"])
    for start in (0, 5, 10):            # three passes, each a permutation of the 5 ids
        assert sorted(seq[start:start + 5]) == list(range(5))
    assert seq[:5] != seq[5:10] or seq[5:10] != seq[10:15]   # reshuffled each pass


def test_uniform_by_default():
    counts = Counter(t for t, _ in draws(TaskScheduler(TASKS, TRAIN, seed=0), 4000))
    assert set(counts) == {t.task_id for t in TASKS}
    for c in counts.values():
        assert abs(c / 4000 - 0.25) < 0.04


def test_weights_by_family_and_task_id():
    p = task_probabilities(TASKS, {"long": 3.0, "spatial/1": 0.0})
    assert p.tolist() == pytest.approx([1 / 7, 0.0, 3 / 7, 3 / 7])
    counts = Counter(t for t, _ in draws(
        TaskScheduler(TASKS, TRAIN, {"long": 3.0, "spatial/1": 0.0}, seed=5), 4000))
    assert counts["spatial/1"] == 0
    assert abs(counts["long/0"] / 4000 - 3 / 7) < 0.04
    assert abs(counts["spatial/0"] / 4000 - 1 / 7) < 0.04


@pytest.mark.parametrize("weights, message", [
    ({"nope/3": 1.0}, "unknown tasks or families"),
    ({"long": -1.0}, "finite and >= 0"),
    ({"spatial": 0.0, "long": 0.0}, "weight 0"),
])
def test_bad_weights_are_named(weights, message):
    with pytest.raises(ValueError, match=message):
        TaskScheduler(TASKS, TRAIN, weights)


def test_task_without_training_ids_is_named():
    with pytest.raises(ValueError, match="long/1"):
        TaskScheduler(TASKS, {**TRAIN, "long/1": []})


# ---------------------------------------------------------------- adaptive to the filter window
WINDOW = FilterWindow(group_size=8, lo=0.1, hi=0.9, floor=0.1, decay=0.8)


def test_kept_probability_matches_simulated_groups():
    rng = np.random.default_rng(0)
    for p in (0.0, 0.03, 0.2, 0.5, 0.97, 1.0):
        rates = rng.binomial(8, p, size=200_000) / 8
        simulated = np.mean((rates >= 0.1) & (rates <= 0.9))
        assert kept_probability(p, 8, 0.1, 0.9) == pytest.approx(simulated, abs=0.005)
    assert kept_probability(0.5, 8, 0.1, 0.9) == pytest.approx(1 - 2 / 256)


def test_adaptive_scheduling_favours_tasks_inside_the_filter_window():
    s = TaskScheduler(TASKS, TRAIN, seed=0, window=WINDOW)
    assert s.current_probabilities() == pytest.approx([0.25] * 4)     # untried: all alike
    for _ in range(10):
        s.record("spatial/0", 0, 8)          # never succeeds: kept ~never -> the floor
        s.record("spatial/1", 8, 8)          # always succeeds: the floor too
        s.record("long/0", 4, 8)             # half: almost every group kept
        s.record("long/1", 1, 8)             # rare successes: kept often
    assert s.success("long/0") == pytest.approx(0.5) and s.success("spatial/0") < 0.05
    kept = [max(0.1, kept_probability(s.success(t.task_id), 8, 0.1, 0.9)) for t in TASKS]
    assert s.current_probabilities() == pytest.approx(np.array(kept) / sum(kept))
    counts = Counter(t for t, _ in draws(s, 4000))
    assert counts["long/0"] > 4 * counts["spatial/0"] and counts["spatial/0"] > 0
    assert counts["long/1"] > 2 * counts["spatial/1"]


def test_without_a_window_outcomes_change_nothing():
    a, b = TaskScheduler(TASKS, TRAIN, seed=4), TaskScheduler(TASKS, TRAIN, seed=4)
    for _ in range(5):
        a.record("spatial/0", 0, 8)
    assert draws(a, 200) == draws(b, 200)
