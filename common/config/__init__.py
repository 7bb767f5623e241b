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
from common.config.loading import load_config, register_configs

__all__ = [
    "ActorConfig", "AlgoConfig", "EnvConfig", "LearnerConfig", "ModelConfig", "PushcutConfig",
    "StoreConfig", "SftConfig", "EvalConfig", "DemosConfig", "BenchConfig", "DeployConfig",
    "load_config", "register_configs",
]
