"""gymnasium.Env wrapper of one tabletop task, registered as ``pushcut/Tabletop-<family>-<index>-v0``.

In: ``reset(seed=..., options={"init_state_id": k})`` (without an id, the seed's generator
draws a training init state), then actions float32 [7] in [-1, 1]. Out: observations
``{"images": uint8 [V, H, W, 3], "proprio": float32 [8]}``, reward 1.0 on the success
step else 0.0, ``terminated`` on success, ``truncated`` at the step limit, and
``info["success"]``. Other tools can use it without the rest of pushcut::

    import gymnasium as gym
    env = gym.make("actors.envs.tabletop:pushcut/Tabletop-spatial-0-v0", image_size=128)
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from actors.envs.tabletop.env import ACTION_DIM, PROPRIO_DIM, TabletopEnv
from actors.envs.tabletop.tasks import MAX_STEPS, TASKS
from common.config.envs import TabletopEnvConfig

# |proprio| never reaches this: positions stay within 0.3 m (joint limits), yaw within 1.6 rad
PROPRIO_BOUND = np.float32(np.pi)


def gym_id(task_id: str) -> str:
    """"spatial/0" -> "pushcut/Tabletop-spatial-0-v0"."""
    family, index = task_id.split("/")
    return f"pushcut/Tabletop-{family}-{index}-v0"


class TabletopGymEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task_id: str = "spatial/0", image_size: int = 64,
                 wrist_camera: bool = False, num_train_init_states: int = 40,
                 num_heldout_init_states: int = 10, max_steps: int | None = None,
                 render_mode: str | None = "rgb_array"):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode {render_mode!r} not supported (rgb_array or None)")
        self.task_id = task_id
        self.render_mode = render_mode
        self._env = TabletopEnv(TabletopEnvConfig(
            tasks=[task_id], image_size=image_size, wrist_camera=wrist_camera,
            num_train_init_states=num_train_init_states,
            num_heldout_init_states=num_heldout_init_states, max_steps=max_steps))
        self.spec_task = self._env.tasks()[0]
        views = 2 if wrist_camera else 1
        self.observation_space = spaces.Dict({
            "images": spaces.Box(0, 255, (views, image_size, image_size, 3), np.uint8),
            "proprio": spaces.Box(-PROPRIO_BOUND, PROPRIO_BOUND, (PROPRIO_DIM,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._obs: dict[str, np.ndarray] | None = None

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        options = options or {}
        if "init_state_id" in options:
            init_state_id = int(options["init_state_id"])
        else:
            init_state_id = int(self.np_random.integers(self._env.cfg.num_train_init_states))
        self._obs = self._env.reset(self.task_id, init_state_id)
        return self._obs, {"task_id": self.task_id, "init_state_id": init_state_id,
                           "instruction": self.spec_task.instruction, "success": False}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        result = self._env.step(np.asarray(action, dtype=np.float64), render=True)
        self._obs = result.obs
        truncated = result.done and not result.success
        return result.obs, float(result.success), result.success, truncated, \
            {"success": result.success}

    def render(self) -> np.ndarray | None:
        if self.render_mode is None or self._obs is None:
            return None
        return self._obs["images"][0]

    def close(self) -> None:
        self._env.close()


def register_all() -> None:
    """Register every tabletop task under its gym id (idempotent)."""
    for task_id, task in TASKS.items():
        if gym_id(task_id) not in gym.registry:
            gym.register(id=gym_id(task_id), entry_point=TabletopGymEnv,
                         kwargs={"task_id": task_id},
                         max_episode_steps=MAX_STEPS[task.family])
