"""learner/grpo.py and learner/batch.py on the micro tiny VLA."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from common.config.schema import AlgoConfig
from learner.batch import (collate, micro_batches, pack_groups, rank_trajectories, stack,
                           unpack_groups)
from learner.grpo import GRPO
from learner.loss import imitation_loss, policy_loss, token_weights
from tests.learner.helpers import TEMPERATURE, micro_policy, sampled_group


def algo(**kw) -> AlgoConfig:
    """One optimiser step per batch unless a test asks for mini-batches: the tests compare
    a step with the loss of the whole batch."""
    return AlgoConfig(**{"mini_batches": 1, **kw})


MIXED = [True, False, False, True]


def groups_of(policy, seed=0, n=3, version=0):
    rng = np.random.default_rng(seed)
    return [sampled_group(policy, rng, MIXED if g % 2 == 0 else [False, True, False, False],
                          policy_version=version, task_id=f"spatial/{g}") for g in range(n)]


def sgd_step(model, loss, lr):
    """The naive side of a step: backward, then p -= lr * grad."""
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad


def assert_same_weights(a, b):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-6)


def test_collate_rows_advantages_and_round_trip():
    policy = micro_policy()
    groups = groups_of(policy)
    batch = collate(groups)
    trajs = [t for g in groups for t in g]
    assert batch.num_trajectories == 12
    assert batch.num_rows == sum(t.num_decisions for t in trajs)
    assert int(batch.valid_mask.sum()) == sum(t.length * t.action_dim for t in trajs)
    # group 0 is 2/4 successes: advantages +-1 (population std 0.5)
    first = batch.select([0, 1])
    torch.testing.assert_close(first.advantages.unique(), torch.tensor([-1.0, 1.0]),
                               atol=1e-5, rtol=0)
    assert first.traj_index.unique().tolist() == [0, 1]
    assert first.trajectory_ids == [trajs[0].trajectory_id, trajs[1].trajectory_id]
    back = unpack_groups(pack_groups(groups))
    assert all(a.equals(b) for ga, gb in zip(groups, back) for a, b in zip(ga, gb))
    parts = micro_batches(batch, 5)
    assert sum(p.num_trajectories for p in parts) == 12
    with pytest.raises(ValueError, match="group_size"):
        collate([groups[0][:3]])


def test_update_gradient_equals_full_batch_loss():
    """Micro-batching with accumulation gives the same step as one full-batch loss."""
    policy = micro_policy()
    groups = groups_of(policy)
    reference = copy.deepcopy(policy)
    cfg = algo(micro_batch_size=5, grad_clip=1e9, lr=1.0)
    before = [p.detach().clone() for p in policy.parameters()]
    grpo = GRPO(policy, torch.optim.SGD(policy.parameters(), lr=1.0), cfg, policy_version=0)
    stats = grpo.update(collate(groups))
    assert stats["micro_batches"] == 3 and grpo.policy_version == 1

    batch = collate(groups)
    reference.eval()
    logp = reference.log_probs(batch.obs(), batch.tokens, TEMPERATURE)
    w = token_weights(batch.valid_mask, batch.traj_index, batch.num_trajectories)
    loss, _ = policy_loss(logp, logp.detach(), batch.behaviour_log_probs, batch.advantages, w)
    loss_value = float(loss.detach())
    loss.backward()
    for b, p, r in zip(before, policy.parameters(), reference.parameters()):
        torch.testing.assert_close(b - p.detach(), r.grad, rtol=1e-4, atol=1e-7)
    assert abs(stats["loss"] - loss_value) < 1e-5
    total = torch.cat([r.grad.flatten() for r in reference.parameters()]).norm()
    assert abs(stats["grad_norm"] - float(total)) < 1e-4 * float(total)


def test_grad_clip_bounds_the_step_and_stats_are_sane():
    policy = micro_policy()
    groups = groups_of(policy, version=3)
    before = torch.cat([p.detach().flatten().clone() for p in policy.parameters()])
    cfg = algo(micro_batch_size=16, grad_clip=1e-3)
    grpo = GRPO(policy, torch.optim.SGD(policy.parameters(), lr=1.0), cfg, policy_version=5)
    stats = grpo.update(collate(groups))
    after = torch.cat([p.detach().flatten() for p in policy.parameters()])
    assert stats["grad_norm"] > 1e-3
    assert abs(float((after - before).norm()) - 1e-3) < 1e-6
    assert stats["staleness_mean"] == 2 and stats["staleness_max"] == 2
    assert stats["policy_version"] == 6 and stats["trajectories"] == 12
    # the behaviour log-probs came from these weights: importance weight 1, ratio 1
    assert abs(stats["is_weight_mean"] - 1) < 1e-4 and stats["is_cap_frac"] == 0
    assert stats["clip_frac_low"] == 0 and stats["clip_frac_high"] == 0
    assert stats["entropy"] > 0 and stats["tokens"] == float(collate(groups).valid_mask.sum())
    assert stats["success_rate"] == pytest.approx(5 / 12)


def test_second_epoch_uses_the_start_weights_as_proximal():
    policy = micro_policy()
    cfg = algo(micro_batch_size=16, epochs_per_batch=3, lr=3e-3)
    grpo = GRPO(policy, torch.optim.AdamW(policy.parameters(), lr=3e-3), cfg)
    stats = grpo.update(collate(groups_of(policy)))
    # later epochs see r != 1 relative to the fixed proximal log-probs
    assert abs(stats["approx_kl"]) > 1e-6
    assert grpo.policy_version == 1 and stats["epochs"] == 3
    # three epochs of gradient steps take longer than the one no-grad pass
    assert 0 < stats["proximal_s"] < stats["steps_s"]


def test_updates_raise_the_probability_of_successful_actions():
    policy = micro_policy(1)
    groups = groups_of(policy, n=2)
    batch = collate(groups)
    cfg = algo(micro_batch_size=8, lr=1e-3)
    grpo = GRPO(policy, torch.optim.AdamW(policy.parameters(), lr=cfg.lr), cfg)

    def margin() -> float:
        with torch.no_grad():
            policy.eval()
            logp = policy.log_probs(batch.obs(), batch.tokens, TEMPERATURE)
        diff = (logp - batch.behaviour_log_probs) * batch.valid_mask
        per_row = diff.sum(1) / batch.valid_mask.sum(1)
        return float((per_row * batch.advantages.sign()).mean())

    start = margin()
    for _ in range(5):
        grpo.update(batch)
    assert margin() > start + 0.05


def test_staleness_reweights_tokens():
    """Trajectories sampled by an older policy get importance weights != 1 and the stats
    report how stale they were."""
    old = micro_policy(2)
    groups = groups_of(old, version=0)
    policy = micro_policy(3)
    grpo = GRPO(policy, torch.optim.SGD(policy.parameters(), lr=0.0), algo(),
                policy_version=4)
    stats = grpo.update(collate(groups))
    assert stats["staleness_max"] == 4
    assert abs(stats["is_weight_mean"] - 1) > 1e-3 and stats["behaviour_kl"] > 0


def test_kl_and_entropy_need_their_inputs():
    policy = micro_policy()
    with pytest.raises(ValueError, match="reference"):
        GRPO(policy, torch.optim.SGD(policy.parameters(), lr=0.1), algo(kl_coef=0.1))
    ref = micro_policy()
    grpo = GRPO(policy, torch.optim.SGD(policy.parameters(), lr=0.0),
                algo(kl_coef=0.1, entropy_coef=0.01), reference=ref)
    stats = grpo.update(collate(groups_of(policy, n=1)))
    assert stats["kl_ref"] == pytest.approx(0.0, abs=1e-6)   # same init as the reference
    assert stats["entropy_exact"] == pytest.approx(stats["entropy"])


@pytest.mark.parametrize("epochs", [1, 2])
def test_mini_batches_take_one_step_each_on_their_own_trajectories(epochs):
    """Two mini-batches = two SGD steps: the second from the weights after the first, its
    gradient from the second half's trajectories only (loss scaled by the mini-batch count),
    each against the proximal log-probs of the start weights, in every epoch (the first
    mini-batch's are taken from its own first pass)."""
    policy = micro_policy()
    groups = groups_of(policy, n=2)
    naive = copy.deepcopy(policy)
    lr = 0.05
    cfg = algo(micro_batch_size=4, mini_batches=2, grad_clip=1e9, lr=lr, epochs_per_batch=epochs)
    grpo = GRPO(policy, torch.optim.SGD(policy.parameters(), lr=lr), cfg)
    stats = grpo.update(collate(groups))
    assert stats["mini_batches"] == 2 and stats["micro_batches"] == 2

    batch = collate(groups)
    naive.eval()
    with torch.no_grad():
        proximal = naive.log_probs(batch.obs(), batch.tokens, TEMPERATURE)
    for half in [range(0, 4), range(4, 8)] * epochs:
        part = batch.select(list(half))
        rows = torch.isin(batch.traj_index, torch.tensor(list(half)))
        naive.zero_grad()
        logp = naive.log_probs(part.obs(), part.tokens, TEMPERATURE)
        w = token_weights(part.valid_mask, part.traj_index, batch.num_trajectories)
        loss, _ = policy_loss(logp, proximal[rows], part.behaviour_log_probs, part.advantages, w)
        sgd_step(naive, loss * 2, lr)
    assert_same_weights(policy, naive)


def test_replayed_successes_add_their_weighted_log_likelihood_to_each_step():
    """Two mini-batches with 3 replayed successes: each SGD step takes the GRPO loss of its
    half plus the NLL of its share of the replay (2 then 1 trajectories), each replayed
    trajectory weighted replay_coef / (the batch's trajectory count), both times the
    mini-batch count; the batch's counts leave the replayed trajectories out."""
    policy = micro_policy()
    groups = groups_of(policy, n=2)
    old = groups_of(policy, seed=5, n=2)
    replayed = [t for g in old for t in g if t.success][:3]
    naive, plain = copy.deepcopy(policy), copy.deepcopy(policy)
    lr, coef = 0.05, 0.5
    cfg = algo(micro_batch_size=4, mini_batches=2, grad_clip=1e9, lr=lr, replay_coef=coef,
               replay_trajectories=3)
    grpo = GRPO(policy, torch.optim.SGD(policy.parameters(), lr=lr), cfg)
    stats = grpo.update(collate(groups), replay=stack(replayed, torch.ones(3)))
    without = GRPO(plain, torch.optim.SGD(plain.parameters(), lr=0.0), cfg).update(collate(groups))

    batch, replay = collate(groups), stack(replayed, torch.ones(3))
    naive.eval()
    with torch.no_grad():
        proximal = naive.log_probs(batch.obs(), batch.tokens, TEMPERATURE)
        replay_nll = -naive.log_probs(replay.obs(), replay.tokens, TEMPERATURE)
    for half, share in [(range(0, 4), [0, 1]), (range(4, 8), [2])]:
        part, mine = batch.select(list(half)), replay.select(share)
        rows = torch.isin(batch.traj_index, torch.tensor(list(half)))
        naive.zero_grad()
        logp = naive.log_probs(part.obs(), part.tokens, TEMPERATURE)
        w = token_weights(part.valid_mask, part.traj_index, batch.num_trajectories)
        loss, _ = policy_loss(logp, proximal[rows], part.behaviour_log_probs, part.advantages, w)
        w_replay = token_weights(mine.valid_mask, mine.traj_index, batch.num_trajectories) * coef
        nll, _ = imitation_loss(naive.log_probs(mine.obs(), mine.tokens, TEMPERATURE), w_replay)
        sgd_step(naive, (loss + nll) * 2, lr)
    assert_same_weights(policy, naive)
    # the statistic: token-mean NLL per replayed trajectory, averaged, at the step's weights
    mean_nll = token_weights(replay.valid_mask, replay.traj_index, 3) * replay_nll
    assert stats["replay_nll"] == pytest.approx(float(mean_nll.sum()), rel=0.05)
    assert "replay_nll" not in without
    assert stats["trajectories"] == without["trajectories"] == 8      # replay is not counted
    assert stats["tokens"] == without["tokens"]


def test_grad_cosine_tells_agreeing_halves_from_opposed_ones():
    policy = micro_policy()
    group = groups_of(policy, n=1)[0]
    cfg = algo(micro_batch_size=4, lr=0.0)
    grpo = GRPO(policy, torch.optim.SGD(policy.parameters(), lr=0.0), cfg)
    same = grpo.update(collate([group, group]))          # both halves the same trajectories
    assert same["grad_cosine"] == pytest.approx(1.0, abs=1e-4)
    flipped = [dataclasses.replace(t, success=not t.success) for t in group]
    opposed = grpo.update(collate([group, flipped]))     # same actions, opposite advantages
    assert opposed["grad_cosine"] == pytest.approx(-1.0, abs=1e-4)
    single = GRPO(policy, torch.optim.SGD(policy.parameters(), lr=0.0),
                  algo(micro_batch_size=16)).update(collate([group]))
    assert single["grad_cosine"] is None                 # one micro-batch: no halves


def test_a_non_finite_loss_never_steps_the_optimiser(monkeypatch):
    """A loss that is NaN while its gradient is finite (here: a NaN constant added to the real
    loss, which leaves the gradient unchanged) must not move the weights; the update still
    makes its version and reports the loss, so the learner can quarantine the batch."""
    import learner.grpo as grpo_module

    def nan_loss(*args, **kwargs):
        loss, stats = policy_loss(*args, **kwargs)
        nan = torch.tensor(float("nan"))
        return loss + nan, {**stats, "loss": stats["loss"] + nan}

    monkeypatch.setattr(grpo_module, "policy_loss", nan_loss)
    policy = micro_policy()
    groups = groups_of(policy)
    before = torch.cat([p.detach().flatten().clone() for p in policy.parameters()])
    cfg = algo(micro_batch_size=16, grad_clip=1e9)
    grpo = GRPO(policy, torch.optim.SGD(policy.parameters(), lr=1.0), cfg, policy_version=0)
    stats = grpo.update(collate(groups))
    after = torch.cat([p.detach().flatten() for p in policy.parameters()])
    assert np.isfinite(stats["grad_norm"]) and stats["grad_norm"] > 0
    assert np.isnan(stats["loss"]) and stats["policy_version"] == 1
    assert torch.equal(before, after)


def test_rank_shares_are_contiguous_and_empty_only_when_allowed():
    assert [rank_trajectories(5, r, 2).tolist() for r in range(2)] == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="cannot be split"):
        rank_trajectories(1, 0, 2)
    assert [rank_trajectories(1, r, 2, allow_empty=True).tolist() for r in range(2)] == [[0], []]
