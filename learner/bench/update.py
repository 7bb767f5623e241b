"""``pushcut bench learner``: GRPO update throughput against a bare training step of the
same policy on the same data, measured in the same run.

In: ``cfg.model`` (the policy, fresh weights), ``cfg.algo`` (``micro_batch_size``
trajectories form the batch, one micro-batch), ``cfg.env.max_steps`` (episode length; the
tabletop default 120 steps when unset), ``cfg.bench.seconds``. Out: printed figures and the
dict returned by :func:`run`:

* *limit*: forward, log-softmax/gather of the taken tokens, mean, backward and an AdamW step
  of the bare policy on the batch's observations: what one optimiser step of this policy
  costs with no RL bookkeeping;
* *GRPO*: ``GRPO.update`` on the collated batch (advantages, importance weights, clipping,
  statistics, grad clipping, the same AdamW step).

Both in valid action tokens per second; the ratio is GRPO / limit (goal: close to 1).
Trajectories are synthetic (``common.synthetic``) with tokens sampled from the policy, so
the importance weights are realistic.

    pushcut bench learner bench.seconds=20
"""
from __future__ import annotations

import dataclasses
import math
import time
import uuid

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from common.config import PushcutConfig
from common.models.policy import ObsBatch
from common.synthetic import make_trajectory
from common.wire.trajectory import Trajectory
from learner.batch import Batch, collate
from learner.grpo import GRPO, make_optimizer


def make_batch(policy, cfg: PushcutConfig, rng: np.random.Generator,
               length: int | None = None, trajectories: int | None = None) -> Batch:
    """The collated :func:`make_groups`."""
    return collate(make_groups(policy, cfg, rng, length, trajectories))


def make_groups(policy, cfg: PushcutConfig, rng: np.random.Generator,
                length: int | None = None, trajectories: int | None = None
                ) -> list[list[Trajectory]]:
    """``trajectories`` (default ``algo.micro_batch_size``) trajectories of ``length`` steps
    (default ``env.max_steps``, else 120) in groups of ``algo.group_size`` (at least 2),
    mixed outcomes, tokens and log-probs sampled from ``policy``."""
    mc = policy.config
    n = max(2, trajectories or cfg.algo.micro_batch_size)
    size = min(max(2, cfg.algo.group_size), n)
    length = length or cfg.env.max_steps or 120
    groups = []
    for g in range(math.ceil(n / size)):
        gid, group = uuid.uuid4().hex, []
        for i in range(size):
            t = make_trajectory(rng, group_id=gid, group_size=size, length=length,
                                chunk_size=policy.chunk_size, action_dim=policy.action_dim,
                                cameras=mc.num_views, image_size=mc.image_size,
                                proprio_dim=mc.proprio_dim, success=i % 2 == 0)
            obs = ObsBatch(t.images, t.proprio, [t.instruction] * t.num_decisions)
            tokens, logp = policy.sample(obs, cfg.algo.temperature)
            t.action_tokens = tokens.numpy().astype(np.int16)
            t.behaviour_log_probs = logp.numpy()
            t.temperature = cfg.algo.temperature
            group.append(t)
        groups.append(group)
    return groups


def bare_step(policy, batch: Batch, optimizer, device: torch.device | str = "cpu"):
    """The limit's training step, as a closure: forward, log-softmax/gather of the taken
    tokens, mean over valid tokens, backward and an AdamW step, on ``batch``."""
    device = torch.device(device)
    mask, tokens = batch.valid_mask.to(device), int(batch.valid_mask.sum())
    obs = batch.obs()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logp = policy.log_probs(obs, batch.tokens, batch.temperature)
        (-(logp * mask).sum() / tokens).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return step


def stage_rate(cfg: PushcutConfig, seconds: float, length: int) -> dict:
    """The learner's standalone rate for ``pushcut bench pipeline``: one learner update as
    configured (``GRPO.update`` with ``cfg.algo``: its proximal pass, mini-batches, epochs,
    clipping and statistics) on a batch of ``algo.groups_per_batch`` synthetic groups of
    ``length`` env steps, with no store, filter or weight broadcast around it, on
    ``learner.device`` (``learner.torch_threads`` on CPU), for about ``seconds``; and the
    bare training step on one micro-batch for reference. -> {"step_s", "trajectories",
    "env_steps", "env_steps_per_s", "bare_env_steps_per_s"}."""
    from common.models import build_policy
    threads = torch.get_num_threads()
    if cfg.learner.torch_threads:
        torch.set_num_threads(cfg.learner.torch_threads)
    try:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        policy = build_policy(cfg.model).eval()
        n = cfg.algo.groups_per_batch * max(2, cfg.algo.group_size)
        batch = make_batch(policy, cfg, rng, length, trajectories=n)
        small = make_batch(policy, cfg, rng, length)
        policy.to(cfg.learner.device)
        grpo = GRPO(policy, make_optimizer(policy.parameters(), cfg.algo), cfg.algo)
        step_s, _ = timed(lambda: grpo.update(batch), seconds * 0.75)
        bare_s, _ = timed(bare_step(policy, small, make_optimizer(policy.parameters(),
                                                                  cfg.algo),
                                    cfg.learner.device), seconds * 0.25)
    finally:
        torch.set_num_threads(threads)
    env_steps = batch.num_trajectories * length
    return {"step_s": step_s, "trajectories": batch.num_trajectories, "env_steps": env_steps,
            "env_steps_per_s": env_steps / step_s,
            "bare_env_steps_per_s": small.num_trajectories * length / bare_s}


def timed(step, seconds: float) -> tuple[float, int]:
    """Run ``step`` once to warm up, then for about ``seconds`` (at least twice).
    -> (mean seconds per step, steps)."""
    step()
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 2 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.mean(times)), len(times)


def run(cfg: PushcutConfig) -> dict:
    from common.models import build_policy
    torch.manual_seed(cfg.seed)
    policy = build_policy(cfg.model).eval()
    batch = make_batch(policy, cfg, np.random.default_rng(cfg.seed))
    tokens = int(batch.valid_mask.sum())
    optimizer = make_optimizer(policy.parameters(), cfg.algo)
    # the whole batch is one micro-batch
    grpo = GRPO(policy, optimizer, dataclasses.replace(cfg.algo,
                                                       micro_batch_size=batch.num_trajectories))
    bare_s, bare_n = timed(bare_step(policy, batch, optimizer), cfg.bench.seconds / 2)
    grpo_s, grpo_n = timed(lambda: grpo.update(batch), cfg.bench.seconds / 2)
    figures = {
        "model": f"{cfg.model.name}/{cfg.model.preset}",
        "parameters": sum(p.numel() for p in policy.parameters()),
        "trajectories": batch.num_trajectories, "decisions": batch.num_rows,
        "valid_tokens": tokens, "torch_threads": torch.get_num_threads(),
        "limit_tokens_per_s": tokens / bare_s, "grpo_tokens_per_s": tokens / grpo_s,
        "limit_step_s": bare_s, "grpo_update_s": grpo_s, "ratio": bare_s / grpo_s,
        "steps_measured": {"limit": bare_n, "grpo": grpo_n},
    }
    table = Table(title=f"learner: one GRPO micro-batch ({figures['model']}, "
                        f"{figures['parameters'] / 1e6:.2f} M parameters, "
                        f"{batch.num_rows} decisions, {tokens} tokens)")
    for col in ("", "tokens/s", "s per step", "steps"):
        table.add_column(col)
    table.add_row("limit: bare forward/backward/AdamW", f"{tokens / bare_s:,.0f}",
                  f"{bare_s:.3f}", str(bare_n))
    table.add_row("GRPO.update", f"{tokens / grpo_s:,.0f}", f"{grpo_s:.3f}", str(grpo_n))
    table.add_row("ratio GRPO / limit", f"{figures['ratio']:.2f}", "", "")
    Console().print(table)
    return figures
