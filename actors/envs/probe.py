"""Probe environments: tasks whose answer is known, to debug the learning path (the
"debugging RL" practice: before a hard task, a task where any working learner must win).

``env.name=probe``: one task per entry of :data:`PROBES`, each ending after one action
chunk (``max_steps`` control steps, default 1, so one policy decision per episode). The
observation is constant (a grey image, zero proprio), so the reward depends on the sampled
action tokens only. An untrained tiny VLA samples every action bin about uniformly, so it
succeeds about as often as the task's target interval covers [-1, 1]; a correct
actor -> store -> filter -> GRPO path must raise that to nearly 1 within tens of updates.

    pushcut run env.name=probe model.preset=micro model.checkpoint=<fresh policy> ...

In: actions [7] in [-1, 1]. Out: observations ``images`` uint8 [V, S, S, 3], ``proprio``
float32 [8]; success when the first action's dimension ``dim`` lies in [``low``, ``high``].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actors.envs.base import StepResult, TaskSpec, procedural_init_state_ids

PROPRIO_DIM = 8


@dataclass(frozen=True)
class Probe:
    """Success iff ``low <= action[dim] <= high`` on the episode's first control step."""
    dim: int
    low: float
    high: float
    instruction: str


PROBES = {
    "probe/right": Probe(0, 0.4, 1.0, "move right"),     # ~30 % of uniform bins
    "probe/open": Probe(6, -1.0, -0.4, "open the gripper"),  # ~30 % of uniform bins
}


class ProbeEnv:
    """The TaskEnv of the probe tasks (see the module docstring)."""

    def __init__(self, env_cfg, seed: int = 0):
        self.cfg = env_cfg
        self.max_steps = int(env_cfg.max_steps or 1)
        views = 2 if env_cfg.wrist_camera else 1
        size = int(env_cfg.image_size)
        self._obs = {"images": np.full((views, size, size, 3), 128, dtype=np.uint8),
                     "proprio": np.zeros(PROPRIO_DIM, dtype=np.float32)}
        self._probe: Probe | None = None
        self._steps = 0
        self._success = False

    def tasks(self) -> list[TaskSpec]:
        wanted = list(self.cfg.tasks) or list(PROBES)
        unknown = [t for t in wanted if t not in PROBES]
        if unknown:
            raise ValueError(f"unknown probe task(s) {unknown}; known: {', '.join(PROBES)}")
        return [TaskSpec(t, "probe", PROBES[t].instruction, self.max_steps) for t in wanted]

    def train_init_state_ids(self, task_id: str) -> list[int]:
        return procedural_init_state_ids(self.cfg, heldout=False)

    def heldout_init_state_ids(self, task_id: str) -> list[int]:
        return procedural_init_state_ids(self.cfg, heldout=True)

    def reset(self, task_id: str, init_state_id: int) -> dict[str, np.ndarray]:
        if task_id not in PROBES:
            raise ValueError(f"unknown probe task {task_id!r}; known: {', '.join(PROBES)}")
        self._probe, self._steps, self._success = PROBES[task_id], 0, False
        return self.observe()

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        if self._probe is None:
            raise RuntimeError("step() before reset()")
        if self._steps == 0:
            value = float(np.asarray(action, dtype=np.float64)[self._probe.dim])
            self._success = self._probe.low <= value <= self._probe.high
        self._steps += 1
        done = self._success or self._steps >= self.max_steps
        return StepResult(self.observe() if render else None, self._success, done)

    def observe(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._obs.items()}

    def close(self) -> None:
        self._probe = None
