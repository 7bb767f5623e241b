"""``pushcut sft``: supervised warm start (learner/sft/train.py), then a closing held-out
evaluation on the demonstrated tasks (actors/evaluate.py).

In: ``sft.*``, ``model.*``, ``env.*`` as for :func:`learner.sft.train.run`. Out: everything
that writes under ``sft.out``, plus ``eval/`` and an ``eval`` entry in ``summary.json``
(skipped when ``sft.eval_episodes_per_task=0``).

    pushcut sft sft.demos=runs/demos sft.demos_per_task=1 sft.out=runs/sft_1demo
"""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from common.config.schema import PushcutConfig


def closing_eval(cfg: PushcutConfig, policy, tasks: list[str], out: Path,
                 console: Console) -> dict:
    """Greedy held-out success on the demonstrated tasks -> {average, per_family, per_task}."""
    from actors.evaluate import evaluate_policy, results_table

    results = evaluate_policy(
        policy, cfg.env, episodes_per_task=cfg.sft.eval_episodes_per_task, temperatures=[0.0],
        videos_per_task=cfg.eval.videos_per_task, num_envs=cfg.eval.num_envs, out_dir=out,
        seed=cfg.seed, task_ids=tasks, subprocess_envs=cfg.eval.subprocess_envs,
        console=console, meta={"checkpoint": str(out.parent / "final")})
    Console().print(results_table(results))
    greedy = results["temperatures"]["greedy"]
    return {"average": greedy["average"], "per_family": greedy["per_family"],
            "per_task": {k: v["success_rate"] for k, v in greedy["per_task"].items()},
            "wall_s": results["wall_s"]}


def main(cfg: PushcutConfig, args: list[str]) -> int:
    """``pushcut sft [key=value ...]``."""
    from learner.sft.train import run

    console = Console(stderr=True)
    policy, summary = run(cfg, console)
    if cfg.sft.eval_episodes_per_task > 0:
        out = Path(cfg.sft.out)
        summary["eval"] = closing_eval(cfg, policy, summary["tasks"], out / "eval", console)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0
