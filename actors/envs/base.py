"""The env interface that rollout actors drive: the built-in tabletop suite and LIBERO.

An env worker holds one simulator. ``reset(task_id, init_state_id)`` puts it in the
initial state that is a pure function of (task, init_state_id); ``step(action, render)``
applies one 7-dim delta action (dx, dy, dz, droll, dpitch, dyaw, gripper) in [-1, 1] and
renders cameras only when asked (a policy with action chunks needs an observation only
every C control steps).

Observation dict: ``images`` uint8 [V, H, W, 3] (agentview first, then wrist if enabled),
``proprio`` float32 [P].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TaskSpec:
    task_id: str          # "<suite-or-family>/<index>", e.g. "spatial/2", "libero_spatial/0"
    family: str           # spatial | object | goal | long | libero_spatial | ...
    instruction: str
    max_steps: int


@dataclass
class StepResult:
    obs: dict[str, np.ndarray] | None   # None when render=False
    success: bool
    done: bool                          # success or step limit reached


class TaskEnv(Protocol):
    def tasks(self) -> list[TaskSpec]: ...
    def train_init_state_ids(self, task_id: str) -> list[int]: ...
    def heldout_init_state_ids(self, task_id: str) -> list[int]: ...
    def reset(self, task_id: str, init_state_id: int) -> dict[str, np.ndarray]: ...
    def step(self, action: np.ndarray, render: bool = True) -> StepResult: ...
    def observe(self) -> dict[str, np.ndarray]: ...
    def close(self) -> None: ...
