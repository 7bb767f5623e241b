"""Hydra composition: the only place that turns argv overrides into a typed config."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from common.config.envs import ENV_OPTIONS, EnvConfig
from common.config.schema import (
    ActorConfig, AlgoConfig, LearnerConfig, ModelConfig, PushcutConfig, StoreConfig,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# group -> option -> its config: what a command line selects (``env=libero``); each is an
# instance of the dataclasses, so their defaults are stated once. configs/config.yaml picks
# the root's option of each group (the one PushcutConfig() holds).
GROUP_OPTIONS: dict[str, dict[str, object]] = {
    "env": {name: config_class() for name, config_class in ENV_OPTIONS.items()},
    "model": {
        "tiny_vla": ModelConfig(),
        # OpenVLA-OFT at the tiny preset (a few million parameters, 32-px images): tests
        # and CPU runs; kwargs go to OpenVLAOFTConfig (attention_mode, unnorm_key, ...)
        "openvla_oft": ModelConfig(name="openvla_oft", preset="tiny", num_bins=256),
        # at its real size (DINOv2 ViT-L + SigLIP SO400M, Llama-2 7B): random weights unless
        # model.checkpoint names the published layout (config.json, sharded safetensors +
        # index, dataset_statistics.json)
        "openvla_oft_7b": ModelConfig(name="openvla_oft", preset="7b", num_bins=256,
                                      dtype="bfloat16", gradient_checkpointing=True),
    },
    "algo": {"grpo": AlgoConfig()},
    "store": {"default": StoreConfig()},
    "actor": {"default": ActorConfig()},
    "learner": {"default": LearnerConfig()},
}
_registered = False


def register_configs() -> None:
    """Register the root schema and every group option (``<group>/<option>``)."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    # env starts as the base class: OmegaConf merges an option onto a node of its own class
    # or a base, so the default's TabletopEnvConfig would refuse env=libero
    root = OmegaConf.structured(PushcutConfig)
    root.env = OmegaConf.structured(EnvConfig)
    cs.store(name="pushcut_schema", node=root)
    for group, options in GROUP_OPTIONS.items():
        for name, node in options.items():
            cs.store(group=group, name=name, node=node)
    _registered = True


def group_option(group: str, node: object) -> str:
    """The option of ``group`` whose config has the class of ``node`` (the first, where
    several share it: the fields tell them apart)."""
    return next(name for name, option in GROUP_OPTIONS[group].items()
                if type(option) is type(node))


# optional groups that the root config does not list: ``experiment=NAME`` selects
# configs/experiment/NAME.yaml (``# @package _global_``: it sets fields of any group)
OPTIONAL_GROUPS = ("experiment",)


def _select_optional_groups(overrides: Sequence[str]) -> list[str]:
    """``experiment=NAME`` -> ``+experiment=NAME`` (Hydra's spelling for a group that is not
    in the defaults list), appended after the root config so that it overrides it."""
    return [f"+{o}" if o.split("=", 1)[0] in OPTIONAL_GROUPS else o for o in overrides]


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> PushcutConfig:
    """Compose ``configs/<config_name>.yaml`` with CLI-style overrides into a PushcutConfig.

    Raises hydra/omegaconf errors with the offending key for unknown keys or bad types, and
    :class:`~common.config.rules.ConfigError` listing the values against their fields' rules.
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
