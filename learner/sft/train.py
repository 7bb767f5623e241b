"""``pushcut sft``: the supervised warm start of a policy on expert demonstrations.

In: a demonstration dataset (``sft.demos``, from ``pushcut demos``; at most
``sft.demos_per_task`` records of each task; only the tasks in ``env.tasks`` when that is
set), the model config (``model.*``; sizes, or a
``model.checkpoint`` to continue from). The action tokenizer's percentiles and the proprio
statistics are fitted on the demos and stored in the model's config.

Training: cross-entropy on the valid action tokens of every decision, AdamW with warm-up
and cosine decay, random image shifts, a progress bar.

Out, under ``sft.out``: ``step_NNNNNN/`` checkpoints every ``sft.checkpoint_every`` steps and
``final/`` (``save_pretrained`` directories, loadable by ``common.models.load_policy``),
``metrics.jsonl`` (loss and token accuracy) and ``summary.json``. The command
(deploy/sft.py) adds a closing held-out evaluation.

    pushcut sft sft.demos=runs/demos sft.demos_per_task=1 sft.out=runs/sft_1demo
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from common.config.schema import PushcutConfig, SftConfig
from common.dataset import read_dataset
from learner.sft.data import (
    SftExamples, examples_from_trajectories, fit_action_tokenizer, proprio_stats, sft_loss,
    shift_images, token_targets,
)

LOG_EVERY = 25


def build_sft_policy(cfg: PushcutConfig, examples: SftExamples):
    """A policy shaped for the demos (C, D, proprio, views, image size) with their statistics;
    or ``model.checkpoint``, keeping the statistics it was trained with."""
    from common.models import build_policy

    model_cfg = cfg.model
    if model_cfg.checkpoint:
        return build_policy(model_cfg)
    _, V, H, W, _ = examples.images.shape
    if H != W:
        raise ValueError(f"demo images are {H}x{W}; the tiny VLA takes square images")
    kwargs = {"proprio_dim": examples.proprio.shape[1], "num_views": V, "image_size": H,
              **dict(model_cfg.kwargs)}
    model_cfg = dataclasses.replace(model_cfg, chunk_size=examples.chunk_size,
                                    action_dim=examples.action_dim, kwargs=kwargs)
    tokenizer = fit_action_tokenizer(examples, model_cfg.num_bins)
    policy = build_policy(model_cfg)
    policy.set_data_stats(tokenizer, *proprio_stats(examples))
    return policy


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless index batches: shuffled passes over [0, n) (with replacement when n is small)."""
    while True:
        if n < batch_size:
            yield rng.integers(0, n, batch_size)
            continue
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def train(policy, examples: SftExamples, sft: SftConfig, out: Path,
          rng: np.random.Generator) -> list[dict]:
    """``sft.steps`` optimiser steps; -> logged metrics (also appended to metrics.jsonl)."""
    targets = torch.from_numpy(token_targets(policy.action_tokenizer, examples))
    valid = torch.from_numpy(examples.valid)
    opt = torch.optim.AdamW(policy.parameters(), lr=sft.lr, weight_decay=sft.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, min(sft.warmup_steps, sft.steps // 10),
                                            sft.steps)
    policy.train()
    metrics, window, t0 = [], [], time.perf_counter()
    batches = _batches(len(examples), sft.batch_size, rng)
    # redrawn every step on a terminal; into a log file (pushcut run/experiment) every 30 s
    interval = 0.1 if sys.stderr.isatty() else 30.0
    with open(out / "metrics.jsonl", "a") as log, \
            tqdm(total=sft.steps, desc="sft", mininterval=interval) as bar:
        for step in range(1, sft.steps + 1):
            idx = next(batches)
            images = shift_images(examples.images[idx], sft.augment_shift, rng)
            loss, acc = sft_loss(policy.logits(examples.obs(idx, images)), targets[idx],
                                 valid[idx], sft.label_sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), sft.grad_clip)
            opt.step()
            sched.step()
            window.append((loss.item(), acc.item()))
            bar.update(1)
            if step % LOG_EVERY == 0 or step == sft.steps:
                row = {"step": step, "loss": float(np.mean([w[0] for w in window])),
                       "token_acc": float(np.mean([w[1] for w in window])),
                       "lr": sched.get_last_lr()[0], "elapsed_s": time.perf_counter() - t0}
                window = []
                metrics.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['token_acc']:.2f}",
                                refresh=False)
            if step % sft.checkpoint_every == 0 and step < sft.steps:
                policy.save_pretrained(out / f"step_{step:06d}")
    return metrics


def run(cfg: PushcutConfig, console: Console) -> tuple[torch.nn.Module, dict]:
    """Train per ``cfg.sft``; write ``final/`` and ``summary.json``; return (policy, summary)."""
    sft = cfg.sft
    if sft.threads:
        torch.set_num_threads(sft.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(sft.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    wanted = set(cfg.env.tasks)   # empty: every task of the dataset
    examples = examples_from_trajectories(
        (t for t in read_dataset(sft.demos, per_task=sft.demos_per_task)
         if not wanted or t.task_id in wanted), chunk_size=cfg.model.chunk_size)
    tasks = sorted(set(examples.task_ids))
    console.print(f"sft: {len(examples)} decisions from {sft.demos} ({len(tasks)} tasks, "
                  f"{examples.skipped} unsuccessful demos skipped)")
    policy = build_sft_policy(cfg, examples)
    console.print(f"sft: {cfg.model.name}, {sum(p.numel() for p in policy.parameters()):,} "
                  f"parameters, {sft.steps} steps of {sft.batch_size}")
    metrics = train(policy, examples, sft, out, rng)
    policy.eval()
    policy.save_pretrained(out / "final")
    train_s = time.perf_counter() - t0
    summary = {"demos": sft.demos, "demos_per_task": sft.demos_per_task, "tasks": tasks,
               "decisions": len(examples), "steps": sft.steps, "train_wall_s": train_s,
               "final_loss": metrics[-1]["loss"], "final_token_acc": metrics[-1]["token_acc"],
               "checkpoint": str(out / "final")}
    summary["wall_s"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"sft: done in {summary['wall_s']:.0f} s (training {train_s:.0f} s); "
                  f"final loss {summary['final_loss']:.3f}; checkpoint {out / 'final'}")
    return policy, summary
