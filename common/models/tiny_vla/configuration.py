"""The tiny VLA's config: sizes, input shapes and the data statistics that travel with it.

A transformers ``PretrainedConfig`` (``model_type = "pushcut_tiny_vla"``), saved as the
checkpoint's ``config.json``. Besides the layer sizes it stores the action tokenizer's
statistics (``action_stats``: q01/q99/num_bins/normalize_mask, see
:mod:`common.models.action_tokenizer`) and the proprio normalisation (mean/std), so a checkpoint decodes
its own tokens and reads raw env observations without outside files.
"""
from __future__ import annotations

from typing import Any, Optional

from transformers import PretrainedConfig

# Named size presets (ModelConfig.preset); ModelConfig.kwargs override single fields.
PRESETS: dict[str, dict[str, Any]] = {
    # 64x64 input: 16 patch + 8 keypoint + 8 text + 1 proprio + C action-query tokens
    # = 41 tokens, 4 layers (sized for SFT on 2 CPU cores).
    "default": dict(d_model=128, n_layers=4, n_heads=4, mlp_ratio=3,
                    vision_channels=[16, 32, 64], keypoints=32, max_text_len=128,
                    text_stride=16),
    # For tests: the same computation at a fraction of the cost.
    "micro": dict(d_model=32, n_layers=2, n_heads=2, mlp_ratio=2, vision_channels=[8, 8, 16],
                  keypoints=8, max_text_len=128, text_stride=16),
}


class TinyVLAConfig(PretrainedConfig):
    model_type = "pushcut_tiny_vla"

    def __init__(self, chunk_size: int = 8, action_dim: int = 7, num_bins: int = 256,
                 image_size: int = 64, num_views: int = 1, proprio_dim: int = 8,
                 d_model: int = 128, n_layers: int = 4, n_heads: int = 4, mlp_ratio: int = 4,
                 dropout: float = 0.0, vision_channels: Optional[list[int]] = None,
                 keypoints: int = 32, keypoints_per_token: int = 4, film: bool = True,
                 max_text_len: int = 128, text_stride: int = 16,
                 tokens_per_query: Optional[int] = None,
                 action_stats: Optional[dict[str, Any]] = None,
                 proprio_mean: Optional[list[float]] = None,
                 proprio_std: Optional[list[float]] = None,
                 initializer_range: float = 0.02, **kwargs):
        self.chunk_size = int(chunk_size)
        self.action_dim = int(action_dim)
        self.num_bins = int(num_bins)
        self.image_size = int(image_size)
        self.num_views = int(num_views)
        self.proprio_dim = int(proprio_dim)
        self.d_model = int(d_model)
        self.n_layers = int(n_layers)
        self.n_heads = int(n_heads)
        self.mlp_ratio = int(mlp_ratio)
        self.dropout = float(dropout)
        self.vision_channels = list(vision_channels or [16, 32, 64])
        self.keypoints = int(keypoints)
        self.keypoints_per_token = int(keypoints_per_token)
        self.film = bool(film)
        self.max_text_len = int(max_text_len)
        self.text_stride = int(text_stride)
        # None: one query per chunk step decoding its D tokens; 1: one query per token
        # (OpenVLA-OFT's layout, C*D queries, several times the compute).
        self.tokens_per_query = int(tokens_per_query or action_dim)
        self.action_stats = action_stats
        self.proprio_mean = proprio_mean
        self.proprio_std = proprio_std
        self.initializer_range = float(initializer_range)
        super().__init__(**kwargs)
        self.validate_sizes()

    @property
    def num_action_tokens(self) -> int:
        """K = C * D."""
        return self.chunk_size * self.action_dim

    @property
    def num_text_tokens(self) -> int:
        return self.max_text_len // self.text_stride

    @property
    def num_queries(self) -> int:
        return self.num_action_tokens // self.tokens_per_query

    @property
    def vision_grid(self) -> int:
        """Side of the patch grid (four stride-2 convolutions)."""
        return self.image_size // 16

    @property
    def num_vision_tokens(self) -> int:
        """Per camera: patch tokens, then keypoint tokens."""
        return self.vision_grid ** 2 + self.keypoints // self.keypoints_per_token

    def validate_sizes(self) -> None:
        """Raise ValueError naming the first inconsistent size."""
        checks = [
            (self.d_model % self.n_heads == 0, f"d_model {self.d_model} is not a multiple of "
                                               f"n_heads {self.n_heads}"),
            (self.max_text_len % self.text_stride == 0, f"max_text_len {self.max_text_len} is "
                                                        f"not a multiple of text_stride {self.text_stride}"),
            (len(self.vision_channels) == 3, f"vision_channels needs 3 widths (1/2, 1/4, 1/8 "
                                             f"resolution), got {self.vision_channels}"),
            (self.image_size % 16 == 0 and self.image_size >= 16,
             f"image_size {self.image_size} is not a multiple of 16 (4 stride-2 convolutions)"),
            (self.keypoints >= 0 and self.keypoints_per_token >= 1 and
             self.keypoints % self.keypoints_per_token == 0,
             f"keypoints {self.keypoints} is not a multiple of keypoints_per_token "
             f"{self.keypoints_per_token}"),
            (self.num_action_tokens % self.tokens_per_query == 0,
             f"tokens_per_query {self.tokens_per_query} does not divide C*D = "
             f"{self.num_action_tokens}"),
            (min(self.chunk_size, self.action_dim, self.num_views, self.proprio_dim) >= 1,
             "chunk_size, action_dim, num_views and proprio_dim must be >= 1"),
            (self.num_bins >= 2, f"num_bins {self.num_bins} < 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TinyVLAConfig: {message}")
