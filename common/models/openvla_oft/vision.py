"""OpenVLA's vision side: fused DINOv2 + SigLIP patch features and the MLP projector.

Each tower is the transformers module (``Dinov2WithRegistersModel``, ``SiglipVisionModel``)
built with the checkpoint's shapes. OpenVLA reads the patch tokens of the *second-to-last*
block (timm ``get_intermediate_layers(n={depth - 2})``, no final norm), so a tower of depth
``d`` is built with ``d - 1`` layers, no final LayerNorm and no pooling head; DINOv2's CLS
and register tokens are dropped from its output. Both towers use exact (erf) GELU, as
timm 0.9 does for these ViTs.

Pixel values hold one 3-channel copy per tower, each normalised with that tower's mean/std
(DINOv2: ImageNet; SigLIP: 0.5/0.5), stacked on the channel axis as in OpenVLA.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (Dinov2WithRegistersConfig, Dinov2WithRegistersModel,
                          SiglipVisionConfig, SiglipVisionModel)

LAYER_NORM_EPS = 1e-6       # timm's ViT LayerNorm eps
DINOV2_LAYERSCALE_INIT = 1e-5


def build_tower(spec: dict[str, Any]) -> nn.Module:
    """A transformers ViT with ``spec['depth'] - 1`` layers and no final norm or head."""
    common = dict(hidden_size=spec["hidden_size"], num_hidden_layers=spec["depth"] - 1,
                  num_attention_heads=spec["num_heads"], image_size=spec["image_size"],
                  patch_size=spec["patch_size"], hidden_act="gelu", layer_norm_eps=LAYER_NORM_EPS)
    if spec["kind"] == "dinov2":
        if spec["mlp_dim"] % spec["hidden_size"]:
            raise ValueError(f"dinov2 tower: mlp_dim {spec['mlp_dim']} must be a multiple of "
                             f"hidden_size {spec['hidden_size']}")
        tower = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
            mlp_ratio=spec["mlp_dim"] // spec["hidden_size"], qkv_bias=True,
            layerscale_value=DINOV2_LAYERSCALE_INIT,
            num_register_tokens=spec["num_register_tokens"], **common))
        tower.layernorm = nn.Identity()
        tower.embeddings.mask_token = None   # masked-image pretraining only; never used here
    elif spec["kind"] == "siglip":
        tower = SiglipVisionModel(SiglipVisionConfig(intermediate_size=spec["mlp_dim"],
                                                     vision_use_head=False, **common))
        tower.post_layernorm = nn.Identity()
    else:
        raise ValueError(f"unknown vision tower kind {spec['kind']!r} (dinov2 | siglip)")
    return tower


class VisionBackbone(nn.Module):
    """pixel_values float [N, 3·T, S, S] -> patch features float [N, P, sum of tower widths]."""

    def __init__(self, towers: list[dict[str, Any]]):
        super().__init__()
        self.specs = towers
        self.featurizer = build_tower(towers[0])
        self.fused_featurizer = build_tower(towers[1]) if len(towers) == 2 else None
        self.embed_dim = sum(t["hidden_size"] for t in towers)

    @staticmethod
    def _patches(tower: nn.Module, spec: dict[str, Any], pixels: torch.Tensor) -> torch.Tensor:
        hidden = tower(pixel_values=pixels).last_hidden_state
        prefix = 1 + spec["num_register_tokens"] if spec["kind"] == "dinov2" else 0
        return hidden[:, prefix:]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.fused_featurizer is None:
            return self._patches(self.featurizer, self.specs[0], pixel_values)
        first, second = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self._patches(self.featurizer, self.specs[0], first),
                          self._patches(self.fused_featurizer, self.specs[1], second)], dim=2)


class Projector(nn.Module):
    """OpenVLA's MLP projector: patch features [N, P, Dv] -> LLM embeddings [N, P, H].

    Fused backbones: fc1 Dv -> 4·Dv, GELU, fc2 -> H, GELU, fc3 H -> H; single: fc1, GELU, fc2.
    """

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.gelu(self.fc1(patches)))
        return self.fc3(F.gelu(x)) if self.fused else x


def preprocess_images(images: torch.Tensor, towers: list[dict[str, Any]]) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3·T, S, S]: resize to the towers' size S, normalise.

    The resize is bicubic with antialiasing (PIL-like) and skipped when H == W == S.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} "
                         f"{tuple(images.shape)}")
    size = towers[0]["image_size"]
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True,
                          align_corners=False).clamp_(0.0, 1.0)
    planes = []
    for spec in towers:
        mean = torch.tensor(spec["mean"], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(spec["std"], device=x.device).view(1, 3, 1, 1)
        planes.append((x - mean) / std)
    return torch.cat(planes, dim=1)
