"""OpenVLA-OFT model config: the published OpenVLA ``config.json`` fields plus pushcut's own.

The published fields (``vision_backbone_id``, ``use_fused_vision_backbone``, ``text_config``,
``pad_to_multiple_of``, ``n_action_bins``, ``norm_stats``, ...) keep their names, so a
checkpoint's ``config.json`` loads as is and ours is a superset of it. pushcut adds:

- ``vision_towers``: the shape of each vision tower (kind dinov2|siglip, width, depth, heads,
  MLP width, patch and image size, pixel mean/std). Absent in published configs: derived
  from ``vision_backbone_id`` (:data:`BACKBONES`).
- ``chunk_size`` × ``action_dim``: the action positions decoded in parallel (LIBERO 8 × 7).
- ``attention_mode``: ``prefix`` (causal over image + prompt, full among the action positions
  and the stop token) or ``bidirectional`` (every position sees every position: what the
  openvla-oft transformers fork does, moojink/openvla-oft issues #27, #89).
- ``num_images_in_input`` (cameras fed to the vision backbone) and ``unnorm_key``.

Presets (:data:`PRESETS`, built by :func:`preset_config`): ``7b`` (DINOv2 ViT-L/14-reg4 + SigLIP SO400M/14 at 224 px,
fused projector 2176 -> 8704 -> 4096 -> 4096, Llama-2 7B) and ``tiny`` (same structure,
a few million parameters, 32-px images) for tests and CPU runs.
"""
from __future__ import annotations

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIGLIP_MEAN, SIGLIP_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]

DINOV2_VIT_L = dict(kind="dinov2", hidden_size=1024, depth=24, num_heads=16, mlp_dim=4096,
                    patch_size=14, image_size=224, num_register_tokens=4,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)
SIGLIP_SO400M = dict(kind="siglip", hidden_size=1152, depth=27, num_heads=16, mlp_dim=4304,
                     patch_size=14, image_size=224, num_register_tokens=0,
                     mean=SIGLIP_MEAN, std=SIGLIP_STD)
# published vision_backbone_id -> towers, in the checkpoint's order (featurizer, fused_featurizer)
BACKBONES: dict[str, list[dict[str, Any]]] = {
    "dinosiglip-vit-so-224px": [DINOV2_VIT_L, SIGLIP_SO400M],
    "dinov2-vit-l": [DINOV2_VIT_L],
    "siglip-vit-so400m": [SIGLIP_SO400M],
}
TOWER_KEYS = {"kind", "hidden_size", "depth", "num_heads", "mlp_dim", "patch_size",
              "image_size", "num_register_tokens", "mean", "std"}

LLAMA2_7B = dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 max_position_embeddings=2048, rms_norm_eps=1e-5, pad_token_id=32000,
                 bos_token_id=1, eos_token_id=2, rope_theta=10000.0)


@strict(accept_kwargs=True)
class OpenVLAOFTConfig(PretrainedConfig):
    model_type = "openvla"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=LlamaConfig)}

    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    llm_backbone_id: str = "llama2-7b-pure"
    arch_specifier: str = "no-align+fused-gelu-mlp"
    use_fused_vision_backbone: bool | None = None
    image_resize_strategy: str = "resize-naive"
    text_config: dict | PretrainedConfig | None = None
    llm_max_length: int = 2048
    pad_token_id: int | None = 32000
    pad_to_multiple_of: int = 64
    n_action_bins: int = 256
    norm_stats: dict | None = None
    vision_towers: list | None = None
    chunk_size: int = 8
    action_dim: int = 7
    num_images_in_input: int = 1
    attention_mode: str = "prefix"
    unnorm_key: str | None = None

    def __post_init__(self, **kwargs):
        if self.text_config is None:
            self.text_config = dict(LLAMA2_7B)
        super().__post_init__(**kwargs)
        if self.vision_towers is None:
            if self.vision_backbone_id not in BACKBONES:
                raise ValueError(f"unknown vision_backbone_id {self.vision_backbone_id!r} and no "
                                 f"vision_towers given; known: {sorted(BACKBONES)}")
            self.vision_towers = copy.deepcopy(BACKBONES[self.vision_backbone_id])
        if self.use_fused_vision_backbone is None:
            self.use_fused_vision_backbone = len(self.vision_towers) == 2
        self._check()

    def _check(self) -> None:
        if not 1 <= len(self.vision_towers) <= 2:
            raise ValueError(f"vision_towers: 1 or 2 towers, got {len(self.vision_towers)}")
        if self.use_fused_vision_backbone != (len(self.vision_towers) == 2):
            raise ValueError("use_fused_vision_backbone must be true exactly when there are "
                             "two vision towers")
        for i, tower in enumerate(self.vision_towers):
            missing = TOWER_KEYS - set(tower)
            if missing or tower["kind"] not in ("dinov2", "siglip"):
                raise ValueError(f"vision_towers[{i}]: need kind dinov2|siglip and keys "
                                 f"{sorted(TOWER_KEYS)}; missing {sorted(missing)}")
        sizes = {(t["image_size"], t["image_size"] // t["patch_size"]) for t in self.vision_towers}
        if len(sizes) != 1:
            raise ValueError(f"vision towers must share image size and patch grid, got {sizes}")
        if self.attention_mode not in ("prefix", "bidirectional"):
            raise ValueError(f"attention_mode must be prefix|bidirectional, "
                             f"got {self.attention_mode!r}")
        if self.n_action_bins != 256:
            raise ValueError(f"OpenVLA's action tokens are 256 bins, got n_action_bins="
                             f"{self.n_action_bins}")
        if self.base_vocab_size < self.n_action_bins:
            raise ValueError(f"text vocab {self.text_config.vocab_size} minus pad_to_multiple_of "
                             f"{self.pad_to_multiple_of} leaves no room for the action tokens")

    @property
    def base_vocab_size(self) -> int:
        """The vocabulary before OpenVLA padded it (32000 for Llama-2)."""
        return self.text_config.vocab_size - self.pad_to_multiple_of

    @property
    def image_size(self) -> int:
        return self.vision_towers[0]["image_size"]

    @property
    def num_patches(self) -> int:
        """Image patches per camera."""
        tower = self.vision_towers[0]
        return (tower["image_size"] // tower["patch_size"]) ** 2

    @property
    def num_action_tokens(self) -> int:
        return self.chunk_size * self.action_dim


def _tiny_towers() -> list[dict[str, Any]]:
    common = dict(patch_size=8, image_size=32, depth=3, num_heads=2)
    return [dict(DINOV2_VIT_L, hidden_size=32, mlp_dim=128, **common),
            dict(SIGLIP_SO400M, hidden_size=48, mlp_dim=96, **common)]


# preset -> OpenVLAOFTConfig fields; ``7b`` is the published model, ``tiny`` the same
# structure at a few million parameters (the full 32064-token vocabulary is kept so that
# action ids are the real ones)
PRESETS: dict[str, dict[str, Any]] = {
    "7b": dict(text_config=dict(LLAMA2_7B)),
    "tiny": dict(text_config=dict(LLAMA2_7B, hidden_size=64, intermediate_size=176,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=4, max_position_embeddings=512),
                 vision_backbone_id="dinosiglip-vit-so-224px", vision_towers=_tiny_towers(),
                 llm_backbone_id="llama2-tiny", llm_max_length=512),
}


def preset_config(preset: str, **overrides: Any) -> OpenVLAOFTConfig:
    """A :data:`PRESETS` entry as an OpenVLAOFTConfig; ``overrides`` set any config field."""
    if preset not in PRESETS:
        raise ValueError(f"unknown openvla_oft preset {preset!r}; choose one of "
                         f"{', '.join(PRESETS)}")
    base = copy.deepcopy(PRESETS[preset])   # the config keeps the lists it is given
    base.update(overrides)
    return OpenVLAOFTConfig(**base)
