"""Policy models behind the :class:`common.models.policy.Policy` interface, and how to get one.

- ``build_policy(model_cfg, action_stats=None)``: fresh weights, sizes from the named
  preset plus ``model_cfg.kwargs`` (or the checkpoint in ``model_cfg.checkpoint``).
- ``load_policy(path, device="cpu")``: a ``save_pretrained`` directory, dispatched on the
  ``model_type`` in its ``config.json``.

- ``model_presets(name)``: the ``model.preset`` values a registered model knows.

Registry: ``tiny_vla`` (common/models/tiny_vla/modeling.py) and ``openvla_oft``
(common/models/openvla_oft/modeling.py). Model modules are imported only when used. A registered
class is a ``PreTrainedModel`` with ``from_pretrained``, a classmethod
``from_model_config(model_cfg, action_stats) -> Policy`` for fresh weights, ``PRESETS``
(preset name -> fields of its ``config_class``, stated once in the model's configuration
module), and optionally ``MODEL_TYPES`` (the config.json model_types it loads; default its
config's model_type) and ``BUILDS_ON_DEVICE`` (``from_model_config`` takes ``device=`` and
creates the weights there).
"""
from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

import torch

from common.config.schema import DTYPE_NAMES, ModelConfig
from common.models.policy import Policy

# name (ModelConfig.name) -> "module:Class"
REGISTRY: dict[str, str] = {
    "tiny_vla": "common.models.tiny_vla.modeling:TinyVLAPolicy",
    "openvla_oft": "common.models.openvla_oft.modeling:OpenVLAOFTPolicy",
}
# model.dtype -> torch dtype (the names are ModelConfig's)
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def policy_class(name: str) -> type:
    """Registered name -> the policy class (imports its module)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def model_presets(name: str) -> list[str]:
    """The presets of a registered model (its class's ``PRESETS``)."""
    return list(policy_class(name).PRESETS)


def model_preset_config(name: str, preset: str) -> Any:
    """The config of preset ``preset`` of model ``name`` (before ModelConfig's overrides)."""
    cls = policy_class(name)
    if preset not in cls.PRESETS:
        raise ValueError(f"model.preset {preset!r} is not a {name} preset "
                         f"({', '.join(cls.PRESETS)})")
    return cls.config_class(**copy.deepcopy(cls.PRESETS[preset]))


def build_policy(model_cfg: ModelConfig, action_stats: dict[str, Any] | None = None) -> Policy:
    """ModelConfig -> a policy with fresh weights (or ``model_cfg.checkpoint`` loaded).

    ``action_stats``: :meth:`ActionTokenizer.to_dict` of the demonstrations (None: actions
    are taken to be in [-1, 1] already)."""
    if model_cfg.checkpoint:
        policy = load_policy(model_cfg.checkpoint)
    else:
        policy = policy_class(model_cfg.name).from_model_config(model_cfg, action_stats)
    policy = policy.to(DTYPES[model_cfg.dtype])
    if model_cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    return policy


def model_type_of(path: str | Path) -> str:
    config = Path(path) / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"{path} is not a save_pretrained directory (no config.json)")
    model_type = json.loads(config.read_text()).get("model_type")
    if not model_type:
        raise ValueError(f"{config} has no model_type")
    return model_type


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> Policy:
    """A save_pretrained directory -> the policy in eval mode on ``device``."""
    model_type = model_type_of(path)
    for name in REGISTRY:
        try:
            cls = policy_class(name)
        except ImportError:
            continue   # a model whose module (or its dependencies) is absent here
        accepted = getattr(cls, "MODEL_TYPES", (cls.config_class.model_type,))
        if model_type in accepted:
            return cls.from_pretrained(str(path)).to(device).eval()
    raise ValueError(f"{path}: model_type {model_type!r} matches no registered policy "
                     f"({sorted(REGISTRY)})")
