"""The gymnasium wrapper of the tabletop suite (actors/envs/tabletop/gym_env.py)."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from actors.envs.tabletop import TASKS, Expert, TabletopEnv, gym_id
from common.config.schema import TabletopEnvConfig


def test_every_task_is_registered():
    for task_id, task in TASKS.items():
        spec = gym.spec(gym_id(task_id))
        assert spec.kwargs["task_id"] == task_id
        env = TabletopEnv(TabletopEnvConfig(tasks=[task_id]))
        assert spec.max_episode_steps == env.tasks()[0].max_steps
    assert gym_id("long/3") == "pushcut/Tabletop-long-3-v0"


@pytest.mark.parametrize("task_id, wrist", [("spatial/0", False), ("long/2", True)])
def test_gymnasium_env_checker_passes(task_id, wrist):
    env = gym.make(gym_id(task_id), wrist_camera=wrist)
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


def test_reset_by_init_state_id_matches_the_task_env_and_seeds_are_reproducible():
    env = gym.make(gym_id("object/1"), image_size=32)
    obs, info = env.reset(options={"init_state_id": 45})
    assert info["init_state_id"] == 45 and info["instruction"] == "put the green cube in the tray"
    plain = TabletopEnv(TabletopEnvConfig(image_size=32))
    assert np.array_equal(obs["images"], plain.reset("object/1", 45)["images"])
    plain.close()
    a, ia = env.reset(seed=7)
    b, ib = env.reset(seed=7)
    assert ia["init_state_id"] == ib["init_state_id"] < 40
    assert np.array_equal(a["images"], b["images"])
    assert env.render().shape == (32, 32, 3)
    env.close()


def test_success_terminates_with_reward_and_the_limit_truncates():
    env = gym.make(gym_id("goal/3"))
    env.reset(options={"init_state_id": 0})
    expert = Expert(env.unwrapped._env)
    for _ in range(120):
        obs, reward, terminated, truncated, info = env.step(expert.act())
        if terminated or truncated:
            break
    assert terminated and not truncated and reward == 1.0 and info["success"]
    short = gym.make(gym_id("goal/3"), max_steps=3)
    short.reset(seed=0)
    flags = [short.step(np.zeros(7, np.float32))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    env.close()
    short.close()
