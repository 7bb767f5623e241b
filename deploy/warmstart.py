"""The policy RL starts from, and ``pushcut warmstart``, which makes the built-in suite's one.

``pushcut run`` starts from ``model.checkpoint`` when it is set, else from
``<run_dir>/sft/final``. When that is missing it is made: with ``run.warm_start=shipped``
(the default) it is a copy of the warm-start policy shipped in :data:`SHIPPED` when that
policy was made with the run's settings (:func:`recipe`: the env's tasks and cameras, the
model, the demos and SFT settings, the seed); otherwise, or with ``run.warm_start=train``,
``pushcut demos`` and ``pushcut sft`` make it in ``<run_dir>``. The shipped policy takes
minutes of SFT off every run on any machine: SFT is compute-bound and costs 3.5 times as
long on a slow 2-core machine as on a fast one (docs/results.md).

``pushcut warmstart [DIR]`` makes it again: demos and SFT with the config's settings in
``<run_dir>/warmstart/``, a held-out evaluation (``eval.episodes_per_task`` per task, greedy
and at ``algo.temperature``), then the policy with :data:`MANIFEST` (its recipe, held-out
success, the machine's calibration, the date and the command) in ``DIR`` (default
:data:`SHIPPED`). Its test (tests/deploy/test_warmstart.py) loads the shipped policy with the
current model code and checks that it still acts as it did when it was made.

    pushcut warmstart                        # remake assets/warmstart/tabletop_tiny_vla
    pushcut run run.warm_start=train         # SFT in the run directory instead
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from common.calibration import calibrate
from common.config.schema import PushcutConfig
from common.process import USAGE_ERROR, StopSignals, unexpected_arguments
from deploy.roles import config_overrides, override, run_step
from deploy.start_policy import evaluate_alone, rates

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "warmstart" / "tabletop_tiny_vla"
MANIFEST = "warmstart.json"
# what a run may change without changing the policy its demos and SFT would make
_ENV_FIELDS = ("name", "suite", "layout", "tasks", "image_size", "wrist_camera",
               "num_train_init_states")
# the seeded observations of golden_tokens get these instructions (two of the suite's)
GOLDEN_INSTRUCTIONS = ["put the left cube on the plate", "stack the red cube on the blue cube"]
_SFT_IGNORED = ("demos", "out", "eval_episodes_per_task", "checkpoint_every", "threads")


def recipe(cfg: PushcutConfig) -> dict[str, Any]:
    """The settings the warm-start policy depends on: two configs with the same recipe get
    the same demos and the same SFT."""
    env = dataclasses.asdict(cfg.env)
    model = dataclasses.asdict(cfg.model)
    model.pop("checkpoint")
    demos = dataclasses.asdict(cfg.demos)
    demos.pop("out")
    sft = {k: v for k, v in dataclasses.asdict(cfg.sft).items() if k not in _SFT_IGNORED}
    return {"seed": cfg.seed, "env": {k: env.get(k) for k in _ENV_FIELDS}, "model": model,
            "demos": demos, "sft": sft}


def shipped_policy(cfg: PushcutConfig, where: Path = SHIPPED) -> Path | None:
    """The shipped policy if it was made with ``cfg``'s recipe, else None."""
    manifest = where / MANIFEST
    if not manifest.exists():
        return None
    made_with = json.loads(manifest.read_text())["recipe"]
    # through JSON both ways, so that tuples and lists compare equal
    return where if made_with == json.loads(json.dumps(recipe(cfg))) else None


def train_policy(cfg: PushcutConfig, work: Path, log_dir: Path, console: Console,
                 signals: StopSignals, name: str = "pushcut run") -> Path:
    """``pushcut demos`` and ``pushcut sft`` into ``work`` (each skipped when its output is
    there) -> ``work/sft/final``."""
    common = config_overrides(cfg)
    demos = work / "demos"
    if not (demos / "index.jsonl").exists():
        # the expert gets the tasks' own step limits: env.max_steps is meant for RL episodes
        run_step("demos", "demos", [*common, override("demos.out", str(demos)),
                                    override("env.max_steps", None)],
                 log_dir, console, signals, name)
    final = work / "sft" / "final"
    if not (final / "config.json").exists():
        run_step("sft", "sft", [*common, override("sft.demos", str(demos)),
                                override("sft.out", str(work / "sft"))],
                 log_dir, console, signals, name)
    return final


def prepare_policy(cfg: PushcutConfig, run_dir: Path, log_dir: Path, console: Console,
                   signals: StopSignals) -> str:
    """The checkpoint RL starts from (see the module's docstring)."""
    if cfg.model.checkpoint:
        if not (Path(cfg.model.checkpoint) / "config.json").exists():
            raise FileNotFoundError(f"model.checkpoint={cfg.model.checkpoint} is not a "
                                    "save_pretrained directory (no config.json)")
        return cfg.model.checkpoint
    final = run_dir / "sft" / "final"
    if (final / "config.json").exists():
        return str(final)
    shipped = shipped_policy(cfg) if cfg.run.warm_start == "shipped" else None
    if shipped is not None:
        shutil.copytree(shipped, final)
        made = json.loads((shipped / MANIFEST).read_text())
        console.print(f"[bold]pushcut run[/]: warm start from the shipped SFT policy "
                      f"({shipped.name}, {made['summary']}); copied to {final}")
        return str(final)
    if cfg.run.warm_start == "shipped":
        console.print("[bold]pushcut run[/]: no shipped warm start for these settings: "
                      "recording demos and training SFT")
    return str(train_policy(cfg, run_dir, log_dir, console, signals))


def golden_tokens(policy: Any, instructions: list[str]) -> list[list[int]]:
    """The policy's greedy tokens for a fixed batch of seeded random observations, one per
    instruction: a fingerprint of the function the weights and the model code compute
    together, so a change of either that changes how the shipped policy acts shows up."""
    import numpy as np
    import torch

    from common.models.policy import ObsBatch
    c = policy.config
    rng = np.random.default_rng(0)
    obs = ObsBatch(rng.integers(0, 256, (len(instructions), c.num_views, c.image_size,
                                         c.image_size, 3), dtype=np.uint8),
                   rng.normal(size=(len(instructions), c.proprio_dim)).astype(np.float32),
                   list(instructions))
    with torch.no_grad():
        tokens, _ = policy.sample(obs, 0.0)
    return tokens.tolist()


def evaluate(cfg: PushcutConfig, checkpoint: Path, out: Path, log_dir: Path,
             console: Console, signals: StopSignals) -> dict[str, float]:
    """Held-out success of ``checkpoint``, greedy and at algo.temperature -> {T: rate}."""
    if not (out / "eval.json").exists():
        evaluate_alone(cfg, str(checkpoint), out, [0.0, cfg.algo.temperature],
                       cfg.eval.episodes_per_task, log_dir, console, signals,
                       "pushcut warmstart")
    return rates(out)


def main(cfg: PushcutConfig, args: list[str], overrides: list[str] = ()) -> int:
    """``pushcut warmstart [DIR] [key=value ...]``."""
    if len(args) > 1 and unexpected_arguments("warmstart", args[1:], expected="one DIR"):
        return USAGE_ERROR
    target = Path(args[0]) if args else SHIPPED
    console = Console(stderr=True)
    work = Path(cfg.run_dir).resolve() / "warmstart"
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    signals = StopSignals().install()
    start = time.time()
    try:
        final = train_policy(cfg, work, log_dir, console, signals, "pushcut warmstart")
        found = evaluate(cfg, final, work / "eval", log_dir, console, signals)
    except RuntimeError as exc:
        console.print(f"[red]pushcut warmstart: {exc}")
        return 1
    greedy, sampled = found.get(0.0, 0.0), found.get(float(cfg.algo.temperature), 0.0)
    episodes = cfg.eval.episodes_per_task
    summary = (f"held-out {100 * greedy:.0f} % greedy, {100 * sampled:.0f} % at "
               f"T={cfg.algo.temperature:g}, {episodes} episodes per task")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(final, target)
    from common.models import load_policy
    (target / MANIFEST).write_text(json.dumps({
        "recipe": recipe(cfg), "summary": summary, "success": {str(k): v for k, v in found.items()},
        "golden": {"instructions": GOLDEN_INSTRUCTIONS,
                   "tokens": golden_tokens(load_policy(target), GOLDEN_INSTRUCTIONS)},
        "calibration": calibrate().to_dict(), "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.time() - start), "command": " ".join(
            ["pushcut warmstart", *map(str, args), *overrides])}, indent=2) + "\n")
    console.print(f"[bold]pushcut warmstart[/]: {summary}; written to {target}")
    return 0
