"""The env interface that rollout actors drive: the built-in tabletop suite, LIBERO and
ManiSkill.

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
from typing import Any, Protocol

import numpy as np

ACTION_DIM = 7   # (dx, dy, dz, droll, dpitch, dyaw, gripper), every simulator's action


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


def checked_action(action: Any, simulator: str, dtype: type = np.float64) -> np.ndarray:
    """``action`` as an array of ``dtype``; ValueError unless it is ``ACTION_DIM`` finite
    floats (a NaN would otherwise reach the simulator and poison the episode)."""
    out = np.asarray(action, dtype=dtype)
    if out.shape != (ACTION_DIM,) or not np.isfinite(out).all():
        raise ValueError(f"{simulator} action must be {ACTION_DIM} finite floats, got shape "
                         f"{out.shape}: {out!r}")
    return out


def procedural_init_state_ids(env_cfg: Any, heldout: bool) -> list[int]:
    """The init state ids of a simulator that draws its initial states procedurally from
    the id: training ids ``[0, num_train)``, held-out ids the ``num_heldout`` after them,
    so the two never overlap."""
    train = env_cfg.num_train_init_states
    if not heldout:
        return list(range(train))
    return list(range(train, train + env_cfg.num_heldout_init_states))
