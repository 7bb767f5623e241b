"""OpenVLA-OFT behind pushcut's Policy interface (common/models/policy.py), as SimpleVLA-RL trains it.

In: an :class:`~common.models.policy.ObsBatch` (uint8 camera images [B, V, H, W, 3], instructions).
Out: K = C·D action tokens per sample, decoded in ONE forward pass (OFT parallel decoding):
each is a 256-way categorical over the action-token ids 31744..31999 of the Llama vocabulary,
reported as bin indices 0..255 (common/models/openvla_oft/action_bins.py); log-probs are of
softmax(logits / T) restricted to those 256 ids.

Architecture (common/models/openvla/): DINOv2 + SigLIP patch features (second-to-last
block), MLP projector, Llama-2 (transformers' ``LlamaForCausalLM``). The class is a
``PreTrainedModel`` whose ``forward`` does all parameter work, so FSDP2 (which unshards in
forward hooks) can wrap it: shard each of :meth:`fsdp_units`, then the model itself.

Checkpoints: :meth:`OpenVLAOFTPolicy.from_pretrained` reads the published OpenVLA(-OFT)
layout (config.json with model_type ``openvla``, sharded safetensors + index,
dataset_statistics.json, optional tokenizer); :meth:`save_pretrained` writes the same.
Built from the run config by :meth:`OpenVLAOFTPolicy.from_model_config`
(``pushcut <command> model=openvla_oft`` or ``model=openvla_oft_7b``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, PreTrainedModel

from common.models import DTYPES
from common.models.openvla_oft import action_bins, checkpoint
from common.models.openvla_oft.configuration import PRESETS, OpenVLAOFTConfig, preset_config
from common.models.openvla_oft.prompt import (STOP_ID, PromptEncoder, attention_bias, layout_index,
                                          position_ids)
from common.models.openvla_oft.vision import Projector, VisionBackbone, preprocess_images
from common.models.token_policy import TokenPolicyMixin
from common.models.policy import ObsBatch

MODEL_TYPES = ("openvla", "openvla_oft")     # config.json model_type values this class loads


class OpenVLAOFTPolicy(TokenPolicyMixin, PreTrainedModel):
    """OpenVLA(-OFT) with parallel decoding of K action tokens; fills common.models.policy.Policy."""

    config_class = OpenVLAOFTConfig
    PRESETS = PRESETS            # model.preset names -> config fields (configuration.py)
    # from_model_config(..., device=) creates the weights on the device: a 7B model never
    # passes through host memory in float32
    BUILDS_ON_DEVICE = True
    base_model_prefix = "openvla"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["LlamaDecoderLayer", "Dinov2WithRegistersLayer", "SiglipEncoderLayer"]

    def __init__(self, config: OpenVLAOFTConfig):
        super().__init__(config)
        self.vision_backbone = VisionBackbone(config.vision_towers)
        self.projector = Projector(self.vision_backbone.embed_dim, config.text_config.hidden_size,
                                   fused=config.use_fused_vision_backbone)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.prompts = PromptEncoder(None)
        self.post_init()

    # --- Policy attributes -------------------------------------------------------------
    @property
    def num_bins(self) -> int:
        return self.config.n_action_bins

    def fsdp_units(self) -> list[torch.nn.Module]:
        """Blocks to ``fully_shard`` one by one before the whole model (vision and LLM layers).

        Everything else (embeddings, projector, final norm, LM head) belongs to the root unit:
        forward uses them directly, so they must not be sharded as units of their own.
        """
        vb = self.vision_backbone
        towers = [vb.featurizer.encoder.layer] + (
            [vb.fused_featurizer.encoder.layers] if vb.fused_featurizer is not None else [])
        return [m for layers in towers for m in layers] + list(self.language_model.model.layers)

    # --- the forward pass ----------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Action-bin logits of one parallel decoding pass.

        pixel_values float [B, V, 3·T, S, S] (V cameras, T vision towers); input_ids int64
        [B, L] left-padded prompt ids starting with BOS; attention_mask [B, L] (1 = token).
        -> logits [B, K, 256] in bin order (bin b = token id 31999 - b), model dtype.
        """
        cfg, (B, V) = self.config, pixel_values.shape[:2]
        K = cfg.num_action_tokens
        patches = self.vision_backbone(pixel_values.flatten(0, 1).to(self.dtype))
        image = self.projector(patches).reshape(B, V * patches.shape[1], -1)     # [B, V·P, H]
        embed = self.language_model.get_input_embeddings()
        text = embed(input_ids)                                                   # [B, L, H]
        stop = embed(torch.full((B, 1), STOP_ID, dtype=torch.long, device=input_ids.device))
        slots = torch.zeros(B, K, text.shape[-1], dtype=text.dtype, device=text.device)
        source = torch.cat([text, image.to(text.dtype), slots, stop], dim=1)
        index, valid = layout_index(attention_mask, image.shape[1], K + 1)
        sequence = torch.gather(source, 1, index.unsqueeze(-1).expand(-1, -1, source.shape[-1]))
        start = sequence.shape[1] - (K + 1)
        hidden = self.language_model.model(
            inputs_embeds=sequence, position_ids=position_ids(valid), use_cache=False,
            attention_mask=attention_bias(valid, K + 1, cfg.attention_mode, sequence.dtype),
        ).last_hidden_state[:, start - 1:start - 1 + K]                          # [B, K, H]
        # Only the 256 action rows of the LM head: the other 31808 logits never matter.
        first = cfg.base_vocab_size - cfg.n_action_bins
        rows = self.language_model.lm_head.weight[first:cfg.base_vocab_size]
        return F.linear(hidden, rows).flip(-1)

    def prepare_inputs(self, obs: ObsBatch) -> dict[str, torch.Tensor]:
        """ObsBatch -> forward() kwargs on the model's device."""
        images = np.asarray(obs.images)
        V = self.config.num_images_in_input
        if images.ndim != 5 or images.shape[1] < V or images.shape[0] != len(obs):
            raise ValueError(f"obs.images must be uint8 [B={len(obs)}, V>={V}, H, W, 3], "
                             f"got {images.dtype} {images.shape}")
        device = self.device
        pixels = torch.from_numpy(np.ascontiguousarray(images[:, :V])).to(device)
        pixels = preprocess_images(pixels.flatten(0, 1), self.config.vision_towers)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        input_ids, mask = self.prompts.encode(obs.instructions, pad)   # pads are masked out
        return {"pixel_values": pixels.unflatten(0, (len(obs), V)),
                "input_ids": input_ids.to(device), "attention_mask": mask.to(device)}

    def sequence_length(self, obs: ObsBatch) -> int:
        """Positions one forward pass runs for ``obs``: prompt + image patches + K + STOP."""
        prompt = max(len(self.prompts.encode_one(text)) for text in obs.instructions)
        cfg = self.config
        return prompt + cfg.num_images_in_input * cfg.num_patches + cfg.num_action_tokens + 1

    @property
    def action_tokenizer(self) -> action_bins.OpenVLAActionTokenizer:
        """Actions <-> bins with OpenVLA's rules and the active dataset statistics."""
        stats = action_bins.action_stats(self.config.norm_stats, self.config.unnorm_key,
                                         self.config.action_dim)
        return action_bins.OpenVLAActionTokenizer(*stats)

    def actions_to_tokens(self, actions: np.ndarray) -> np.ndarray:
        """env actions float [B, C, D] -> bins int64 [B, K] (for supervised warm starts)."""
        actions = np.asarray(actions)
        if actions.ndim != 3 or actions.shape[1:] != (self.chunk_size, self.action_dim):
            raise ValueError(f"actions must be [B, {self.chunk_size}, {self.action_dim}], "
                             f"got {actions.shape}")
        return self.action_tokenizer.encode_chunk(actions)

    def set_action_stats(self, q01, q99, mask=None, dataset: str = "pushcut") -> None:
        """Make ``dataset``'s action q01/q99 (and un-normalised dims mask) the active statistics."""
        q01, q99 = np.asarray(q01, float).tolist(), np.asarray(q99, float).tolist()
        mask = [True] * len(q01) if mask is None else np.asarray(mask, bool).tolist()
        stats = dict(self.config.norm_stats or {})
        stats[dataset] = {"action": {"q01": q01, "q99": q99, "mask": mask}}
        self.config.norm_stats, self.config.unnorm_key = stats, dataset
        self.action_tokenizer   # validates the dimensions now rather than at the first decode

    def set_data_stats(self, tokenizer: Any, proprio_mean: Any = None,
                       proprio_std: Any = None) -> None:
        """pushcut's SFT hook: take the demonstrations' action statistics (an ActionTokenizer
        or anything with q01, q99, normalize_mask). OpenVLA-OFT here has no proprio input."""
        self.set_action_stats(tokenizer.q01, tokenizer.q99, tokenizer.normalize_mask)

    # --- construction and checkpoints ------------------------------------------------------
    @classmethod
    def build(cls, config: OpenVLAOFTConfig, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> "OpenVLAOFTPolicy":
        """A randomly initialised model created directly in ``dtype`` on ``device``
        (no float32 CPU copy of 7B weights on the way)."""
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                return cls(config)
        finally:
            torch.set_default_dtype(default)

    @classmethod
    def from_model_config(cls, model_cfg: Any, action_stats: dict[str, Any] | None = None,
                          device: str | torch.device = "cpu") -> "OpenVLAOFTPolicy":
        """Build from pushcut's ModelConfig: its checkpoint if set, else a random ``preset``.

        ``action_stats``: demonstrations' ``{"q01", "q99", "normalize_mask"?}``
        (common.models.action_tokenizer.ActionTokenizer.to_dict()), made the active statistics.
        """
        if model_cfg.num_bins != 256:
            raise ValueError(f"openvla_oft uses OpenVLA's 256 action bins, got num_bins="
                             f"{model_cfg.num_bins}")
        kwargs = dict(model_cfg.kwargs)
        # kwargs pushcut's SFT sets for every model: views are cameras here; image size and
        # proprio do not apply (images are resized, OpenVLA-OFT here takes no proprio)
        if "num_views" in kwargs:
            kwargs["num_images_in_input"] = kwargs.pop("num_views")
        for unused in ("image_size", "proprio_dim"):
            kwargs.pop(unused, None)
        overrides = dict(chunk_size=model_cfg.chunk_size, action_dim=model_cfg.action_dim,
                         **kwargs)
        dtype = DTYPES[model_cfg.dtype]     # one of ModelConfig's dtype names (its rule)
        if model_cfg.checkpoint:
            policy = cls.from_pretrained(model_cfg.checkpoint, dtype=dtype, device=device,
                                         **overrides)
        else:
            policy = cls.build(preset_config(model_cfg.preset, **overrides), dtype, device)
        if action_stats is not None:
            policy.set_action_stats(action_stats["q01"], action_stats["q99"],
                                    action_stats.get("normalize_mask"))
        if model_cfg.gradient_checkpointing:
            policy.activation_checkpointing_enable()
        return policy

    def save_pretrained(self, save_directory: str, max_shard_size: str | int = "5GB",
                        **_: Any) -> None:
        """Write the published layout: config.json, shards + index, dataset_statistics.json."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(str(path))
        state = checkpoint.to_published(self.state_dict(), self.config.vision_towers)
        checkpoint.write_weights(state, path, max_shard_size)
        (path / checkpoint.STATS_FILE).write_text(
            json.dumps(self.config.norm_stats or {}, indent=2) + "\n")
        if self.prompts.tokenizer is not None:
            self.prompts.tokenizer.save_pretrained(str(path))

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", **overrides: Any) -> "OpenVLAOFTPolicy":
        """Load a published OpenVLA(-OFT) directory; ``overrides`` set config fields."""
        root = Path(path)
        config_file = root / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(f"{root}: no config.json (not a checkpoint directory)")
        raw = json.loads(config_file.read_text())
        if raw.get("model_type") not in MODEL_TYPES:
            raise ValueError(f"{config_file}: model_type {raw.get('model_type')!r} is not "
                             f"one of {MODEL_TYPES}")
        if (root / checkpoint.STATS_FILE).exists():
            raw["norm_stats"] = json.loads((root / checkpoint.STATS_FILE).read_text()) or None
        if "attention_mode" not in raw:
            # Published OFT checkpoints were trained with full bidirectional attention.
            raw["attention_mode"] = "bidirectional"
        raw.update(overrides)
        config = OpenVLAOFTConfig(**{k: v for k, v in raw.items() if k != "model_type"})
        model = cls.build(config, dtype, device)
        checkpoint.load_published(model, root, config.vision_towers)
        model.prompts = PromptEncoder.from_dir(root)
        return model
