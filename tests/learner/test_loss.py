"""learner/loss.py against naive per-token Python loops: values and gradients."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from learner.loss import group_advantages, imitation_loss, k3_kl, policy_loss, token_weights

CLIP_LOW, CLIP_HIGH, IS_CAP = 0.2, 0.28, 2.0


def make_case(seed: int, rows_per_traj=(3, 2, 4, 1), K=6):
    """Random decisions with masked tokens, ratios on both sides of the clip range and
    importance weights above the cap."""
    g = torch.Generator().manual_seed(seed)
    traj_index = torch.cat([torch.full((n,), i) for i, n in enumerate(rows_per_traj)])
    B = traj_index.numel()
    mask = torch.rand(B, K, generator=g) > 0.25
    mask[:, 0] = True                       # every trajectory keeps some valid token
    b = -torch.rand(B, K, generator=g) * 4 - 0.1
    p = b + (torch.rand(B, K, generator=g) - 0.3) * 3.0     # exp(p - b) up to ~e^2.1 > cap
    l = (p + (torch.rand(B, K, generator=g) - 0.5) * 1.2).requires_grad_(True)
    # masked tokens hold garbage, as padding would
    b = torch.where(mask, b, torch.full_like(b, -1e4))
    adv_traj = torch.randn(len(rows_per_traj), generator=g)
    return traj_index, mask, b, p, l, adv_traj


def naive_loss(traj_index, mask, b, p, l, adv_traj, is_weighting=True):
    """Token-mean per trajectory, then mean over trajectories, one token at a time."""
    n_traj = len(adv_traj)
    total = 0.0
    for i in range(n_traj):
        terms = []
        for row in range(len(traj_index)):
            if int(traj_index[row]) != i:
                continue
            for k in range(mask.shape[1]):
                if not bool(mask[row, k]):
                    continue
                A = float(adv_traj[i])
                r = torch.exp(l[row, k] - float(p[row, k]))
                w = min(math.exp(float(p[row, k]) - float(b[row, k])), IS_CAP) if is_weighting else 1.0
                unclipped = r * A
                clipped = torch.clamp(r, 1 - CLIP_LOW, 1 + CLIP_HIGH) * A
                terms.append(-w * torch.minimum(unclipped, clipped))
        total = total + sum(terms) / len(terms)
    return total / n_traj


def vector_loss(traj_index, mask, b, p, l, adv_traj, **kw):
    weights = token_weights(mask, traj_index, len(adv_traj))
    return policy_loss(l, p, b, adv_traj[traj_index], weights, clip_low=CLIP_LOW,
                       clip_high=CLIP_HIGH, is_cap=IS_CAP, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_gradient_match_naive_loop(seed):
    traj_index, mask, b, p, l, adv = make_case(seed)
    loss, stats = vector_loss(traj_index, mask, b, p, l, adv)
    (grad,) = torch.autograd.grad(loss, l)
    l2 = l.detach().clone().requires_grad_(True)
    ref = naive_loss(traj_index, mask, b, p, l2, adv)
    (ref_grad,) = torch.autograd.grad(ref, l2)
    torch.testing.assert_close(loss, ref.to(loss.dtype), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert torch.all(grad[~mask] == 0)
    # the case exercises both clip sides and the cap, so the test can tell them apart
    assert stats["clip_frac_low"] > 0 and stats["clip_frac_high"] > 0
    assert 0 < stats["is_cap_frac"] < 1


def test_clipped_tokens_have_no_gradient():
    # one trajectory, four tokens: A>0 and r above 1+clip_high; A<0 and r below 1-clip_low;
    # each inside the range
    mask = torch.ones(2, 2, dtype=torch.bool)
    traj_index = torch.tensor([0, 1])
    p = torch.zeros(2, 2)
    l = torch.tensor([[0.5, 0.1], [-0.5, -0.1]], requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    weights = token_weights(mask, traj_index, 2)
    loss, stats = policy_loss(l, p, p, adv[traj_index], weights)
    (grad,) = torch.autograd.grad(loss, l)
    assert grad[0, 0] == 0 and grad[1, 0] == 0          # clipped: high side, low side
    assert grad[0, 1] < 0 and grad[1, 1] > 0             # ascend A>0, descend A<0
    torch.testing.assert_close(stats["clip_frac_high"], torch.tensor(0.25))
    torch.testing.assert_close(stats["clip_frac_low"], torch.tensor(0.25))


def test_is_weight_is_capped_and_not_differentiated():
    mask = torch.ones(1, 3, dtype=torch.bool)
    b = torch.tensor([[-3.0, -1.0, -1.0]])
    p = torch.tensor([[-1.0, -1.0, -1.5]], requires_grad=True)   # weights e^2 (capped), 1, e^-0.5
    l = p.detach().clone().requires_grad_(True)
    weights = token_weights(mask, torch.tensor([0]), 1)
    loss, stats = policy_loss(l, p, b, torch.tensor([1.0]), weights, is_cap=2.0)
    torch.testing.assert_close(stats["is_weight_mean"],
                               torch.tensor((2.0 + 1.0 + math.exp(-0.5)) / 3))
    torch.testing.assert_close(stats["is_cap_frac"], torch.tensor(1 / 3))
    grad_l, grad_p = torch.autograd.grad(loss, [l, p], allow_unused=True)
    # d/dl of -w·r·A at r = 1 is -w·A/3 per token
    torch.testing.assert_close(grad_l, -torch.tensor([[2.0, 1.0, math.exp(-0.5)]]) / 3)
    assert grad_p is None          # p (and so w) is a constant of the objective


@pytest.mark.parametrize("seed", [3, 4])
def test_zero_staleness_equals_grpo_with_clip_higher(seed):
    """b == p: the importance weight is 1 and the loss is GRPO's clipped surrogate with
    r = π/π_old, written here independently of learner.loss."""
    traj_index, mask, _, p, l, adv = make_case(seed)
    loss, stats = vector_loss(traj_index, mask, p, p, l, adv)
    l2 = l.detach().clone().requires_grad_(True)
    ratio = torch.exp(l2 - p)
    A = adv[traj_index][:, None]
    per_tok = -torch.minimum(ratio * A, ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH) * A)
    per_tok = torch.where(mask, per_tok, torch.zeros_like(per_tok))
    per_traj = [per_tok[traj_index == i].sum() / mask[traj_index == i].sum()
                for i in range(len(adv))]
    grpo = torch.stack(per_traj).mean()
    torch.testing.assert_close(loss, grpo)
    torch.testing.assert_close(torch.autograd.grad(loss, l)[0], torch.autograd.grad(grpo, l2)[0])
    torch.testing.assert_close(stats["is_weight_mean"], torch.tensor(1.0))
    assert stats["is_cap_frac"] == 0 and stats["behaviour_kl"].abs() < 1e-7


def test_micro_batches_sum_to_the_full_batch():
    traj_index, mask, b, p, l, adv = make_case(5, rows_per_traj=(2, 3, 1, 2, 2))
    full, _ = vector_loss(traj_index, mask, b, p, l, adv)
    parts = []
    for trajs in ([0, 1], [2, 3, 4]):
        rows = torch.isin(traj_index, torch.tensor(trajs))
        local = torch.unique(traj_index[rows], return_inverse=True)[1]
        w = token_weights(mask[rows], local, num_trajectories=len(adv))
        parts.append(policy_loss(l[rows], p[rows], b[rows], adv[traj_index[rows]], w)[0])
    torch.testing.assert_close(sum(parts), full)


def test_kl_and_entropy_terms_match_naive():
    traj_index, mask, b, p, l, adv = make_case(6)
    ref = p - 0.3
    entropy = (-l * 0.7).detach().clone().requires_grad_(True)
    base, _ = vector_loss(traj_index, mask, b, p, l, adv)
    full, stats = vector_loss(traj_index, mask, b, p, l, adv, ref_log_probs=ref, kl_coef=0.1,
                              entropy=entropy, entropy_coef=0.01)
    kl_sum, ent_sum = 0.0, 0.0
    for i in range(len(adv)):
        rows = traj_index == i
        m = mask[rows]
        lr = (ref[rows] - l.detach()[rows])[m]
        kl_sum += float((torch.exp(lr) - lr - 1).mean()) / len(adv)
        ent_sum += float(entropy.detach()[rows][m].mean()) / len(adv)
    assert math.isclose(float(stats["kl_ref"]), kl_sum, rel_tol=1e-5)
    assert math.isclose(float((full - base).detach()), 0.1 * kl_sum - 0.01 * ent_sum, rel_tol=1e-4)
    assert torch.autograd.grad(full, entropy)[0][mask].lt(0).all()   # bonus raises entropy
    with pytest.raises(ValueError, match="ref_log_probs"):
        vector_loss(traj_index, mask, b, p, l, adv, kl_coef=0.1)


def test_k3_is_nonnegative_and_zero_at_equality():
    a = torch.randn(100)
    assert torch.all(k3_kl(a, a.flip(0)) >= 0) and torch.all(k3_kl(a, a) == 0)


def test_group_advantages_population_std():
    rewards = torch.tensor([1., 0., 0., 1., 1., 1., 1., 1., 0., 1., 0.])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    adv = group_advantages(rewards, groups)
    for g in range(3):
        rs = [float(r) for r, gi in zip(rewards, groups) if gi == g]
        mu, sd = statistics.fmean(rs), statistics.pstdev(rs)
        want = [(r - mu) / (sd + 1e-6) for r in rs]
        torch.testing.assert_close(adv[groups == g], torch.tensor(want))
    assert torch.all(adv[groups == 1] == 0)             # uniform outcome: no signal


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="shape mismatch"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2),
                    torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no valid token"):
        token_weights(torch.zeros(1, 3, dtype=torch.bool), torch.tensor([0]), 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_imitation_loss_matches_naive_loop(seed):
    """-sum(weights · l) is the coefficient times the mean over trajectories of each one's
    token-mean NLL; masked tokens (holding garbage, even -inf) add nothing."""
    traj_index, mask, _, _, l, _ = make_case(seed)
    n_traj, coef = int(traj_index.max()) + 1, 0.7
    garbage = torch.where(mask, torch.zeros_like(l), torch.full_like(l, -float("inf")))
    logp = (l + garbage).detach().requires_grad_(True)
    weights = token_weights(mask, traj_index, n_traj) * coef
    loss, value = imitation_loss(logp, weights)
    loss.backward()

    naive_l = l.detach().clone().requires_grad_(True)
    total = 0.0
    for i in range(n_traj):
        terms = [-naive_l[row, k] for row in range(len(traj_index)) if int(traj_index[row]) == i
                 for k in range(mask.shape[1]) if bool(mask[row, k])]
        total = total + sum(terms) / len(terms)
    naive = coef * total / n_traj
    naive.backward()
    assert float(value) == pytest.approx(float(naive.detach()), rel=1e-5)
    torch.testing.assert_close(logp.grad, naive_l.grad)     # 0 on masked tokens, finite
    with pytest.raises(ValueError, match="must match"):
        imitation_loss(logp[:1], weights)
