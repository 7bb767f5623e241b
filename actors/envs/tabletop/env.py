"""TabletopEnv: the built-in MuJoCo suite behind the TaskEnv protocol (actors/envs/base.py).

In: ``reset(task_id, init_state_id)``, then 7-dim actions (dx, dy, dz, droll, dpitch, dyaw,
gripper) in [-1, 1] at 20 Hz. Out: observations ``images`` uint8 [V, H, W, 3] (agentview,
then wrist if ``env_cfg.wrist_camera``) and ``proprio`` float32 [8] (fingertip point xyz in
m, axis-angle (0, 0, yaw), finger_l and finger_r openings in m), success and done flags.

Action scale: dx, dy, dz of 1 move the position target 2 cm from the current fingertip
point (at most 0.4 m/s), dyaw of 1 turns 0.15 rad; droll and dpitch are ignored (the gripper
has no such joints); gripper -1 opens fully, +1 closes (continuous in between). Grasps are
real friction contacts. Built by ``actors.envs.make_env`` (env.name=tabletop).
"""
from __future__ import annotations

import numpy as np

from actors.envs.base import (
    ACTION_DIM, StepResult, TaskSpec, checked_action, procedural_init_state_ids,
)
from actors.envs.tabletop.fingerprint import EpisodeTrace
from actors.envs.tabletop.predicates import task_success
from actors.envs.tabletop.scene import FINGER_OPEN, GRIPPER_RANGE, YAW_RANGE
from actors.envs.tabletop.sim import Sim
from actors.envs.tabletop.tasks import MAX_STEPS, TaskDef, get_task, sample_layout, tasks_of
from common.config.envs import TabletopEnvConfig

MAX_DPOS = 0.02      # m per control step at |action| = 1
MAX_DYAW = 0.15      # rad per control step at |action| = 1
PROPRIO_DIM = 8
_LO = np.array([r[0] for r in GRIPPER_RANGE] + [YAW_RANGE[0]])
_HI = np.array([r[1] for r in GRIPPER_RANGE] + [YAW_RANGE[1]])


def action_to_ctrl(action: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """action float [7] in [-1, 1], gripper_qpos [6] (x, y, z, yaw, finger_l, finger_r)
    -> actuator targets float64 [6], relative to the current pose (like an OSC delta)."""
    a = np.clip(action, -1.0, 1.0)
    pose = gripper_qpos[:4] + np.array([*(a[:3] * MAX_DPOS), a[5] * MAX_DYAW])
    finger = FINGER_OPEN * (1.0 - a[6]) / 2.0
    return np.concatenate([np.clip(pose, _LO, _HI), [finger, finger]])


class TabletopEnv:
    """TaskEnv over the tabletop families; one compiled scene per family, built lazily."""

    def __init__(self, env_cfg: TabletopEnvConfig | None = None, seed: int = 0):
        cfg = env_cfg or TabletopEnvConfig()     # its fields' rules bound the sizes and counts
        self.cfg = cfg
        self.seed = seed   # the suite is deterministic; kept for the make_env signature
        defs = [get_task(t) for t in cfg.tasks] if cfg.tasks else tasks_of(cfg.suite)
        self._specs = [TaskSpec(t.task_id, t.family, t.instruction,
                                cfg.max_steps or MAX_STEPS[t.family]) for t in defs]
        self._spec_by_id = {s.task_id: s for s in self._specs}
        self._sims: dict[str, Sim] = {}
        self.sim: Sim | None = None
        self.task: TaskDef | None = None
        self.spec: TaskSpec | None = None
        self.steps = 0
        self.success = False
        self.done = True
        self.trace: EpisodeTrace | None = None

    # ---------------------------------------------------------------- TaskEnv
    def tasks(self) -> list[TaskSpec]:
        return list(self._specs)

    def train_init_state_ids(self, task_id: str) -> list[int]:
        self._task_spec(task_id)
        return procedural_init_state_ids(self.cfg, heldout=False)

    def heldout_init_state_ids(self, task_id: str) -> list[int]:
        self._task_spec(task_id)
        return procedural_init_state_ids(self.cfg, heldout=True)

    def reset(self, task_id: str, init_state_id: int) -> dict[str, np.ndarray]:
        self.spec = self._task_spec(task_id)
        self.task = get_task(task_id)
        layout = sample_layout(self.task, int(init_state_id), self.cfg.layout)
        if self.task.family not in self._sims:
            self._sims[self.task.family] = Sim(self.task.scene, self.cfg.image_size,
                                               self.cfg.wrist_camera)
        self.sim = self._sims[self.task.family]
        self.sim.set_layout(layout)
        self.steps, self.success, self.done = 0, False, False
        self.trace = EpisodeTrace(self.sim, self.task) if self.cfg.fingerprints else None
        return self.observe()

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        if self.done or self.sim is None:
            raise RuntimeError("step() after the episode ended (or before reset); call reset()")
        action = checked_action(action, "tabletop")
        self.sim.step(action_to_ctrl(action, self.sim.gripper_qpos()))
        self.steps += 1
        self.success = task_success(self.sim, self.task)
        self.done = self.success or self.steps >= self.spec.max_steps
        if self.trace is not None:
            self.trace.observe(self.sim, self.success)
        return StepResult(self.observe() if render else None, self.success, self.done)

    def observe(self) -> dict[str, np.ndarray]:
        if self.sim is None:
            raise RuntimeError("observe() before reset()")
        return {"images": self.sim.render(), "proprio": self.sim.proprio()}

    def episode_info(self) -> dict | None:
        """The behaviour fingerprint of the episode so far (actors/envs/tabletop/
        fingerprint.py); None unless ``env.fingerprints`` is on and the env was reset."""
        return self.trace.fingerprint(self.sim) if self.trace is not None else None

    def close(self) -> None:
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()
        self.sim = None

    # ---------------------------------------------------------------- helpers
    def _task_spec(self, task_id: str) -> TaskSpec:
        if task_id not in self._spec_by_id:
            raise KeyError(f"task_id {task_id!r} is not among this env's tasks "
                           f"({', '.join(self._spec_by_id)})")
        return self._spec_by_id[task_id]
