"""ManiSkill's own motion planners as the expert of ``pushcut demos env=maniskill``.

In:  a :class:`~actors.envs.maniskill.ManiSkillEnv` just reset to (task, seed).
Out: ``act()`` -> float32 [7] pushcut actions for that env, or None when the plan failed
     (``pushcut demos`` skips the attempt and counts it as failed).

ManiSkill's planners (``mani_skill.examples.motionplanning.panda.solutions``, built on mplib)
drive a ``pd_joint_pos`` env themselves. The expert runs the task's planner on a second,
camera-less env of the same task and seed (the same layout), records the TCP pose and the
gripper command after every planned step, and then tracks that path in the pushcut env with
the end-effector delta-pose controller: each action moves toward the next recorded pose from
where the TCP is now (closed loop), so the recorded demo is in the policy's action space.
A plan that mplib cannot find, or that does not succeed in the planning env, gives None.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Optional

import numpy as np

from actors.envs.maniskill_tasks import TASKS

SOLUTIONS = "mani_skill.examples.motionplanning.panda.solutions"


class _Recorder:
    """Wraps the planning env: after each planned step, the TCP pose in the robot's base
    frame and the gripper command (ManiSkill's sign: +1 open, -1 closed)."""

    def __init__(self, env: Any):
        self.env, self.path = env, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def reset(self, **kwargs):
        self.path = []
        return self.env.reset(**kwargs)

    def step(self, action):
        out = self.env.step(action)
        pose = tcp_at_base(self.env.unwrapped)
        self.path.append((pose, float(np.asarray(action)[-1])))
        return out


def tcp_at_base(base: Any) -> tuple[np.ndarray, np.ndarray]:
    """The TCP pose in the robot's base frame: position [3], quaternion [4] (wxyz)."""
    pose = base.agent.robot.pose.inv() * base.agent.tcp.pose
    return pose.p.cpu().numpy()[0].astype(np.float64), pose.q.cpu().numpy()[0].astype(np.float64)


def planned_path(task_id: str, seed: int, planning_envs: dict) -> Optional[list]:
    """The planner's path for (task, seed) -> [(pose, gripper)] per step; None when there is
    no planner, no plan, or the plan does not succeed."""
    import gymnasium as gym
    import importlib
    planner = TASKS[task_id].planner
    if not planner:
        return None
    if task_id not in planning_envs:
        planning_envs[task_id] = _Recorder(gym.make(
            task_id, obs_mode="none", control_mode="pd_joint_pos", render_backend="none"))
    env = planning_envs[task_id]
    solve = getattr(importlib.import_module(SOLUTIONS), planner)
    with contextlib.redirect_stdout(io.StringIO()):    # the planners print their progress
        result = solve(env, seed=seed, debug=False, vis=False)
    if isinstance(result, int) or not env.path:        # -1: mplib found no plan
        return None
    info = result[-1]
    return env.path if bool(np.asarray(info["success"].cpu()).any()) else None


class Planner:
    """The pushcut expert interface (``Planner(env, noise, seed)``, ``act()``,
    ``clean_action``) over a motion-planned path; see the module docstring."""

    def __init__(self, env: Any, noise: float = 0.0, seed: Any = 0):
        self.env, self.noise = env, float(noise)
        self.rng = np.random.default_rng(seed)
        self.path: Optional[list] = None
        self.k = 0
        self.clean_action = np.zeros(7, np.float32)

    def act(self) -> Optional[np.ndarray]:
        if self.path is None:
            # one camera-less planning env per task, kept beside the pushcut env
            cache = self.env.__dict__.setdefault("_planning_envs", {})
            self.path = planned_path(self.env._task, self.env.episode_seed, cache) or []
        if not self.path:
            return None
        (p, q), grip = self.path[min(self.k, len(self.path) - 1)]
        self.k += 1
        self.clean_action = self.delta_action(p, q, grip)
        if self.noise <= 0:
            return self.clean_action.copy()
        noisy = self.clean_action + self.rng.normal(0.0, self.noise, 7).astype(np.float32)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)

    def delta_action(self, p: np.ndarray, q: np.ndarray, grip: float) -> np.ndarray:
        """The pushcut action that moves the TCP from where it is to (p, q), normalised by
        the arm controller's own bounds (its rotation is XYZ Euler angles, pre-multiplied)."""
        import torch
        from mani_skill.utils.geometry.rotation_conversions import (
            matrix_to_euler_angles, quaternion_invert, quaternion_multiply,
            quaternion_to_matrix)
        base = self.env.base
        arm = base.agent.controller.controllers["arm"].config
        cur_p, cur_q = tcp_at_base(base)
        dq = quaternion_multiply(torch.as_tensor(q), quaternion_invert(torch.as_tensor(cur_q)))
        euler = matrix_to_euler_angles(quaternion_to_matrix(dq), "XYZ").numpy()
        rot = euler / arm.rot_lower          # the controller scales by rot_lower (sic)
        norm = np.linalg.norm(rot)
        rot = rot / norm if norm > 1 else rot
        pos = np.clip((p - cur_p) / arm.pos_upper, -1.0, 1.0)
        return np.concatenate([pos, rot, [-grip]]).astype(np.float32)   # pushcut: +1 closes
