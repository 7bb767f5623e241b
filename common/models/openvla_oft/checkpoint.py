"""The published OpenVLA(-OFT) checkpoint layout and its parameter names.

A checkpoint directory holds ``config.json``, ``model.safetensors.index.json`` plus shards
``model-0000i-of-0000n.safetensors`` (or one ``model.safetensors``), and
``dataset_statistics.json`` (per-dataset action q01/q99/mask), optionally a Llama tokenizer.

Parameter names in it are OpenVLA's (the timm ViTs of Prismatic, exported through
``modeling_prismatic.py``)::

    vision_backbone.featurizer.{cls_token, reg_token, pos_embed, patch_embed.proj.*,
        blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.scale_factor, norm2, mlp.fc1, mlp.fc2,
        ls2.scale_factor}.*, norm.*}                            (DINOv2 ViT-L/14-reg4)
    vision_backbone.fused_featurizer.{pos_embed, patch_embed.proj.*, blocks.{i}.{norm1,
        attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*, norm.*, attn_pool.*}  (SigLIP)
    projector.fc1|fc2|fc3.*        language_model.model.*, language_model.lm_head.weight

They map onto the transformers modules here: timm's fused ``qkv`` splits into q/k/v;
timm's DINOv2 position table has no CLS row (``no_embed_class``), so the CLS row here is
zero on load and folded into ``cls_token`` on save; ``ls*.gamma`` (Prismatic's own name) is
accepted for ``ls*.scale_factor``. OpenVLA never uses the last block, the final norm or
SigLIP's pooling head of either tower (it reads the second-to-last block), so they are not
built and are skipped on load; save writes the blocks that exist.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import save_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
STATS_FILE = "dataset_statistics.json"
TOWER_PREFIXES = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")

_DINO_NAMES = [
    ("cls_token", "embeddings.cls_token"),
    ("reg_token", "embeddings.register_tokens"),
    ("patch_embed.proj.{p}", "embeddings.patch_embeddings.projection.{p}"),
    ("blocks.{i}.norm{n}.{p}", "encoder.layer.{i}.norm{n}.{p}"),
    ("blocks.{i}.attn.proj.{p}", "encoder.layer.{i}.attention.o_proj.{p}"),
    ("blocks.{i}.ls{n}.scale_factor", "encoder.layer.{i}.layer_scale{n}.lambda1"),
    ("blocks.{i}.ls{n}.gamma", "encoder.layer.{i}.layer_scale{n}.lambda1"),
    ("blocks.{i}.mlp.fc{n}.{p}", "encoder.layer.{i}.mlp.fc{n}.{p}"),
]
_SIGLIP_NAMES = [
    ("patch_embed.proj.{p}", "embeddings.patch_embedding.{p}"),
    ("blocks.{i}.norm{n}.{p}", "encoder.layers.{i}.layer_norm{n}.{p}"),
    ("blocks.{i}.attn.proj.{p}", "encoder.layers.{i}.self_attn.out_proj.{p}"),
    ("blocks.{i}.mlp.fc{n}.{p}", "encoder.layers.{i}.mlp.fc{n}.{p}"),
]
_QKV = {"dinov2": ("blocks.{i}.attn.qkv.{p}", "encoder.layer.{i}.attention.{x}_proj.{p}"),
        "siglip": ("blocks.{i}.attn.qkv.{p}", "encoder.layers.{i}.self_attn.{x}_proj.{p}")}
_POS = {"dinov2": "embeddings.position_embeddings",
        "siglip": "embeddings.position_embedding.weight"}
_GROUPS = {"i": r"(?P<i>\d+)", "n": r"(?P<n>[12])", "p": r"(?P<p>weight|bias)",
           "x": r"(?P<x>[qkv])"}


def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in _GROUPS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(pattern + "$")


def _rules(kind: str, reverse: bool) -> list[tuple[re.Pattern, str]]:
    names = _DINO_NAMES if kind == "dinov2" else _SIGLIP_NAMES
    if reverse:   # both ls*.gamma and ls*.scale_factor load; save writes scale_factor
        return [(_regex(ours), timm) for timm, ours in names if not timm.endswith("gamma")]
    return [(_regex(timm), ours) for timm, ours in names]


def _unused_timm_key(key: str, depth: int) -> bool:
    """Parts of a timm tower that OpenVLA never runs (last block, final norm, heads)."""
    return (key.startswith(f"blocks.{depth - 1}.") or key.split(".")[0] in
            {"norm", "fc_norm", "head", "attn_pool", "norm_pre"})


def tower_to_ours(spec: dict[str, Any], key: str, value: torch.Tensor
                  ) -> list[tuple[str, torch.Tensor]] | None:
    """One timm tower key -> [(our key, tensor)]; [] for unused parts; None if unknown."""
    kind = spec["kind"]
    if _unused_timm_key(key, spec["depth"]):
        return []
    if key == "pos_embed":
        if kind == "dinov2":    # timm adds no position to CLS: a zero row here is the same
            return [(_POS[kind], torch.cat([torch.zeros_like(value[:, :1]), value], dim=1))]
        return [(_POS[kind], value.reshape(value.shape[-2], value.shape[-1]))]
    match = _regex(_QKV[kind][0]).match(key)
    if match:
        parts = value.chunk(3, dim=0)
        return [(_QKV[kind][1].format(x=x, **match.groupdict()), part.contiguous())
                for x, part in zip("qkv", parts)]
    for pattern, template in _rules(kind, reverse=False):
        match = pattern.match(key)
        if match:
            return [(template.format(**match.groupdict()), value)]
    return None


def tower_to_published(spec: dict[str, Any], ours: dict[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """Our tower state dict (keys without the tower prefix) -> timm names."""
    kind, out, qkv = spec["kind"], {}, {}
    pos = ours[_POS[kind]]
    if kind == "dinov2":
        out["pos_embed"] = pos[:, 1:].contiguous()
        out["cls_token"] = (ours["embeddings.cls_token"] + pos[:, :1]).contiguous()
    else:
        out["pos_embed"] = pos.unsqueeze(0).contiguous()
    qkv_re = _regex(_QKV[kind][1])
    for key, value in ours.items():
        match = qkv_re.match(key)
        if match:
            g = match.groupdict()
            qkv.setdefault((int(g["i"]), g["p"]), {})[g["x"]] = value
            continue
        if key == _POS[kind] or key == "embeddings.cls_token":
            continue
        for pattern, template in _rules(kind, reverse=True):
            hit = pattern.match(key)
            if hit:
                out[template.format(**hit.groupdict())] = value.contiguous()
                break
        else:
            raise KeyError(f"no published name for vision parameter {key!r}")
    for (i, p), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_published(state: dict[str, torch.Tensor], towers: list[dict[str, Any]]
                 ) -> dict[str, torch.Tensor]:
    """Our full state dict -> published OpenVLA names (fresh contiguous tensors)."""
    out = {k: v.contiguous() for k, v in state.items() if not k.startswith(TOWER_PREFIXES)}
    for prefix, spec in zip(TOWER_PREFIXES, towers):
        tower = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        out.update({prefix + k: v for k, v in tower_to_published(spec, tower).items()})
    return out


def from_published(key: str, value: torch.Tensor, towers: list[dict[str, Any]]
                   ) -> list[tuple[str, torch.Tensor]] | None:
    """One published key -> [(our key, tensor)]; [] = skipped; None = not an OpenVLA key."""
    for prefix, spec in zip(TOWER_PREFIXES, towers):
        if key.startswith(prefix):
            mapped = tower_to_ours(spec, key[len(prefix):], value)
            return None if mapped is None else [(prefix + k, v) for k, v in mapped]
    if key.startswith(("projector.", "language_model.")):
        return [(key, value)]
    return None


def write_weights(state: dict[str, torch.Tensor], path: Path, max_shard_size: str | int) -> None:
    """Shards (``model-0000i-of-0000n.safetensors`` + index) or one ``model.safetensors``."""
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size,
                                               filename_pattern="model{suffix}.safetensors")
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n].detach().cpu() for n in names}, str(path / filename),
                  metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def read_weights(path: Path) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the tensors of a checkpoint directory, one shard at a time."""
    if (path / INDEX_FILE).exists():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (path / SINGLE_FILE).exists():
        files = [SINGLE_FILE]
    else:
        raise FileNotFoundError(f"{path}: no {INDEX_FILE} or {SINGLE_FILE}")
    for name in files:
        with safe_open(str(path / name), framework="pt") as shard:
            yield {key: shard.get_tensor(key) for key in shard.keys()}


def load_published(model: torch.nn.Module, path: Path, towers: list[dict[str, Any]],
                   progress: Callable[[Iterator], Iterator] = iter) -> None:
    """Copy a published checkpoint's weights into ``model``, shard by shard.

    Raises ValueError naming unknown keys, missing parameters or shape mismatches.
    """
    expected = dict(model.state_dict())
    loaded, unknown = set(), []
    for shard in progress(read_weights(path)):
        ours = {}
        for key, value in shard.items():
            mapped = from_published(key, value, towers)
            if mapped is None:
                unknown.append(key)
                continue
            for name, tensor in mapped:
                if name not in expected:
                    unknown.append(key)
                elif tuple(tensor.shape) != tuple(expected[name].shape):
                    raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)}, the "
                                     f"model's {name} is {tuple(expected[name].shape)}")
                else:
                    ours[name] = tensor
        model.load_state_dict(ours, strict=False)
        loaded.update(ours)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} parameters are not part of this OpenVLA "
                         f"model (shapes in config.json?): {sorted(unknown)[:8]}")
    missing = sorted(set(expected) - loaded)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} parameters: {missing[:8]}")
