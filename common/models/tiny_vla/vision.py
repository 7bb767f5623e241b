"""The tiny VLA's vision encoder: camera images -> patch tokens and keypoint tokens.

Two kinds of token, because the policy must both recognise things and reach for them:
- patch tokens, a g×g grid (g = H/16) from a stride-2 conv stem: what is where, coarsely;
- keypoint tokens: a spatial softmax over a 1/4-resolution feature map gives, per channel,
  the expected (x, y) of what that channel responds to, precise to a fraction of a pixel
  even for objects a few pixels wide (the standard visuomotor-policy trick, Levine et al.
  2016); ``keypoints_per_token`` of them share one token.
The input carries two coordinate channels (CoordConv), so that features know where they are,
and the 1/4-resolution features are FiLM-modulated by the instruction (per-channel scale and
shift), so that keypoints can follow the object the instruction names.
"""
from __future__ import annotations

import torch
from torch import nn

from common.models.tiny_vla.configuration import TinyVLAConfig


def _conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
            nn.GroupNorm(min(8, c_out), c_out), nn.GELU()]


def coordinate_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """-> [h*w, 2] (x, y) pixel-centre coordinates in [-1, 1], dtype/device of ``like``."""
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, dtype=like.dtype, device=like.device)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, dtype=like.dtype, device=like.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).view(h * w, 2)


def spatial_softmax(features: torch.Tensor) -> torch.Tensor:
    """features [N, K, h, w] -> expected coordinates [N, K, 2] under softmax over h*w."""
    N, K, h, w = features.shape
    attn = torch.softmax(features.float().flatten(2), dim=-1)          # [N, K, h*w]
    return (attn @ coordinate_grid(h, w, attn)).to(features.dtype)


class VisionEncoder(nn.Module):
    """images float [N, 3, H, W] in [-0.5, 0.5] -> tokens [N, g*g + kp_tokens, d]."""

    @property
    def film_dim(self) -> int:
        return 2 * self.focus.out_channels

    def __init__(self, cfg: TinyVLAConfig):
        super().__init__()
        c1, c2, c3 = cfg.vision_channels
        d = cfg.d_model
        self.stem = nn.Sequential(*_conv(5, c1, 2), *_conv(c1, c2, 2))
        self.focus = nn.Conv2d(c2, c2, 3, padding=1)
        self.focus_norm = nn.GroupNorm(min(8, c2), c2)
        self.act = nn.GELU()
        self.patches = nn.Sequential(*_conv(c2, c3, 2), nn.Conv2d(c3, d, 3, stride=2, padding=1))
        self.per_token = cfg.keypoints_per_token
        self.keypoints = nn.Conv2d(c2, cfg.keypoints, 1) if cfg.keypoints else None
        self.keypoint_proj = nn.Linear(2 * self.per_token, d) if cfg.keypoints else None

    def forward(self, x: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        """film: [N, 2*c2] (scale, shift) from the instruction, or None."""
        N, _, H, W = x.shape
        coords = coordinate_grid(H, W, x).T.reshape(1, 2, H, W).expand(N, -1, -1, -1)
        feats = self.focus_norm(self.focus(self.stem(torch.cat([x, coords], dim=1))))
        if film is not None:
            scale, shift = film[:, :, None, None].chunk(2, dim=1)
            feats = feats * (1 + scale) + shift
        feats = self.act(feats)
        tokens = self.patches(feats).flatten(2).transpose(1, 2)             # [N, g*g, d]
        if self.keypoints is None:
            return tokens
        kp = spatial_softmax(self.keypoints(feats))                         # [N, K, 2]
        kp_tokens = self.keypoint_proj(kp.reshape(N, -1, 2 * self.per_token))
        return torch.cat([tokens, kp_tokens], dim=1)
