"""Typed configuration: one dataclass per concern, registered with Hydra's ConfigStore.

The YAML groups under ``configs/`` (env/, model/, algo/, actor/, learner/, store/) fill
these schemas; an unknown key or a value of the wrong type is an error at load time.
Hydra stops at the entry point (:func:`load_config`); each role receives only its own
sub-config (``cfg.store``, ``cfg.actor``, ...).
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
    "load_config", "register_configs",
]
