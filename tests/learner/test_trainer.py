"""learner/trainer.py: one optimiser step on 2 FSDP2 ranks (gloo, two real processes)
equals the same step taken by one process on the whole batch (a replayed success included);
full state dicts round-trip through the shards."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from common.config.schema import AlgoConfig, LearnerConfig
from learner.batch import collate, stack
from learner.grpo import GRPO, make_optimizer
from tests.learner.helpers import micro_policy, sampled_group

ALGO = AlgoConfig(mini_batches=1, micro_batch_size=2, lr=1e-3, grad_clip=1e9,
                  replay_trajectories=2)
# 9 trajectories of different lengths: rank 0 gets 5, rank 1 gets 4, both in 3 micro-batches
SUCCESSES = [[True, False, False], [True, True, False], [False, True, False]]


def make_groups(policy):
    rng = np.random.default_rng(7)
    return [sampled_group(policy, rng, s, policy_version=0, length=10 + 4 * g)
            for g, s in enumerate(SUCCESSES)]


def make_replay(policy):
    """One replayed success: rank 0 takes it, rank 1 runs the zero-weight pass that keeps
    FSDP's collectives in step."""
    return sampled_group(policy, np.random.default_rng(8), [True, False], length=9)[:1]


def _worker(rank: int, world_size: int, out: str) -> None:
    from learner.trainer import Trainer, init_process_group
    device = init_process_group(rank, world_size, f"file://{out}/pg", LearnerConfig())
    try:
        policy = micro_policy(0)
        groups, replay = make_groups(policy), make_replay(policy)   # before sharding
        trainer = Trainer(policy, ALGO, LearnerConfig(), device)
        stats = trainer.train(groups if rank == 0 else None, replay if rank == 0 else None)
        grads = {n: p.grad.full_tensor() for n, p in trainer.policy.named_parameters()}
        state = trainer.full_state_dict()
        optim = trainer.optimizer_state_dict()
        if rank == 0:
            save_file({k: v.contiguous() for k, v in state.items()}, f"{out}/weights.safetensors")
            save_file({k: v.contiguous() for k, v in grads.items()}, f"{out}/grads.safetensors")
            Path(f"{out}/stats.json").write_text(json.dumps(stats))
            assert optim["state"] and optim["param_groups"]
        else:
            assert state == {}
        # round trip: load the gathered state into fresh shards, gather again
        fresh = Trainer(micro_policy(5), ALGO, LearnerConfig(), device)
        fresh.load_state(state if rank == 0 else None, optim if rank == 0 else None)
        again, optim_again = fresh.full_state_dict(), fresh.optimizer_state_dict()
        if rank == 0:
            for k, v in state.items():
                assert torch.equal(v, again[k]), k
            for k, v in optim["state"].items():
                assert torch.equal(v["exp_avg_sq"], optim_again["state"][k]["exp_avg_sq"]), k
            Path(f"{out}/roundtrip_ok").write_text("1")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_step_equals_one_process_step(tmp_path):
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    assert (tmp_path / "roundtrip_ok").exists()
    two = load_file(tmp_path / "weights.safetensors")
    grads2 = load_file(tmp_path / "grads.safetensors")
    stats2 = json.loads((tmp_path / "stats.json").read_text())

    policy = micro_policy(0)              # the same weights and groups, one process, no FSDP
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    grpo = GRPO(policy, make_optimizer(policy.parameters(), ALGO), ALGO)
    stats1 = grpo.update(collate(make_groups(policy)),
                         replay=stack(make_replay(policy), torch.ones(1)))
    largest = max(float(p.grad.abs().max()) for p in policy.parameters())
    for name, p in policy.named_parameters():
        torch.testing.assert_close(grads2[name], p.grad, rtol=1e-4, atol=1e-6 * largest)
    one = policy.state_dict()
    moved = 0
    for name, p in policy.named_parameters():
        # AdamW's first step is lr·g/(|g| + eps): where |g| is near eps (e.g. a bias that a
        # normalisation cancels, whose gradient is float noise) it amplifies that noise, so
        # the weights are compared where the gradient is well above it (all gradients are
        # compared above)
        sure = p.grad.abs() > 1e-6
        torch.testing.assert_close(two[name][sure], one[name][sure], rtol=1e-5,
                                   atol=5e-3 * ALGO.lr)
        moved += int(not torch.equal(one[name], start[name]))
    assert moved > len(one) // 2                  # the step changed most tensors
    assert stats1["trajectories"] == stats2["trajectories"] == 9
    assert stats2["micro_batches"] == 3 and stats1["micro_batches"] == 5
    for key in ("loss", "grad_norm", "is_weight_mean", "entropy", "tokens", "success_rate",
                "replay_nll"):
        assert stats2[key] == pytest.approx(stats1[key], rel=1e-5, abs=1e-7), key
