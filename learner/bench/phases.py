"""``pushcut bench update``: one learner update as configured, phase by phase, against the
bare training step on the same decisions and against the machine's calibration.

In: ``cfg.model`` (``model.checkpoint``, or fresh weights), ``cfg.algo``
(``groups_per_batch`` groups of ``group_size``, ``mini_batches``, ``epochs_per_batch``,
``micro_batch_size``), ``cfg.env.max_steps`` (episode length, 120 when unset: pass the
length of your episodes, e.g. ``env.max_steps=80``), ``learner.torch_threads``,
``bench.seconds``, ``bench.compile``. Out: a printed table and the dict :func:`run` returns,
seconds per update (means over the measured updates):

* *collate*: complete groups -> one :class:`~learner.batch.Batch`;
* *proximal pass*: ``GRPO.update``'s no-grad log-probs of the weights the update starts from;
* *mini-batch k*: each optimiser step (forward and backward of its micro-batches, loss,
  statistics, clipping, AdamW), epochs x mini-batches of them;
* *broadcast*: the full state dict serialised and published by a real
  :class:`~common.transport.weight_publisher.WeightPublisher` (what actors fetch);
* *bare*: the limit: the same decisions' forward, log-softmax/gather, masked mean and
  backward in the same micro-batches, with as many AdamW steps, and nothing else (no
  proximal pass, no importance weights, no statistics).

Beside them: the bare update's FLOPs (``torch.utils.flop_counter``), the GFLOPS it and the
whole update achieve, and their share of the calibration (one-thread matmul GFLOPS x the
learner's threads). With ``bench.compile=true`` the same is measured again with the policy's
``forward`` under ``torch.compile`` (after its compilation, whose time is printed).

    pushcut bench update env.max_steps=80 learner.torch_threads=1
"""
from __future__ import annotations

import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from common.calibration import Calibration
from common.config import PushcutConfig
from common.transport.weight_publisher import WeightPublisher
from learner.batch import Batch, collate, micro_batches, step_micro_batches
from learner.bench.update import make_groups, timed
from learner.grpo import GRPO, make_optimizer


def bare_update(policy, batch: Batch, optimizer, micro_batch_size: int, steps: int,
                epochs: int = 1):
    """The limit of one update, as a closure: ``epochs`` passes over the batch's
    micro-batches (the split GRPO uses), each pass ``steps`` AdamW steps; per micro-batch
    forward, log-softmax/gather, masked mean and backward, nothing else."""
    count = step_micro_batches(batch.num_trajectories, 1, micro_batch_size, steps)
    parts = [p for p in micro_batches(batch, count) if p is not None]
    size = max(1, len(parts) // steps)
    tokens = int(batch.valid_mask.sum())

    def update() -> None:
        for m in [m for _ in range(epochs) for m in range(steps)]:
            optimizer.zero_grad(set_to_none=True)
            for part in parts[m * size:(m + 1) * size]:
                logp = policy.log_probs(part.obs(), part.tokens, part.temperature)
                (-(logp * part.valid_mask).sum() / tokens).backward()
            optimizer.step()
    return update


def measure(policy, groups, cfg: PushcutConfig, seconds: float) -> dict:
    """Seconds per update of each phase, the bare update's, and its FLOPs."""
    batch = collate(groups)
    collate_s, _ = timed(lambda: collate(groups), min(1.0, seconds * 0.05))
    grpo = GRPO(policy, make_optimizer(policy.parameters(), cfg.algo), cfg.algo)
    runs: list[dict] = []
    update_s, updates = timed(lambda: runs.append(grpo.update(batch)), seconds * 0.6)
    bare = bare_update(policy, batch, make_optimizer(policy.parameters(), cfg.algo),
                       cfg.algo.micro_batch_size, max(1, cfg.algo.mini_batches),
                       cfg.algo.epochs_per_batch)
    bare_s, _ = timed(bare, seconds * 0.3)
    with FlopCounterMode(display=False) as flops:
        bare()
    measured = runs[1:]            # runs[0] is timed()'s warm-up
    with WeightPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*") as publisher:
        version = iter(range(1, 1 << 30))
        broadcast_s, _ = timed(lambda: publisher.publish(
            next(version), {k: v.detach().clone() for k, v in policy.state_dict().items()}),
            min(1.0, seconds * 0.05))
    return {
        "collate_s": collate_s, "update_s": update_s, "updates": updates,
        "proximal_s": float(np.mean([r["proximal_s"] for r in measured])),
        "mini_batch_s": np.mean([r["mini_batch_s"] for r in measured], axis=0).tolist(),
        "broadcast_s": broadcast_s, "bare_s": bare_s,
        "bare_gflop": flops.get_total_flops() / 1e9,
        "decisions": batch.num_rows, "tokens": int(batch.valid_mask.sum()),
        "trajectories": batch.num_trajectories,
    }


def _table(title: str, f: dict, peak: float) -> Table:
    table = Table(title=title)
    for col in ("phase", "s per update", "share of the update", "GFLOPS", "of calibration"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    total = f["collate_s"] + f["update_s"] + f["broadcast_s"]
    rows = [("collate", f["collate_s"]), ("proximal pass", f["proximal_s"]),
            *[(f"mini-batch {i + 1}", s) for i, s in enumerate(f["mini_batch_s"])],
            ("broadcast", f["broadcast_s"])]
    for name, s in rows:
        table.add_row(name, f"{s:.3f}", f"{s / total:.0%}", "", "")
    gf = f["bare_gflop"]
    table.add_row("[b]whole update[/b]", f"{total:.3f}", "100%", f"{gf / total:.1f}",
                  f"{gf / total / peak:.2f}")
    table.add_row("limit: bare update", f"{f['bare_s']:.3f}",
                  f"{f['bare_s'] / total:.0%}", f"{gf / f['bare_s']:.1f}",
                  f"{gf / f['bare_s'] / peak:.2f}")
    table.add_row("[b]ratio bare / whole[/b]", f"{f['bare_s'] / total:.2f}", "", "", "")
    return table


def run(cfg: PushcutConfig, calibration: Calibration | None = None) -> dict:
    from common.models import build_policy
    threads = torch.get_num_threads()
    if cfg.learner.torch_threads:
        torch.set_num_threads(cfg.learner.torch_threads)
    try:
        torch.manual_seed(cfg.seed)
        policy = build_policy(cfg.model).eval()
        groups = make_groups(policy, cfg, np.random.default_rng(cfg.seed),
                             trajectories=cfg.algo.groups_per_batch * max(2, cfg.algo.group_size))
        used = torch.get_num_threads()
        peak = (calibration.gflops_1thread if calibration else float("nan")) * used
        figures = {"model": f"{cfg.model.name}/{cfg.model.preset}", "torch_threads": used,
                   "epochs_per_batch": cfg.algo.epochs_per_batch,
                   "mini_batches": cfg.algo.mini_batches, "eager": measure(policy, groups, cfg,
                                                                           cfg.bench.seconds)}
        console = Console()
        head = (f"{figures['model']}, {len(groups)} groups, {figures['eager']['decisions']} "
                f"decisions, {used} thread(s), calibration {peak:.0f} GFLOPS")
        console.print(_table(f"one GRPO update, eager ({head})", figures["eager"], peak))
        if cfg.bench.compile:
            t0 = time.perf_counter()
            policy.compile(dynamic=True)
            figures["compiled"] = measure(policy, groups, cfg, cfg.bench.seconds)
            figures["compiled"]["with_compilation_s"] = time.perf_counter() - t0
            console.print(_table(f"the same, forward under torch.compile ({head})",
                                 figures["compiled"], peak))
            ratio = figures["eager"]["update_s"] / figures["compiled"]["update_s"]
            console.print(f"torch.compile: {ratio:.2f}x the eager update's speed")
    finally:
        torch.set_num_threads(threads)
    return figures
