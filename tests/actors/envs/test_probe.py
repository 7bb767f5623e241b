"""The probe env: success exactly when the first action lands in the task's interval,
episodes of ``max_steps`` control steps, disjoint training and held-out ids."""
from __future__ import annotations

import numpy as np
import pytest

from actors.envs import make_env
from actors.envs.probe import PROBES
from common.config import load_config


def probe_env(*overrides: str):
    return make_env(load_config(["env.name=probe", *overrides]).env)


def test_success_is_the_first_action_inside_the_interval():
    env = probe_env("env.image_size=32")
    obs = env.reset("probe/right", 0)
    assert obs["images"].shape == (1, 32, 32, 3) and obs["proprio"].shape == (8,)
    for value, expected in [(0.9, True), (0.4, True), (0.39, False), (-1.0, False)]:
        env.reset("probe/right", 0)
        r = env.step(np.array([value, 0, 0, 0, 0, 0, 1.0]))
        assert r.success is expected and r.done
    env.reset("probe/open", 3)
    assert env.step(np.array([0.9, 0, 0, 0, 0, 0, -0.8])).success


def test_longer_episodes_judge_only_the_first_step():
    env = probe_env("env.max_steps=3")
    env.reset("probe/right", 0)
    assert not env.step(np.zeros(7)).done
    assert not env.step(np.ones(7), render=False).success    # too late to count
    last = env.step(np.ones(7))
    assert last.done and not last.success


def test_tasks_ids_and_bad_input():
    env = probe_env("env.tasks=[probe/open]", "env.num_train_init_states=5",
                    "env.num_heldout_init_states=2")
    assert [t.task_id for t in env.tasks()] == ["probe/open"]
    assert env.train_init_state_ids("probe/open") == [0, 1, 2, 3, 4]
    assert env.heldout_init_state_ids("probe/open") == [5, 6]
    assert set(PROBES) == {t.task_id for t in probe_env().tasks()}
    with pytest.raises(ValueError, match="unknown probe task"):
        env.reset("probe/left", 0)
    with pytest.raises(ValueError, match="unknown probe task"):
        probe_env("env.tasks=[spatial/0]").tasks()
