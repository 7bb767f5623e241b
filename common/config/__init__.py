"""Typed configuration: one dataclass per concern, each field with its tuned default, its
rules and its docstring (common/config/schema.py, envs.py, commands.py).

The dataclasses are the only defaults: the options of the groups (``env=libero``,
``model=openvla_oft_7b``, ...) are instances of them registered in Hydra's ConfigStore
(:mod:`common.config.loading`); ``configs/config.yaml`` picks one option per group and
``configs/experiment/`` holds overrides. An unknown key or a value of the wrong type is an
error at load time, a value against its field's rules a :class:`ConfigError` listing every
one. Hydra stops at the entry point (:func:`load_config`): every command receives the whole
:class:`PushcutConfig` and reads the sections it needs (``cfg.actor``, ``cfg.algo``, ...).
"""
from common.config.schema import (
    ActorConfig,
    AlgoConfig,
    EnvConfig,
    LearnerConfig,
    ModelConfig,
    PushcutConfig,
    StoreConfig,
    SftConfig,
    EvalConfig,
    DemosConfig,
    BenchConfig,
    DeployConfig,
    TabletopEnvConfig,
    LiberoEnvConfig,
    ConfigError,
)


def load_config(*args, **kwargs):
    """See :func:`common.config.loading.load_config` (imported lazily: Hydra costs ~1.5 s
    at import, and spawned workers that only need the dataclasses should not pay it)."""
    from common.config.loading import load_config as _load
    return _load(*args, **kwargs)


def register_configs() -> None:
    from common.config.loading import register_configs as _register
    _register()


__all__ = [
    "ActorConfig", "AlgoConfig", "EnvConfig", "LearnerConfig", "ModelConfig", "PushcutConfig",
    "StoreConfig", "SftConfig", "EvalConfig", "DemosConfig", "BenchConfig", "DeployConfig",
    "TabletopEnvConfig", "LiberoEnvConfig", "ConfigError", "load_config", "register_configs",
]
