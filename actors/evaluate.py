"""``pushcut eval``: success rate of a policy on held-out initial states, per task and family.

In: a policy checkpoint (``eval.checkpoint=DIR`` or the first positional argument, a
``save_pretrained`` directory), the env config (``env.*``; the tasks are ``env.tasks`` or the
whole ``env.suite``). For every task, ``eval.episodes_per_task`` episodes over the env's
held-out init_state_ids (cycled when there are more episodes than ids), greedily
(temperature 0) and at every other temperature in ``eval.temperatures``, batched over
``eval.num_envs`` env workers by :class:`actors.rollout.VectorRollout`.

Out: ``<eval.out>/eval.json`` (per temperature: success rate per task, per family and the
average over tasks, mean episode length), ``<eval.out>/videos/*.mp4`` for the first
``eval.videos_per_task`` episodes of each task, and a table on the terminal.

    pushcut eval runs/sft/final eval.temperatures=[0.0,1.6] eval.out=runs/eval
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from actors.envs.base import TaskSpec
from actors.rollout import Episode, EpisodeRequest, VectorRollout
from common.config.schema import EnvConfig, PushcutConfig
from common.models.policy import Policy
from common.stats import wilson_interval


def heldout_requests(tasks: Sequence[TaskSpec], heldout_ids: dict[str, list[int]],
                     episodes_per_task: int, videos_per_task: int) -> list[EpisodeRequest]:
    """One request per episode, tasks in order, held-out ids cycled; the first
    ``videos_per_task`` of each task record video."""
    requests = []
    for spec in tasks:
        ids = heldout_ids[spec.task_id]
        if not ids:
            raise ValueError(f"task {spec.task_id} has no held-out init states "
                             "(env.num_heldout_init_states = 0?)")
        for i in range(episodes_per_task):
            requests.append(EpisodeRequest(spec.task_id, ids[i % len(ids)],
                                           group_id=f"eval-{spec.task_id}-{i}",
                                           record_video=i < videos_per_task))
    return requests


def summarize(tasks: Sequence[TaskSpec], episodes: Sequence[Episode]) -> dict:
    """Episodes -> {"per_task": {task_id: {...}}, "per_family": {family: rate},
    "average": mean of the per-task rates, "ci95": ..., "family_ci95": ...}. A family's
    rate is the mean over its tasks; intervals are Wilson 95 % over the pooled episodes.
    Each task keeps its per-episode ``outcomes`` beside its ``init_state_ids``, so two
    policies evaluated on the same states can be compared pairwise (McNemar)."""
    by_task: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        by_task[ep.request.task_id].append(ep)
    per_task = {}
    for spec in tasks:
        eps = by_task.get(spec.task_id, [])
        if not eps:
            continue
        wins = [ep.success for ep in eps]
        per_task[spec.task_id] = {
            "family": spec.family, "instruction": spec.instruction, "episodes": len(eps),
            "successes": int(sum(wins)), "success_rate": float(np.mean(wins)),
            "ci95": list(wilson_interval(int(sum(wins)), len(wins))),
            "mean_length": float(np.mean([ep.length for ep in eps])),
            "init_state_ids": [ep.request.init_state_id for ep in eps],
            "outcomes": [int(w) for w in wins]}
        if any(ep.info for ep in eps):      # tabletop: each episode's behaviour fingerprint
            per_task[spec.task_id]["fingerprints"] = [ep.info for ep in eps]
    families: dict[str, list[dict]] = defaultdict(list)
    for row in per_task.values():
        families[row["family"]].append(row)
    rows = list(per_task.values())
    return {"per_task": per_task,
            "per_family": {f: float(np.mean([r["success_rate"] for r in rs]))
                           for f, rs in families.items()},
            "family_ci95": {f: list(_pooled_interval(rs)) for f, rs in families.items()},
            "average": float(np.mean([r["success_rate"] for r in rows])) if rows else math.nan,
            "ci95": list(_pooled_interval(rows)),
            "episodes": len(episodes)}


def _pooled_interval(rows: list[dict]) -> tuple[float, float]:
    return wilson_interval(sum(r["successes"] for r in rows), sum(r["episodes"] for r in rows))


def temperature_key(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"T={temperature:g}"


def _write_videos(episodes: Sequence[Episode], out_dir: Path, key: str) -> list[str]:
    from actors.video import write_mp4

    paths = []
    for ep in episodes:
        if ep.request.record_video and ep.frames:
            r = ep.request
            name = (f"{key}_{r.task_id.replace('/', '-')}_init{r.init_state_id}_"
                    f"{'success' if ep.success else 'fail'}.mp4")
            paths.append(str(write_mp4(out_dir / "videos" / name, np.stack(ep.frames))))
    return paths


def _run(rollout: VectorRollout, requests: list[EpisodeRequest], temperature: float,
         generator: torch.Generator, wave: int, progress: Progress, label: str) -> list[Episode]:
    """All requests, ``wave`` at a time so that the progress bar moves."""
    bar = progress.add_task(label, total=len(requests))
    episodes: list[Episode] = []
    for start in range(0, len(requests), wave):
        episodes += rollout.run(requests[start:start + wave], temperature, generator)
        progress.update(bar, completed=len(episodes))
    return episodes


def evaluate_policy(policy: Policy, env_cfg: EnvConfig, *, episodes_per_task: int,
                    temperatures: Sequence[float] = (0.0,), videos_per_task: int = 0,
                    num_envs: int = 8, out_dir: str | Path | None = None, seed: int = 0,
                    task_ids: Sequence[str] | None = None, subprocess_envs: bool = False,
                    console: Console | None = None, meta: dict | None = None,
                    workers: Sequence | None = None) -> dict:
    """Held-out success of ``policy``; -> {"temperatures": {key: summary}, ...}, also
    written to ``out_dir/eval.json`` with videos under ``out_dir/videos`` when given.
    ``workers``: env workers to use (the caller's, left open); by default ``num_envs`` new
    ones from ``env_cfg``, closed at the end."""
    from actors.env_workers import make_workers

    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if any(t < 0 for t in temperatures) or not temperatures:
        raise ValueError(f"temperatures must be a non-empty list of values >= 0: {temperatures}")
    console = console or Console(stderr=True)
    own = workers is None
    if own:
        # each episode's fingerprint goes into eval.json beside its outcome
        workers = make_workers(dataclasses.replace(env_cfg, fingerprints=True), num_envs, seed,
                               subprocess_envs)
    try:
        env = getattr(workers[0], "env", workers[0])
        tasks = [t for t in env.tasks() if task_ids is None or t.task_id in set(task_ids)]
        if not tasks:
            raise ValueError(f"no env task among {list(task_ids or [])}")
        heldout = {t.task_id: env.heldout_init_state_ids(t.task_id) for t in tasks}
        requests = heldout_requests(tasks, heldout, episodes_per_task, videos_per_task)
        rollout = VectorRollout(workers, policy)
        results: dict = {**(meta or {}), "temperatures": {}, "videos": []}
        t0 = time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            for i, temperature in enumerate(temperatures):
                key = temperature_key(temperature)
                generator = torch.Generator().manual_seed(seed * 1000 + i)
                episodes = _run(rollout, requests, float(temperature), generator,
                                wave=4 * len(workers), progress=progress, label=f"eval {key}")
                results["temperatures"][key] = {"temperature": float(temperature),
                                                **summarize(tasks, episodes)}
                if out_dir is not None:
                    results["videos"] += _write_videos(episodes, Path(out_dir), key)
        results["wall_s"] = time.perf_counter() - t0
    finally:
        for w in workers if own else []:
            w.close()
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "eval.json").write_text(json.dumps(results, indent=2))
    return results


def results_table(results: dict) -> Table:
    """Success rate per family (rows) and temperature (columns) with Wilson 95 % intervals,
    average last."""
    keys = list(results["temperatures"])
    table = Table(title="held-out success rate")
    table.add_column("family")
    for key in keys:
        table.add_column(key, justify="right")
    families = sorted({f for k in keys for f in results["temperatures"][k]["per_family"]})
    for fam in families + ["average"]:
        cells = []
        for key in keys:
            summary = results["temperatures"][key]
            rate = summary["average"] if fam == "average" else summary["per_family"].get(fam)
            ci = summary.get("ci95") if fam == "average" else summary.get(
                "family_ci95", {}).get(fam)
            cells.append("-" if rate is None else f"{100 * rate:.0f}%" + (
                f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]" if ci else ""))
        table.add_row(fam, *cells)
    return table


def infer_like_an_actor(cfg: PushcutConfig) -> None:
    """Evaluation processes infer with ``actor.torch_threads`` intra-op threads, as actors
    do: torch's default (one per core) spins OpenMP threads on cores the learner and the
    actors keep busy, which made an evaluation many times slower."""
    if cfg.actor.torch_threads:
        torch.set_num_threads(cfg.actor.torch_threads)


def main(cfg: PushcutConfig, args: list[str]) -> int:
    from common.models import load_policy

    checkpoint = args[0] if args else cfg.eval.checkpoint
    if not checkpoint or len(args) > 1:
        print("usage: pushcut eval CHECKPOINT_DIR [key=value ...]  (or eval.checkpoint=DIR)")
        return 2
    console = Console(stderr=True)
    infer_like_an_actor(cfg)
    policy = load_policy(checkpoint)
    results = evaluate_policy(
        policy, cfg.env, episodes_per_task=cfg.eval.episodes_per_task,
        temperatures=cfg.eval.temperatures, videos_per_task=cfg.eval.videos_per_task,
        num_envs=cfg.eval.num_envs, out_dir=cfg.eval.out, seed=cfg.seed,
        subprocess_envs=cfg.eval.subprocess_envs, console=console,
        meta={"checkpoint": str(checkpoint), "env": asdict(cfg.env)})
    Console().print(results_table(results))
    console.print(f"{results['wall_s']:.0f} s; results in {Path(cfg.eval.out) / 'eval.json'}, "
                  f"{len(results['videos'])} videos")
    return 0
