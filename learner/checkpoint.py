"""Learner checkpoints: write atomically, keep the last k, find and read the latest.

In: full (unsharded, CPU) model and optimiser state dicts from rank 0 of the learner, its
``policy_version``, the store's consumption marks, RNG states and small extras (filter
counts). Out: one directory per version under ``learner.checkpoint_dir``::

    version-00000012/
      policy/              save_pretrained export (config.json + safetensors): what
                           `pushcut eval model.checkpoint=...` and actors load
      optimizer.safetensors  AdamW moments, 'state/<param>/<key>'
      rng.safetensors        torch (and CUDA) generator states
      state.json             policy_version, optimiser param groups, consumption marks,
                             numpy/python RNG states, extras

Nothing is pickled. A checkpoint is written into a hidden temporary directory, fsynced and
renamed into place, so a crash never leaves a half-written ``version-*`` directory; older
ones beyond ``keep`` are then removed. Used by learner/learner_process.py, which resumes from
:func:`latest_checkpoint` automatically.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PATTERN = re.compile(r"^version-(\d{8,})$")


@dataclass
class Checkpoint:
    path: Path
    policy_version: int
    optimizer: dict[str, Any] | None            # nested torch optimiser state dict
    consumption_marks: dict[str, str]
    rng: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def policy_dir(self) -> Path:
        return self.path / "policy"


def _flatten_optimizer(optim_sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for param, entry in optim_sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{param}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param}/{key}"] = value
    return tensors, {"param_groups": optim_sd["param_groups"], "state_scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, rest = name.split("/", 1)
        param, key = rest.rsplit("/", 1)
        state.setdefault(param, {})[key] = value
    for name, value in meta["state_scalars"].items():
        param, key = name.rsplit("/", 1)
        state.setdefault(param, {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensor states, JSON-able states) of torch, CUDA, numpy's global and python's RNG."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda/{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    return tensors, {"numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
                     "python": [py[0], list(py[1]), py[2]]}


def restore_rng(tensors: dict[str, torch.Tensor], states: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda/")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Files first, then their directories, so the rename below publishes durable data."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for d in [*[p for p in root.rglob("*") if p.is_dir()], root]:
        fsync_dir(d)


def publish_dir(root: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Write the directory ``root/name`` atomically and durably: ``fill`` writes into a hidden
    temporary directory, which is fsynced and renamed into place (replacing an older
    ``name``), so a listed directory is always complete. -> the final path."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    return final


def list_numbered(root: str | Path, pattern: re.Pattern, marker: str) -> list[Path]:
    """Directories under ``root`` whose name matches ``pattern`` (group 1: a number) and that
    hold ``marker`` (written last, so the directory is complete), by that number."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := pattern.match(p.name)) and (p / marker).exists()]
    return [p for _, p in sorted(found)]


def export_policy(template: Any, model_sd: dict[str, torch.Tensor], out_dir: str | Path) -> None:
    """Load ``model_sd`` into the unsharded ``template`` policy and ``save_pretrained`` it."""
    template.load_state_dict(model_sd)
    template.save_pretrained(str(out_dir))


def save_checkpoint(checkpoint_dir: str | Path, policy_version: int, template: Any,
                    model_sd: dict[str, torch.Tensor], optim_sd: dict[str, Any] | None,
                    consumption_marks: dict[str, str], extra: dict[str, Any] | None = None,
                    keep: int = 2) -> Path:
    """Write ``version-<policy_version>`` atomically, prune to the newest ``keep``."""
    root = Path(checkpoint_dir)

    def fill(tmp: Path) -> None:
        export_policy(template, model_sd, tmp / "policy")
        meta: dict[str, Any] = {}
        if optim_sd is not None:
            tensors, meta = _flatten_optimizer(optim_sd)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_json = rng_state()
        save_file({k: v.contiguous() for k, v in rng_tensors.items()},
                  str(tmp / "rng.safetensors"))
        state = {"policy_version": policy_version, "created_at": time.time(),
                 "optimizer": meta or None, "consumption_marks": consumption_marks,
                 "rng": rng_json, "extra": extra or {}}
        (tmp / "state.json").write_text(json.dumps(state))

    # the same version written again (e.g. at shutdown) replaces the older one
    final = publish_dir(root, f"version-{policy_version:08d}", fill)
    prune(root, keep)
    return final


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return list_numbered(checkpoint_dir, PATTERN, "state.json")


def prune(checkpoint_dir: str | Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints, and stale temporary directories."""
    root = Path(checkpoint_dir)
    for path in list_checkpoints(root)[:-max(1, keep)]:
        shutil.rmtree(path, ignore_errors=True)
    for tmp in root.glob(".tmp-version-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory (the weights stay in ``policy/`` for load_policy)."""
    path = Path(path)
    state_file = path / "state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"{path} is not a learner checkpoint (no state.json)")
    state = json.loads(state_file.read_text())
    optimizer = None
    if state["optimizer"] is not None:
        optimizer = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")),
                                         state["optimizer"])
    rng = {"tensors": load_file(str(path / "rng.safetensors")), "states": state["rng"]}
    return Checkpoint(path=path, policy_version=int(state["policy_version"]),
                      optimizer=optimizer, consumption_marks=state["consumption_marks"],
                      rng=rng, extra=state["extra"])
