"""Metrics logging shared by the learner, ``pushcut run`` and actors: one JSONL file per
process role in the run directory, mirrored to Weights & Biases.

In: flat dicts of numbers (strings and lists are kept in the JSONL, left out of W&B).
Out: ``<run_dir>/<name>.jsonl`` (one line per call: ``{"time", "step", ...}``, flushed
at once so a crash loses nothing already logged) and a W&B run under ``<run_dir>/wandb``.
W&B is online only when the user is logged in (``WANDB_API_KEY`` or ``wandb login``) and
``WANDB_MODE`` does not say otherwise; else offline (``wandb sync`` uploads it later).
A W&B failure never stops training: it is reported once and the JSONL goes on.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def wandb_mode() -> str:
    """'online' if logged in (and not overridden by WANDB_MODE), else 'offline'."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """``MetricsLogger(run_dir, "learner", use_wandb=True, config={...}).log(stats, step)``."""

    def __init__(self, run_dir: str | os.PathLike, name: str, use_wandb: bool = True,
                 config: dict[str, Any] | None = None):
        self.path = Path(run_dir) / f"{name}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        self._wandb = None
        if use_wandb:
            self._start_wandb(Path(run_dir), name, config or {})

    def _start_wandb(self, run_dir: Path, name: str, config: dict) -> None:
        try:
            import wandb
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "pushcut"),
                                     name=f"{run_dir.name}-{name}", dir=str(run_dir),
                                     mode=wandb_mode(), config=config)
        except Exception as exc:   # wandb raises many kinds; training must go on without it
            log.warning("W&B disabled (%s: %s); metrics still go to %s",
                        type(exc).__name__, exc, self.path)
            self._wandb = None

    @property
    def wandb_run_id(self) -> str | None:
        return self._wandb.id if self._wandb is not None else None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        record = {"time": time.time(), "step": step,
                  **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            numbers = {k: v for k, v in metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            try:
                self._wandb.log(numbers, step=step)
            except Exception as exc:
                log.warning("W&B log failed (%s); disabling W&B", exc)
                self._wandb = None

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception as exc:
                log.warning("W&B finish failed: %s", exc)
            self._wandb = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete lines of a metrics file (a torn last line from a crash is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
