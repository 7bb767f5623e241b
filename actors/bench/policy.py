"""``pushcut bench policy``: the policy's own speed, against its bare forward pass.

In: the run config (``model=openvla_oft`` tiny by default; ``model=openvla_oft_7b`` on a GPU;
devices from ``actor.device`` and ``learner.device``, dtype from ``model.dtype``).
Out (printed and returned as a dict):

- actor: action chunks/s of ``Policy.sample`` at batch sizes 8-64 (K = C·D tokens per call),
  against the limit: the bare ``forward`` on ready tensors (no image preprocessing or
  tokenisation) in the same run;
- learner: one RL micro-batch (``algo.micro_batch_size`` decisions): ``log_probs`` with grad,
  a clipped-ratio loss, backward and an AdamW step; sequence tokens/s, action tokens/s,
  FLOPs counted by torch's FlopCounterMode, MFU against the GPU's bf16 dense peak (no
  peak is known for CPUs), against the limit: forward + backward alone;
- peak memory: CUDA max allocated per phase, or the process's peak RSS on CPU.

Launch: ``pushcut bench policy [model=openvla_oft_7b actor.device=cuda learner.device=cuda]``.
"""
from __future__ import annotations

import resource
import time
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from actors.envs import env_spec
from common.models.policy import ObsBatch

BATCH_SIZES = (8, 16, 32, 64)
# dense bf16 tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name()
GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                 "A10G": 70e12, "L4": 121e12, "RTX 4090": 165e12}
INSTRUCTIONS = ["put the black bowl on the plate", "open the top drawer of the cabinet",
                "pick up the alphabet soup and place it in the basket"]


def make_obs(batch: int, cameras: int, size: int, seed: int = 0) -> ObsBatch:
    rng = np.random.default_rng(seed)
    return ObsBatch(images=rng.integers(0, 256, (batch, cameras, size, size, 3), dtype=np.uint8),
                    proprio=rng.standard_normal((batch, 8)).astype(np.float32),
                    instructions=[INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(batch)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, budget_s: float,
          min_calls: int = 2) -> float:
    """Seconds per call of ``fn`` after one warm-up call, over >= min_calls within budget_s."""
    fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < budget_s:
        fn()
        _sync(device)
        calls += 1
    return (time.perf_counter() - start) / calls


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_flops(policy, device: torch.device) -> float | None:
    """The device's dense bf16 peak when the model runs in bf16 on a known GPU, else None."""
    if device.type != "cuda" or policy.dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_BF16_PEAK.items() if k in name), None)


def forward_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (a forward pass), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build_policy(cfg, device: torch.device):
    """The configured policy on ``device``; a model that can (OpenVLA-OFT's 7B) is created
    there directly, without a host copy on the way."""
    from common.models import build_policy as build_registered
    from common.models import policy_class
    cls = policy_class(cfg.model.name)
    if getattr(cls, "BUILDS_ON_DEVICE", False):
        return cls.from_model_config(cfg.model, device=device)
    return build_registered(cfg.model).to(device)


def bench_actor(policy, device: torch.device, cameras: int, size: int,
                budget_s: float) -> list[dict]:
    rows, peak = [], peak_flops(policy, device)
    policy.eval()
    for batch in BATCH_SIZES:
        obs = make_obs(batch, cameras, size)
        generator = torch.Generator(device="cpu").manual_seed(0)
        _reset_peak(device)
        per_call = timed(lambda: policy.sample(obs, 1.6, generator), device, budget_s)
        inputs = policy.prepare_inputs(obs)
        with torch.no_grad():
            bare = timed(lambda: policy(**inputs), device, budget_s)
        flops = forward_flops(lambda: policy(**inputs))
        rows.append({"batch": batch, "chunks_per_s": batch / per_call,
                     "tokens_per_s": batch * policy.chunk_size * policy.action_dim / per_call,
                     "limit_chunks_per_s": batch / bare, "ratio": bare / per_call,
                     "achieved_tflops": flops / per_call / 1e12,
                     "mfu": flops / per_call / peak if peak else None,
                     "peak_mem_gib": peak_memory_gib(device)})
    return rows


def bench_learner(policy, device: torch.device, batch: int, cameras: int, size: int,
                  lr: float, budget_s: float) -> dict:
    policy.train()
    obs = make_obs(batch, cameras, size, seed=1)
    tokens, behaviour = policy.sample(obs, 1.6)
    behaviour = behaviour.to(device)
    advantages = torch.randn(batch, 1, device=device)
    optimiser = torch.optim.AdamW(policy.parameters(), lr=lr)

    def forward_backward():
        logp = policy.log_probs(obs, tokens, 1.6)
        ratio = torch.exp(logp - behaviour)
        loss = -torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.28) * advantages).mean()
        loss.backward()

    def step():
        forward_backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    _reset_peak(device)
    step_s = timed(step, device, budget_s)
    # model FLOPs = 3 x forward (backward is twice the forward; recomputation not counted)
    flops = 3 * forward_flops(lambda: policy.log_probs(obs, tokens, 1.6))
    bare_s = timed(lambda: (forward_backward(), policy.zero_grad(set_to_none=True)),
                   device, budget_s)
    seq_len = policy.sequence_length(obs) if hasattr(policy, "sequence_length") else None
    peak = peak_flops(policy, device)
    return {"micro_batch": batch, "sequence_len": seq_len, "step_s": step_s,
            "seq_tokens_per_s": batch * seq_len / step_s if seq_len else None,
            "action_tokens_per_s": batch * policy.chunk_size * policy.action_dim / step_s,
            "tflops_per_step": flops / 1e12, "achieved_tflops": flops / step_s / 1e12,
            "mfu": flops / step_s / peak if peak else None,
            "limit_step_s": bare_s, "ratio": bare_s / step_s,
            "peak_mem_gib": peak_memory_gib(device)}


def _mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _print(figures: dict) -> None:
    console = Console()
    actor = Table(title=f"actor: Policy.sample, {figures['model']} on {figures['actor_device']}")
    for col in ("batch", "chunks/s", "tokens/s", "limit chunks/s", "ratio", "TFLOP/s",
                "MFU", "peak GiB"):
        actor.add_column(col, justify="right")
    for r in figures["actor"]:
        actor.add_row(str(r["batch"]), f"{r['chunks_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
                      f"{r['limit_chunks_per_s']:.1f}", f"{r['ratio']:.2f}",
                      f"{r['achieved_tflops']:.3f}", _mfu(r["mfu"]), f"{r['peak_mem_gib']:.2f}")
    console.print(actor)
    L = figures["learner"]
    seq = "n/a" if L["seq_tokens_per_s"] is None else f"{L['seq_tokens_per_s']:.0f}"
    console.print(f"learner micro-batch {L['micro_batch']} × {L['sequence_len']} tokens on "
                  f"{figures['learner_device']}: {L['step_s']:.3f} s/step, "
                  f"{seq} seq tokens/s, {L['action_tokens_per_s']:.0f} "
                  f"action tokens/s, {L['achieved_tflops']:.3f} TFLOP/s, MFU {_mfu(L['mfu'])} "
                  f"(bf16 on a known GPU only), vs forward+backward alone {L['ratio']:.2f}, "
                  f"peak {L['peak_mem_gib']:.2f} GiB")


def run(cfg) -> dict:
    actor_device, learner_device = torch.device(cfg.actor.device), torch.device(cfg.learner.device)
    env = env_spec(cfg.env.name)   # the observations its policy will see
    cameras, size = env.views(cfg.env), env.image_size(cfg.env)
    budget = max(cfg.bench.seconds / (2 * len(BATCH_SIZES) + 2), 0.5)
    policy = build_policy(cfg, actor_device)
    params = sum(p.numel() for p in policy.parameters())
    actor = bench_actor(policy, actor_device, cameras, size, budget)
    policy.to(learner_device)
    try:
        learner = bench_learner(policy, learner_device, cfg.algo.micro_batch_size, cameras,
                                size, cfg.algo.lr, budget)
    except torch.OutOfMemoryError as exc:
        raise SystemExit(f"bench policy: the learner micro-batch ({cfg.algo.micro_batch_size}) "
                         f"does not fit one {learner_device} with AdamW states; lower "
                         f"algo.micro_batch_size or shard with `pushcut learner "
                         f"learner.world_size=N` ({exc})") from None
    machine = (torch.cuda.get_device_name(learner_device) if learner_device.type == "cuda"
               else "cpu")
    figures = {"model": f"{cfg.model.name}/{cfg.model.preset} ({params / 1e6:.1f}M params, "
                        f"{cfg.model.dtype})", "params": params,
               "actor_device": str(actor_device), "learner_device": str(learner_device),
               "machine": machine, "threads": torch.get_num_threads(),
               "actor": actor, "learner": learner}
    _print(figures)
    return figures
