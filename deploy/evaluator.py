"""``pushcut evaluator``: held-out success of a run's policy snapshots as the run goes.

In: ``run_dir`` (the learner writes ``<run_dir>/snapshots/v<N>/`` every
``learner.snapshot_every`` versions), ``env.*`` and ``eval.*`` (episodes per task, envs).
Out: ``<run_dir>/evals/v<N>/eval.json`` (greedy, Wilson intervals, per-episode outcomes on
the same held-out initial states as the start policy's evaluation) for the newest snapshot
not yet evaluated, one after another, until SIGTERM/SIGINT or, with ``--until-final``,
until the learner's final snapshot is evaluated. On a signal the snapshot in hand is
finished first; a second signal leaves at once. ``pushcut run`` starts one when
``learner.snapshot_every > 0``; its status shows the latest figure.

    pushcut evaluator run_dir=runs/r1 eval.episodes_per_task=10
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

from rich.console import Console

from common.config.schema import PushcutConfig
from common.process import USAGE_ERROR, StopSignals, unexpected_arguments
from learner.snapshots import list_snapshots, read_snapshot_info

POLL_S = 2.0


def eval_dir(run_dir: Path, snapshot: Path) -> Path:
    """Where the evaluation of one snapshot goes (the layout ``pushcut report`` reads)."""
    return run_dir / "evals" / snapshot.name


def pending(run_dir: Path) -> list[Path]:
    """Snapshots without an eval.json, newest first (a slow evaluator skips ahead)."""
    return [s for s in reversed(list_snapshots(run_dir / "snapshots"))
            if not (eval_dir(run_dir, s) / "eval.json").exists()]


def evaluate_snapshot(cfg: PushcutConfig, run_dir: Path, snapshot: Path,
                      console: Console) -> dict:
    from actors.evaluate import evaluate_policy
    from common.models import load_policy

    info = read_snapshot_info(snapshot)
    return evaluate_policy(
        load_policy(snapshot), cfg.env, episodes_per_task=cfg.eval.episodes_per_task,
        temperatures=[0.0], videos_per_task=0, num_envs=cfg.eval.num_envs,
        out_dir=eval_dir(run_dir, snapshot), seed=cfg.seed,
        subprocess_envs=cfg.eval.subprocess_envs, console=console,
        meta={"checkpoint": str(snapshot), "policy_version": info["policy_version"],
              "wall_s": info.get("wall_s")})


def watch(cfg: PushcutConfig, stop: threading.Event, until_final: bool = False) -> int:
    """Evaluate snapshots as they appear; -> how many were evaluated."""
    run_dir = Path(cfg.run_dir)
    console = Console(stderr=True)
    done = 0
    while not stop.is_set():
        todo = pending(run_dir)
        if not todo:
            snaps = list_snapshots(run_dir / "snapshots")
            if until_final and snaps and read_snapshot_info(snaps[-1]).get("final"):
                break
            stop.wait(POLL_S)
            continue
        results = evaluate_snapshot(cfg, run_dir, todo[0], console)
        greedy = results["temperatures"]["greedy"]
        lo, hi = greedy["ci95"]
        print(f"evaluator: {todo[0].name} held-out {100 * greedy['average']:.1f} % "
              f"[{100 * lo:.0f}-{100 * hi:.0f}] over {greedy['episodes']} episodes",
              flush=True)
        done += 1
    return done


def main(cfg: PushcutConfig, args: list[str]) -> int:
    """``pushcut evaluator [--until-final] [key=value ...]``."""
    if unexpected_arguments("evaluator", args, allowed=["--until-final"],
                            expected="only --until-final and key=value overrides"):
        return USAGE_ERROR
    if cfg.eval.episodes_per_task < 1:
        print("pushcut evaluator: eval.episodes_per_task must be >= 1", file=sys.stderr)
        return 2
    from actors.evaluate import infer_like_an_actor
    infer_like_an_actor(cfg)
    # an evaluation in progress is not cut short by the first signal; the second leaves
    # at once (its eval.json is written last, so the snapshot counts as not evaluated)
    signals = StopSignals(exit_on_hurry=True).install()
    done = watch(cfg, signals.stop, until_final="--until-final" in args)
    print(f"evaluator stopped: {done} snapshot(s) evaluated", flush=True)
    return 0
