"""Env adapters behind the TaskEnv protocol (``actors/envs/base.py``), their registry and
factory.

``make_env(env_cfg, seed)`` builds the simulator registered as ``env_cfg.name``
(:mod:`actors.envs.registry`): ``tabletop`` (the built-in MuJoCo suite), ``libero`` (the
real benchmark, which pulls robosuite) or ``probe`` (tasks with a known answer,
actors/envs/probe.py). ``env_spec(name)`` says what a simulator has (tasks, suites, workers,
observation shapes, expert) without importing it, so importing this package costs nothing.
"""
from __future__ import annotations

from typing import Any

from actors.envs.base import StepResult, TaskEnv, TaskSpec
from actors.envs.registry import (
    EnvSpec, LazyNames, env_names, env_spec, register_env, unregister_env,
)


def make_env(env_cfg: Any, seed: int = 0) -> TaskEnv:
    """The TaskEnv for ``env_cfg.name``; ``seed`` reaches simulators that use one (the
    tabletop suite is deterministic in (task_id, init_state_id) and ignores it)."""
    return env_spec(env_cfg.name).make(env_cfg, seed)


__all__ = ["EnvSpec", "LazyNames", "StepResult", "TaskEnv", "TaskSpec", "env_names",
           "env_spec", "make_env", "register_env", "unregister_env"]
