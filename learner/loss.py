"""Importance-corrected GRPO loss: pure tensor functions, no I/O, no process state.

What goes in: per-token log-probs of the sampled action tokens under three sets of weights,
all of the tempered distribution softmax(logits / T):

* ``b`` behaviour log-probs, recorded by the actor that sampled the token (its weights
  may be a few versions old),
* ``p`` proximal log-probs, the learner's weights at the start of the update (no grad),
* ``l`` current log-probs, with grad;

plus each trajectory's group advantage and a per-token weight that turns a plain sum into
"token-mean per trajectory, then mean over trajectories". What comes out: a scalar loss and
additive statistics.

Per valid token:  r = exp(l − p),  w = min(exp(p − b), is_cap)  (no grad),
``loss_tok = −w · min(r·A, clip(r, 1 − clip_low, 1 + clip_high)·A)``.
With zero staleness (b == p) w == 1 and this is exactly GRPO with clip-higher (DAPO's
asymmetric clip). This is the decoupled-PPO objective: the clip is taken around the
proximal policy, the staleness correction is the truncated weight w.

Aggregation: :func:`token_weights` gives every valid token the weight
1 / (valid tokens of its trajectory · number of trajectories in the whole batch). The loss is
``sum(weight · loss_tok)``, so summing it over micro-batches and over ranks gives exactly the
mean over trajectories of the token-mean per trajectory, however the batch is split.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def group_advantages(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """A_i = (R_i − mean_g R) / (std_g R + eps) within each group g.

    rewards float [N], group_index int64 [N] (values 0..G−1) -> advantages float32 [N].
    std is the *population* std (divide by n, not n − 1): for a group of n binary rewards
    with k successes it is sqrt(p(1 − p)), p = k/n. veRL's implementation uses the
    Bessel-corrected std instead, which scales every advantage of a group of 8 by
    sqrt(7/8) ≈ 0.94; the sign and ranking are identical. A group with one outcome gets
    A = 0 for every member (the filter normally drops such groups).
    """
    if rewards.shape != group_index.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_index "
                         f"{tuple(group_index.shape)} must both be [N]")
    rewards = rewards.to(torch.float64)
    num_groups = int(group_index.max().item()) + 1 if group_index.numel() else 0
    count = torch.zeros(num_groups, dtype=torch.float64).index_add_(
        0, group_index, torch.ones_like(rewards))
    mean = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_index, rewards)
    mean = mean / count.clamp(min=1)
    centred = rewards - mean[group_index]
    var = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_index, centred ** 2)
    std = (var / count.clamp(min=1)).sqrt()
    return (centred / (std[group_index] + eps)).to(torch.float32)


def token_weights(valid_mask: Tensor, traj_index: Tensor, num_trajectories: int) -> Tensor:
    """Per-token weights for "token-mean per trajectory, then mean over trajectories".

    valid_mask bool [B, K] (one row per decision), traj_index int64 [B] (the row's trajectory,
    0..N_local−1; every row of a trajectory must be present) -> float32 [B, K] with
    1 / (n_valid(traj) · num_trajectories) on valid tokens and 0 elsewhere.
    ``num_trajectories`` is the count over the *whole* batch (all micro-batches, all ranks).
    """
    if valid_mask.dim() != 2 or traj_index.shape != valid_mask.shape[:1]:
        raise ValueError(f"valid_mask {tuple(valid_mask.shape)} must be [B, K] and traj_index "
                         f"{tuple(traj_index.shape)} must be [B]")
    if num_trajectories < 1:
        raise ValueError(f"num_trajectories must be >= 1, got {num_trajectories}")
    mask = valid_mask.to(torch.float64)
    n_local = int(traj_index.max().item()) + 1 if traj_index.numel() else 0
    per_traj = torch.zeros(n_local, dtype=torch.float64).index_add_(0, traj_index, mask.sum(1))
    if bool((per_traj == 0).any()):
        raise ValueError("a trajectory has no valid token; it cannot be token-averaged")
    weights = mask / (per_traj[traj_index][:, None] * num_trajectories)
    return weights.to(torch.float32)


def k3_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """k3 estimator of KL(p || q) per token from samples of p: (q/p) − log(q/p) − 1 ≥ 0.

    log_p, log_q float [B, K] -> float [B, K]. Unbiased for KL(p||q) when tokens ~ p.
    """
    log_ratio = log_q - log_p
    return torch.expm1(log_ratio) - log_ratio


def _surrogate_stats(weights: Tensor, ratio: Tensor, adv: Tensor, raw_is: Tensor,
                     is_weight: Tensor, clip_low: float, clip_high: float, is_cap: float
                     ) -> dict[str, Tensor]:
    """Weighted fractions of tokens whose ratio is clipped (the side that can bind for the
    sign of A) and of importance weights above the cap. All [B, K] except adv [B, 1]."""
    return {
        "clip_frac_low": (weights * ((ratio < 1.0 - clip_low) & (adv < 0)).float()).sum(),
        "clip_frac_high": (weights * ((ratio > 1.0 + clip_high) & (adv > 0)).float()).sum(),
        "is_weight_mean": (weights * is_weight).sum(),
        "is_cap_frac": (weights * (raw_is > is_cap).float()).sum(),
    }


def policy_loss(log_probs: Tensor, proximal_log_probs: Tensor, behaviour_log_probs: Tensor,
                advantages: Tensor, weights: Tensor, *, clip_low: float = 0.2,
                clip_high: float = 0.28, is_cap: float = 2.0,
                ref_log_probs: Tensor | None = None, kl_coef: float = 0.0,
                entropy: Tensor | None = None, entropy_coef: float = 0.0,
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """The importance-corrected GRPO objective for one (micro-)batch of decisions.

    log_probs l [B, K] (with grad), proximal_log_probs p [B, K], behaviour_log_probs b [B, K],
    advantages A [B] (the row's trajectory advantage), weights [B, K] from
    :func:`token_weights` (0 on invalid tokens). Optional: ref_log_probs [B, K] for the k3
    KL penalty to a reference policy (``kl_coef``), entropy [B, K] with grad for an entropy
    bonus (``entropy_coef``). Both terms are skipped when their coefficient is 0.

    Returns (loss scalar, stats): every stat is ``sum(weights · x)``, so stats of
    micro-batches and ranks add up to the batch's trajectory-mean of token-means.
    """
    if not (log_probs.shape == proximal_log_probs.shape == behaviour_log_probs.shape
            == weights.shape) or advantages.shape != log_probs.shape[:1]:
        raise ValueError(f"shape mismatch: log_probs {tuple(log_probs.shape)}, proximal "
                         f"{tuple(proximal_log_probs.shape)}, behaviour "
                         f"{tuple(behaviour_log_probs.shape)}, weights {tuple(weights.shape)}, "
                         f"advantages {tuple(advantages.shape)} (expected [B, K] and [B])")
    p = proximal_log_probs.detach()
    b = behaviour_log_probs.detach()
    adv = advantages.detach()[:, None]
    # masked tokens may hold arbitrary log-probs; zero their log-ratio so no inf/nan leaks
    # into the gradient through 0 · inf
    valid = weights > 0
    log_ratio = torch.where(valid, log_probs - p, torch.zeros_like(log_probs))
    ratio = torch.exp(log_ratio)
    raw_is = torch.exp(torch.where(valid, p - b, torch.zeros_like(p)))
    is_weight = raw_is.clamp(max=is_cap)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    token_loss = -is_weight * surrogate
    loss = (weights * token_loss).sum()

    stats = {"pg_loss": loss.detach(),
             **_surrogate_stats(weights, ratio.detach(), adv, raw_is, is_weight,
                                clip_low, clip_high, is_cap),
             "approx_kl": (weights * -log_ratio.detach()).sum(),
             "behaviour_kl": (weights * k3_kl(b, p)).sum()}
    if kl_coef != 0.0:
        if ref_log_probs is None:
            raise ValueError("kl_coef != 0 needs ref_log_probs")
        kl = torch.where(valid, k3_kl(log_probs, ref_log_probs.detach()),
                         torch.zeros_like(log_probs))
        kl_term = (weights * kl).sum()
        loss = loss + kl_coef * kl_term
        stats["kl_ref"] = kl_term.detach()
    if entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the per-token entropy")
        ent_term = (weights * entropy).sum()
        loss = loss - entropy_coef * ent_term
        stats["entropy_exact"] = ent_term.detach()
    stats["loss"] = loss.detach()
    return loss, stats


def imitation_loss(log_probs: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Self-imitation on replayed successes: the weighted negative log-likelihood of their
    tokens, ``−sum(weights · l)``.

    log_probs l [B, K] (with grad), weights [B, K] (0 on invalid tokens; from
    :func:`token_weights` times the replay coefficient) -> (loss scalar, the same value
    detached). Masked tokens may hold arbitrary log-probs: they are zeroed, not multiplied.
    """
    if log_probs.shape != weights.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and weights "
                         f"{tuple(weights.shape)} must match")
    valid = weights > 0
    nll = -torch.where(valid, log_probs, torch.zeros_like(log_probs))
    loss = (weights * nll).sum()
    return loss, loss.detach()
