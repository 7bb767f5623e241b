"""The tiny VLA: a ~1 M parameter vision-language-action policy that trains on a CPU.

In: an :class:`~common.models.policy.ObsBatch` (images uint8 [B, V, H, W, 3], proprio float32
[B, P], B instructions). Out: C·D categorical distributions over ``num_bins`` action bins,
from ONE forward pass (OpenVLA-OFT-style parallel decoding).

Sequence, per sample (default sizes, 64×64 camera): per camera 16 patch tokens and 8
keypoint tokens (:mod:`common.models.tiny_vla.vision`; its features FiLM-modulated by the
instruction), 8 text tokens (UTF-8 bytes embedded and merged 16 at a time by a strided
conv), one proprio token, and C learned action queries; a pre-norm transformer attends
bidirectionally over all of it (text padding masked) and a linear head turns each action
query into the ``num_bins`` logits of ``tokens_per_query`` action tokens (default D: one
query per chunk step; ``tokens_per_query=1`` is OpenVLA-OFT's one query per token, at
several times the compute).

``TinyVLAPolicy`` is itself the ``PreTrainedModel`` and fills the :class:`Policy` protocol
(through :class:`~common.models.token_policy.TokenPolicyMixin`);
``sample``/``log_probs`` call ``self(...)``, so every parameter use goes through
``forward`` (FSDP2's ``fully_shard`` unshards parameters in forward hooks). Built by
``common.models.build_policy``; loaded by ``common.models.load_policy`` or
``TinyVLAPolicy.from_pretrained(path)``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from common.models.tiny_vla.configuration import PRESETS, TinyVLAConfig
from common.models.tiny_vla.vision import VisionEncoder
from common.models.token_policy import TokenPolicyMixin
from common.models.policy import ObsBatch
from common.models.tiny_vla.text import PAD_ID, VOCAB_SIZE, encode_instructions
from common.models.action_tokenizer import ActionTokenizer


class TextEncoder(nn.Module):
    """byte ids int64 [B, L] -> text tokens [B, L/s, d] and their mask bool [B, L/s]."""

    def __init__(self, cfg: TinyVLAConfig):
        super().__init__()
        width = max(cfg.d_model // 4, 8)
        self.stride = cfg.text_stride
        self.embed = nn.Embedding(VOCAB_SIZE, width, padding_idx=PAD_ID)
        self.merge = nn.Conv1d(width, cfg.d_model, kernel_size=self.stride, stride=self.stride)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.merge(self.embed(ids).transpose(1, 2)).transpose(1, 2)
        mask = ids.view(ids.shape[0], -1, self.stride).ne(PAD_ID).any(-1)
        return tokens, mask


class Block(GradientCheckpointingLayer):
    """Pre-norm transformer block: x [B, S, d], attn_mask bool [B, 1, 1, S] -> [B, S, d]."""

    def __init__(self, cfg: TinyVLAConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * d, d), nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, S, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, S, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(a.transpose(1, 2).reshape(B, S, d))
        return x + self.mlp(self.norm2(x))


class TinyVLAPolicy(TokenPolicyMixin, PreTrainedModel):
    config_class = TinyVLAConfig
    PRESETS = PRESETS            # model.preset names -> config fields (configuration.py)
    base_model_prefix = "tiny_vla"
    main_input_name = "images"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]

    def __init__(self, config: TinyVLAConfig):
        super().__init__(config)
        d, V = config.d_model, config.num_views
        self.vision = VisionEncoder(config)
        self.text = TextEncoder(config)
        # instruction -> FiLM of the vision features (None: vision ignores the instruction)
        self.film = nn.Linear(config.num_text_tokens * d, self.vision.film_dim) \
            if config.film else None
        self.proprio = nn.Linear(config.proprio_dim, d)
        self.vision_pos = nn.Parameter(torch.zeros(V, config.num_vision_tokens, d))
        self.text_pos = nn.Parameter(torch.zeros(config.num_text_tokens, d))
        self.action_queries = nn.Parameter(torch.zeros(config.num_queries, d))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.tokens_per_query * config.num_bins)
        self._tokenizer: ActionTokenizer | None = None
        self.post_init()

    @classmethod
    def from_model_config(cls, model_cfg, action_stats: dict | None = None) -> "TinyVLAPolicy":
        """common.config.schema.ModelConfig -> fresh model: preset sizes, then C/D/bins from
        the ModelConfig, then ``model_cfg.kwargs`` (any TinyVLAConfig field)."""
        if model_cfg.preset not in PRESETS:
            raise ValueError(f"model.preset {model_cfg.preset!r} is not a tiny_vla preset "
                             f"({sorted(PRESETS)})")
        sizes = {**PRESETS[model_cfg.preset], "chunk_size": model_cfg.chunk_size,
                 "action_dim": model_cfg.action_dim, "num_bins": model_cfg.num_bins,
                 **dict(model_cfg.kwargs)}
        policy = cls(TinyVLAConfig(**sizes))
        if action_stats is not None:
            policy.set_data_stats(ActionTokenizer.from_dict(action_stats))
        return policy

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' guarded init functions skip tensors already loaded from a checkpoint.
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            # He init keeps the conv stem's activations O(1); N(0, 0.02) would nearly zero them.
            init.kaiming_normal_(module.weight, nonlinearity="relu")
            init.zeros_(module.bias)
            return
        super()._init_weights(module)
        if module is self:
            std = self.config.initializer_range
            for p in (self.vision_pos, self.text_pos, self.action_queries):
                init.normal_(p, std=std)

    # ---- Policy attributes -------------------------------------------------------------
    @property
    def num_bins(self) -> int:
        return self.config.num_bins

    @property
    def action_tokenizer(self) -> ActionTokenizer:
        if self._tokenizer is None:
            stats = self.config.action_stats
            self._tokenizer = ActionTokenizer.from_dict(stats) if stats else \
                ActionTokenizer.identity(self.action_dim, self.num_bins)
        return self._tokenizer

    def set_data_stats(self, tokenizer: ActionTokenizer, proprio_mean: np.ndarray | None = None,
                       proprio_std: np.ndarray | None = None) -> None:
        """Store the action tokenizer's and the proprio statistics in the config."""
        if tokenizer.action_dim != self.action_dim or tokenizer.num_bins != self.num_bins:
            raise ValueError(f"tokenizer has D={tokenizer.action_dim}, {tokenizer.num_bins} bins; "
                             f"model has D={self.action_dim}, {self.num_bins} bins")
        self.config.action_stats = tokenizer.to_dict()
        self._tokenizer = None
        if proprio_mean is not None:
            self.config.proprio_mean = np.asarray(proprio_mean, np.float64).tolist()
            self.config.proprio_std = np.maximum(np.asarray(proprio_std, np.float64),
                                                 1e-6).tolist()

    # ---- the network -------------------------------------------------------------------
    def forward(self, images: torch.Tensor, proprio: torch.Tensor,
                text_ids: torch.Tensor) -> torch.Tensor:
        """images uint8 [B, V, H, W, 3], proprio float [B, P] (normalised), text_ids int64
        [B, L] -> logits float [B, K, num_bins]."""
        B, V = images.shape[:2]
        dtype = self.action_queries.dtype
        x = images.to(dtype).permute(0, 1, 4, 2, 3).flatten(0, 1) / 255.0 - 0.5
        txt, txt_mask = self.text(text_ids)
        film = None
        if self.film is not None:
            film = self.film((txt * txt_mask.unsqueeze(-1)).flatten(1)).repeat_interleave(V, 0)
        vis = self.vision(x, film).view(B, V, -1, self.config.d_model) + self.vision_pos
        seq = torch.cat([vis.flatten(1, 2), txt + self.text_pos,
                         self.proprio(proprio.to(dtype)).unsqueeze(1),
                         self.action_queries.expand(B, -1, -1)], dim=1)
        keep = torch.ones(B, seq.shape[1], dtype=torch.bool, device=seq.device)
        start = vis.shape[1] * V
        keep[:, start:start + txt_mask.shape[1]] = txt_mask
        attn_mask = keep[:, None, None, :]
        for block in self.blocks:
            seq = block(seq, attn_mask)
        out = self.head(self.norm(seq[:, -self.config.num_queries:]))
        return out.view(B, self.config.num_action_tokens, self.config.num_bins)

    # ---- Policy methods ----------------------------------------------------------------
    def prepare_inputs(self, obs: ObsBatch) -> dict[str, torch.Tensor]:
        """ObsBatch -> forward()'s tensors on the model's device (checks shapes)."""
        cfg = self.config
        images, proprio = np.asarray(obs.images), np.asarray(obs.proprio, np.float32)
        B = len(obs.instructions)
        want = (B, cfg.num_views, cfg.image_size, cfg.image_size, 3)
        if images.dtype != np.uint8 or images.shape != want:
            raise ValueError(f"ObsBatch.images: {images.dtype} {images.shape}, "
                             f"model expects uint8 {want}")
        if proprio.shape != (B, cfg.proprio_dim):
            raise ValueError(f"ObsBatch.proprio: shape {proprio.shape}, model expects "
                             f"{(B, cfg.proprio_dim)}")
        if cfg.proprio_mean is not None:
            proprio = (proprio - np.asarray(cfg.proprio_mean, np.float32)) / \
                np.asarray(cfg.proprio_std, np.float32)
        device = self.action_queries.device
        return {"images": torch.from_numpy(np.ascontiguousarray(images)).to(device),
                "proprio": torch.from_numpy(np.ascontiguousarray(proprio)).to(device),
                "text_ids": torch.from_numpy(
                    encode_instructions(obs.instructions, cfg.max_text_len)).to(device)}
