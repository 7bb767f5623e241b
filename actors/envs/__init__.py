"""Env adapters behind the TaskEnv protocol (``actors/envs/base.py``) and their factory.

``make_env(env_cfg, seed)`` builds the simulator that ``env_cfg.name`` names: ``tabletop``
(the built-in MuJoCo suite), ``libero`` (the real benchmark, imported only when asked
for, since it pulls robosuite) or ``probe`` (tasks with a known
answer, actors/envs/probe.py). All are imported lazily, so importing this package costs
nothing.
"""
from __future__ import annotations

from actors.envs.base import StepResult, TaskEnv, TaskSpec
from common.config.schema import EnvConfig

ENV_NAMES = ("tabletop", "libero", "probe")


def make_env(env_cfg: EnvConfig, seed: int = 0) -> TaskEnv:
    """The TaskEnv for ``env_cfg.name``; ``seed`` reaches simulators that use one (the
    tabletop suite is deterministic in (task_id, init_state_id) and ignores it)."""
    if env_cfg.name == "tabletop":
        from actors.envs.tabletop import TabletopEnv
        return TabletopEnv(env_cfg, seed)
    if env_cfg.name == "libero":
        from actors.envs.libero import LiberoEnv
        return LiberoEnv(env_cfg)
    if env_cfg.name == "probe":
        from actors.envs.probe import ProbeEnv
        return ProbeEnv(env_cfg, seed)
    raise ValueError(f"unknown env.name {env_cfg.name!r}; use one of {', '.join(ENV_NAMES)}")


__all__ = ["ENV_NAMES", "StepResult", "TaskEnv", "TaskSpec", "make_env"]
