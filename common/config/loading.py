"""Hydra composition: the only place that turns argv overrides into a typed config."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from common.config.schema import (
    ActorConfig, AlgoConfig, EnvConfig, LearnerConfig, ModelConfig, PushcutConfig, StoreConfig,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
_GROUP_SCHEMAS = {
    "env": EnvConfig, "model": ModelConfig, "algo": AlgoConfig,
    "store": StoreConfig, "actor": ActorConfig, "learner": LearnerConfig,
}
_registered = False


def register_configs() -> None:
    """Register the root schema and one schema per group (``<group>/schema``)."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="pushcut_schema", node=PushcutConfig)
    for group, node in _GROUP_SCHEMAS.items():
        cs.store(group=group, name="schema", node=node)
    _registered = True


# optional groups that the root config does not list: ``experiment=NAME`` selects
# configs/experiment/NAME.yaml (``# @package _global_``: it sets fields of any group)
OPTIONAL_GROUPS = ("experiment",)


def _select_optional_groups(overrides: Sequence[str]) -> list[str]:
    """``experiment=NAME`` -> ``+experiment=NAME`` (Hydra's spelling for a group that is not
    in the defaults list), appended after the root config so that it overrides it."""
    return [f"+{o}" if o.split("=", 1)[0] in OPTIONAL_GROUPS else o for o in overrides]


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> PushcutConfig:
    """Compose ``configs/<config_name>.yaml`` with CLI-style overrides into a PushcutConfig.

    Raises hydra/omegaconf errors with the offending key for unknown keys or bad types.
    """
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=config_name, overrides=_select_optional_groups(overrides))
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, PushcutConfig), type(obj)
    return obj


def to_yaml(cfg: object) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
