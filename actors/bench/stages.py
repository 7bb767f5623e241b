"""The actor's two stages on their own, for ``pushcut bench pipeline``
(deploy/bench_pipeline.py): bare env stepping and bare inference of ONE actor's envs and
policy, each in env steps per second.

In: the run config — ``env``, ``model`` (fresh weights, or ``model.checkpoint``), ``actor``
(``num_envs``, ``subprocess_envs``, ``double_buffer``, ``device``, ``torch_threads``),
``algo.temperature``, ``seed`` — and the seconds each stage is measured for. Out: a dict.

- env: the actor's env workers (:func:`~actors.env_workers.make_workers`, in-process or
  subprocesses as configured) step episodes of uniformly random actions in lock-step, in
  chunks of C rendered on their last step, resets included (:func:`actors.bench.actor.replay`);
- inference: the same policy samples action chunks (and turns them into actions) in
  batches of the actor's forward-pass size (all envs, half of them when the actor
  double-buffers) on the envs' real first observations (:func:`actors.bench.actor.bare_inference`);
  decisions/s x the env steps per decision of the env stage = env steps/s.
"""
from __future__ import annotations

import time

import torch

from actors.actor import double_buffer_for
from actors.bench.actor import (bare_inference, obs_batch, pinned, random_episodes,
                                replay_counts, warm_up)
from actors.env_workers import make_workers


def env_rate(workers: list, played: list, seconds: float) -> dict:
    """Replay ``played`` on ``workers`` over and over for about ``seconds`` (at least once).
    -> env steps/s, env steps per decision, mean episode length."""
    steps = decisions = episodes = 0
    t0 = time.perf_counter()
    while episodes == 0 or time.perf_counter() - t0 < seconds:
        s, d = replay_counts(workers, played)
        steps, decisions, episodes = steps + s, decisions + d, episodes + len(played)
    elapsed = time.perf_counter() - t0
    return {"env_steps_per_s": steps / elapsed, "steps_per_decision": steps / decisions,
            "episode_length": steps / episodes, "env_seconds": elapsed}


def inference_rate(policy, obs, seconds: float, temperature: float,
                   steps_per_decision: float, seed: int = 0) -> dict:
    """Forward passes of ``policy`` on ``obs`` (one batch) for about ``seconds`` after one
    warm-up call. -> decisions/s and env steps/s (decisions x ``steps_per_decision``)."""
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    bare_inference(policy, obs, 1, temperature, generator)
    calls, spent = 0, 0.0
    while calls < 2 or spent < seconds:
        spent += bare_inference(policy, obs, 1, temperature, generator)
        calls += 1
    decisions_per_s = calls * len(obs.instructions) / spent
    return {"decisions_per_s": decisions_per_s, "batch": len(obs.instructions),
            "inference_steps_per_s": decisions_per_s * steps_per_decision,
            "inference_seconds": spent}


def actor_stage_rates(cfg, seconds: float) -> dict:
    """Bare env stepping and bare inference of one actor (see the module docstring), each
    for about ``seconds``. -> {env_steps_per_s, inference_steps_per_s, steps_per_decision,
    episode_length, batch, double_buffer, ...}."""
    threads = torch.get_num_threads()
    if cfg.actor.torch_threads:
        torch.set_num_threads(cfg.actor.torch_threads)
    try:
        with pinned(cfg.placement.actors):
            return _actor_stage_rates(cfg, seconds)
    finally:
        torch.set_num_threads(threads)


def _actor_stage_rates(cfg, seconds: float) -> dict:
    from common.models import build_policy
    workers = make_workers(cfg.env, cfg.actor.num_envs, cfg.seed, cfg.actor.subprocess_envs,
                           cpus=cfg.placement.env_workers, fifo=cfg.placement.env_workers_fifo)
    try:
        warm_up(workers)
        policy = build_policy(cfg.model).to(cfg.actor.device).eval()
        played = random_episodes(workers, 2 * len(workers), policy.chunk_size,
                                 policy.action_dim, cfg.seed)
        env = env_rate(workers, played, seconds)
        double = double_buffer_for(cfg.actor, workers)
        batch = -(-len(workers) // 2) if double else len(workers)
        inference = inference_rate(policy, obs_batch(played, batch), seconds,
                                   cfg.algo.temperature, env["steps_per_decision"], cfg.seed)
    finally:
        for w in workers:
            w.close()
    return {**env, **inference, "double_buffer": double, "num_envs": len(workers)}
