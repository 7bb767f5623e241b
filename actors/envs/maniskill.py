"""ManiSkill3's Panda tabletop tasks (SAPIEN 3) behind the :class:`~actors.envs.base.TaskEnv`
interface.

In:  a :class:`~common.config.envs.ManiSkillEnvConfig` (suite or tasks, image_size, seeds,
     sim_backend, render_backend); runs in the interpreter ``pushcut setup maniskill`` makes
     (actors host it in subprocess env workers started with that interpreter).
Out: observations ``images`` uint8 [1, S, S, 3] (the task's own ``base_camera``, rendered at
     S = ``env.image_size``) and ``proprio`` float32 [11]: TCP position (3), TCP orientation as
     axis-angle (3), the two finger joints (2), the task's goal position (3; zeros for a task
     without one). ManiSkill keeps goal markers out of its cameras, and its own visual
     observations carry the goal beside the image; so does this proprio.
     Success is the task's own ``evaluate()["success"]``.

Action (7 floats in [-1, 1], pushcut's layout) drives ManiSkill's ``pd_ee_delta_pose``
controller: dx, dy, dz (x 0.1 m, in the robot's base frame), droll, dpitch, dyaw (x 0.1 rad,
XYZ Euler angles, as the controller reads them), gripper: -1 opens, +1 closes (ManiSkill's
gripper is the other way round, so its sign is flipped here).

Init states are ManiSkill's episode seeds: ``reset(seed=init_state_id)`` draws a layout;
training seeds are ``[0, num_train)``, held-out seeds the next ``num_heldout``.

Rendering only when asked: the env runs in ManiSkill's ``state_dict`` observation mode, which
steps without touching the renderer; ``observe()`` renders the camera on demand (goal markers
hidden, as ManiSkill does for its sensors). An actor renders once per action chunk.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from actors.envs.base import StepResult, TaskSpec, checked_action, procedural_init_state_ids
from actors.envs.maniskill_tasks import SUITES, TASKS

PROPRIO_DIM = 11
CAMERA = "base_camera"
CONTROL_MODE = "pd_ee_delta_pose"


def quat_to_axis_angle(quat_wxyz: np.ndarray) -> np.ndarray:
    """float [4] (w, x, y, z), SAPIEN's order -> float [3], angle in [0, 2π)."""
    w = float(np.clip(quat_wxyz[0], -1.0, 1.0))
    den = np.sqrt(max(1.0 - w * w, 0.0))
    if den < 1e-9:
        return np.zeros(3)
    return np.asarray(quat_wxyz[1:], dtype=np.float64) * 2.0 * np.arccos(w) / den


def to_maniskill_action(action: np.ndarray) -> np.ndarray:
    """pushcut action float [7] -> the pd_ee_delta_pose action (gripper sign flipped)."""
    out = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
    out[6] = -out[6]
    return out


def selected_tasks(cfg: Any) -> list[str]:
    """``env.tasks``, or the tasks of ``env.suite``; ValueError naming what is known."""
    if cfg.tasks:
        unknown = [t for t in cfg.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown ManiSkill task(s) {unknown}; known: {', '.join(TASKS)}")
        return list(cfg.tasks)
    if cfg.suite not in SUITES:
        raise ValueError(f"env.suite={cfg.suite!r} is not a ManiSkill suite; use one of "
                         f"{', '.join(SUITES)} or list env.tasks")
    return list(SUITES[cfg.suite])


def _np(x: Any) -> np.ndarray:
    """A ManiSkill tensor of one env ([1, ...], torch) -> numpy without the batch axis."""
    return x.detach().cpu().numpy()[0] if hasattr(x, "detach") else np.asarray(x)[0]


class ManiSkillEnv:
    """One ManiSkill env per task, built at its first reset and kept (a build costs seconds)."""

    def __init__(self, env_cfg: Any, seed: int = 0):
        self.cfg = env_cfg
        self.seed = seed   # unused: an episode is fixed by (task_id, init_state_id)
        self._specs = {t: TaskSpec(t, TASKS[t].family, TASKS[t].instruction,
                                   env_cfg.max_steps or TASKS[t].max_steps)
                       for t in selected_tasks(env_cfg)}
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the tasks with gymnasium)
        self._gym = gym
        self._envs: dict[str, Any] = {}
        self._env: Any = None
        self._state: Optional[dict] = None     # ManiSkill's state_dict observation
        self._task: Optional[str] = None
        self.episode_seed: Optional[int] = None
        self._steps, self._max_steps, self._done = 0, 0, True

    # -- TaskEnv -------------------------------------------------------------------------
    def tasks(self) -> list[TaskSpec]:
        return list(self._specs.values())

    def spec(self, task_id: str) -> TaskSpec:
        """Any known task, in the configured set or not (evaluation may ask)."""
        if task_id in self._specs:
            return self._specs[task_id]
        if task_id not in TASKS:
            raise ValueError(f"unknown ManiSkill task {task_id!r}; known: {', '.join(TASKS)}")
        t = TASKS[task_id]
        return TaskSpec(task_id, t.family, t.instruction, self.cfg.max_steps or t.max_steps)

    def train_init_state_ids(self, task_id: str) -> list[int]:
        self.spec(task_id)
        return procedural_init_state_ids(self.cfg, heldout=False)

    def heldout_init_state_ids(self, task_id: str) -> list[int]:
        self.spec(task_id)
        return procedural_init_state_ids(self.cfg, heldout=True)

    def reset(self, task_id: str, init_state_id: int) -> dict[str, np.ndarray]:
        spec = self.spec(task_id)
        if int(init_state_id) < 0:
            raise ValueError(f"init_state_id must be >= 0, got {init_state_id}")
        self._env = self._envs.get(task_id) or self._build(task_id)
        self._state, _ = self._env.reset(seed=int(init_state_id))
        self._task, self.episode_seed = task_id, int(init_state_id)
        self._steps, self._max_steps, self._done = 0, spec.max_steps, False
        return self.observe()

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        if self._env is None or self._done:
            raise RuntimeError("ManiSkillEnv.step: the episode is over or never started; "
                               "call reset(task_id, init_state_id) first")
        action = checked_action(action, "ManiSkill", np.float32)
        self._state, _, _, _, info = self._env.step(to_maniskill_action(action))
        self._steps += 1
        success = bool(_np(info["success"])) if "success" in info else False
        self._done = success or self._steps >= self._max_steps
        return StepResult(self.observe() if render else None, success, self._done)

    def observe(self) -> dict[str, np.ndarray]:
        if self._env is None or self._state is None:
            raise RuntimeError("ManiSkillEnv.observe: call reset(task_id, init_state_id) first")
        return {"images": self.render()[None], "proprio": self.proprio()}

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs, self._env, self._state, self._done = {}, None, None, True

    # -- simulator access (rendering, experts, benches, tests) ----------------------------
    @property
    def base(self) -> Any:
        """The ManiSkill task (``env.unwrapped``) of the current episode."""
        if self._env is None:
            raise RuntimeError("ManiSkillEnv.base: call reset(task_id, init_state_id) first")
        return self._env.unwrapped

    @property
    def steps(self) -> int:
        return self._steps

    def render(self) -> np.ndarray:
        """uint8 [S, S, 3]: the task's camera now. Goal markers are hidden first, as in
        ManiSkill's own sensor observations; RGB alone is read back (no depth)."""
        base = self.base
        for obj in base._hidden_objects:
            obj.hide_visual()
        base.scene.update_render(update_sensors=True, update_human_render_cameras=False)
        camera = base.scene.sensors[CAMERA]
        camera.capture()
        rgb = camera.get_obs(rgb=True, depth=False, position=False, segmentation=False)["rgb"]
        return np.ascontiguousarray(_np(rgb)[..., :3], dtype=np.uint8)

    def proprio(self) -> np.ndarray:
        """float32 [11]: TCP position, TCP axis-angle, finger joints, goal position."""
        extra = self._state["extra"]
        tcp = _np(extra["tcp_pose"])                       # p (3) + q (4, wxyz)
        fingers = _np(self._state["agent"]["qpos"])[-2:]
        goal = _np(extra["goal_pos"]) if "goal_pos" in extra else np.zeros(3)
        return np.concatenate([tcp[:3], quat_to_axis_angle(tcp[3:]), fingers,
                               goal]).astype(np.float32)

    def check_success(self) -> bool:
        return bool(_np(self.base.evaluate()["success"]))

    def bare_rates(self, seconds: float) -> dict[str, float]:
        """Per CPU-second, on the first task: bare SAPIEN control periods (new random joint
        drive targets, then the physics substeps of one control step; no IK, controller or
        task logic) and bare camera renders (update, capture, RGB readback): the limits
        ``pushcut bench env`` compares with."""
        import torch
        self.reset(self.tasks()[0].task_id, 0)
        base = self.base
        substeps = int(base._sim_steps_per_control)
        robot = base.agent.robot
        rest = robot.get_qpos().clone()
        rng = np.random.default_rng(0)

        def physics() -> None:
            # moving targets keep the robot awake (a resting scene costs PhysX nothing)
            noise = rng.uniform(-0.2, 0.2, tuple(rest.shape)).astype(np.float32)
            robot.set_joint_drive_targets(rest + torch.from_numpy(noise), robot.active_joints)
            for _ in range(substeps):
                base.scene.step()

        rates = {}
        for name, fn in (("physics", physics), ("render", self.render)):
            n, start = 0, time.process_time()
            while time.process_time() - start < seconds / 2:
                fn()
                n += 1
            rates[name] = n / (time.process_time() - start)
        return rates

    def _build(self, task_id: str) -> Any:
        size = int(self.cfg.image_size)
        env = self._gym.make(
            task_id, obs_mode="state_dict", control_mode=CONTROL_MODE, render_mode=None,
            sim_backend=self.cfg.sim_backend, render_backend=self.cfg.render_backend,
            sensor_configs={"width": size, "height": size},
            max_episode_steps=None)
        self._envs[task_id] = env
        return env
