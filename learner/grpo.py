"""GRPO: one importance-corrected GRPO update of a policy from one batch of groups.

In: a :class:`~learner.batch.Batch` (this rank's share of the groups when training on
several FSDP ranks). Out: new weights in the policy (one optimiser step by default) and a
stats dict. ``policy_version`` counts updates: every call of :meth:`GRPO.update` makes one
new version. The logic only: no sockets, no store, no checkpoints (learner_process.py owns
those); with torch.distributed initialised it reduces its statistics over the ranks.

Order of work in ``update`` (see learner/loss.py for the objective):

1. split this rank's trajectories into micro-batches of at most ``algo.micro_batch_size``
   (the same count on every rank, so FSDP's collectives line up);
2. proximal log-probs p: the weights as they are when the update starts, no grad. The
   first mini-batch's gradient pass of the first epoch runs on exactly those weights, so
   its p is the detached log-probs of that pass instead of a second forward (the values
   are the same; with one mini-batch of one epoch this saves a third of the compute). The
   other mini-batches' p is computed up front, and later epochs reuse all of it;
3. per micro-batch: forward with grad, loss, backward (gradients accumulate);
4. grad-norm clip to ``algo.grad_clip``, one optimiser step per mini-batch (skipped, on
   every rank, when a micro-batch's loss or the grad norm is not finite): the batch's
   micro-batches are cut into ``algo.mini_batches`` consecutive runs, each one step, for
   each of ``epochs_per_batch`` epochs, so that with several steps per batch the PPO clip
   bounds how far the policy moves from the proximal one;
5. statistics: the last epoch's loss terms, the exact entropy, ``grad_cosine``, the
   cosine between the gradients of the two halves of the first step's micro-batches (one
   rank only): the gradient's signal-to-noise, near 0 when trajectories disagree, and the
   seconds of the no-grad passes (``proximal_s``), of the gradient steps (``steps_s``) and of
   each optimiser step in order (``mini_batch_s``, epochs x mini-batches).

Success replay (``algo.replay_trajectories`` > 0, learner/replay.py): the replayed successes
are cut into one micro-batch per optimiser step, whose negative log-likelihood, weighted
``algo.replay_coef`` / (the batch's trajectory count) per trajectory, joins that step's
gradient (``replay_nll``: their token-mean NLL per trajectory, averaged).

The policy runs in eval mode (no dropout) here, as on the actors: the learner's log-probs
must be those of the distribution the actors sampled from.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
import torch.distributed as dist

from common.config.schema import AlgoConfig
from common.models.policy import logprob_temperature
from learner.batch import Batch, micro_batches, step_micro_batches
from learner.loss import imitation_loss, policy_loss, token_weights

log = logging.getLogger(__name__)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2 grad norm) -> its full value; plain tensors pass through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class GRPO:
    """``GRPO(policy, optimizer, algo_cfg).update(batch) -> stats``.

    ``policy`` fills common.models.policy.Policy (optionally FSDP-sharded); if it has
    ``logits(obs) -> [B, K, num_bins]`` the exact entropy is reported (and can be a loss
    term), otherwise its ``log_probs`` is used and the entropy is estimated from the
    behaviour log-probs. ``reference``: a frozen policy for the KL term, needed only when
    ``algo_cfg.kl_coef != 0``.
    """

    def __init__(self, policy: Any, optimizer: torch.optim.Optimizer, algo_cfg: AlgoConfig,
                 policy_version: int = 0, reference: Any | None = None):
        if algo_cfg.kl_coef != 0 and reference is None:
            raise ValueError("algo.kl_coef != 0 needs a reference policy")
        if algo_cfg.entropy_coef != 0 and not hasattr(policy, "logits"):
            raise ValueError("algo.entropy_coef != 0 needs a policy with logits() for the "
                             f"exact entropy; {type(policy).__name__} has none")
        self.policy = policy
        self.optimizer = optimizer
        self.cfg = algo_cfg
        self.policy_version = policy_version
        self.reference = reference
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.device = self.params[0].device

    # -- forward passes ----------------------------------------------------------------
    def _forward(self, part: Batch, policy: Any, entropy_grad: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> log-probs [R, K] of the taken tokens, and the exact entropy [R, K] if the
        policy exposes logits (with grad only when it is a loss term)."""
        tokens = part.tokens.to(self.device)
        if not hasattr(policy, "logits"):
            return policy.log_probs(part.obs(), tokens, part.temperature).float(), None
        t = logprob_temperature(part.temperature)  # T = 0 is greedy: log-probs at 1
        logp_all = torch.log_softmax(policy.logits(part.obs()).float() / t, dim=-1)
        logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        src = logp_all if entropy_grad else logp_all.detach()
        return logp, -(src.exp() * src).sum(-1)

    @torch.no_grad()
    def _no_grad_log_probs(self, part: Batch, policy: Any) -> torch.Tensor:
        return self._forward(part, policy, entropy_grad=False)[0]

    def _set_gradient_sync(self, enabled: bool) -> None:
        # FSDP2: reduce-scatter only after the last micro-batch's backward
        if hasattr(self.policy, "set_requires_gradient_sync"):
            self.policy.set_requires_gradient_sync(enabled)

    # -- the update --------------------------------------------------------------------
    def update(self, batch: Batch, total_trajectories: int | None = None,
               replay: Batch | None = None, total_replay: int | None = None
               ) -> dict[str, Any]:
        """One update from ``batch`` (this rank's trajectories). ``total_trajectories``: the
        count over all ranks (default: this batch's), which every token weight divides by.
        ``replay``: this rank's replayed successes (``total_replay`` over all ranks; with
        several ranks every rank must pass the same total, its own share possibly None).
        Returns stats reduced over ranks; ``policy_version`` is the new version."""
        cfg = self.cfg
        total = total_trajectories or batch.num_trajectories
        steps = max(1, cfg.mini_batches)
        count = step_micro_batches(total, _world_size(), cfg.micro_batch_size, steps)
        parts = [(p, True) if p is not None else (batch.select([0]), False)
                 for p in micro_batches(batch, count)]
        weights = [token_weights(p.valid_mask, p.traj_index, total).to(self.device)
                   * float(real) for p, real in parts]
        replays = self._replay_parts(batch, total, replay, total_replay, steps)
        self.policy.eval()
        size = count // steps
        t0 = time.perf_counter()
        # the first window's proximal log-probs come from its own first gradient pass
        proximal = [None if i < size else self._no_grad_log_probs(p, self.policy)
                    for i, (p, _) in enumerate(parts)]
        ref = ([self._no_grad_log_probs(p, self.reference) for p, _ in parts]
               if cfg.kl_coef != 0 else None)
        t1 = time.perf_counter()
        grad_cosine, step_times = None, []
        for epoch in range(cfg.epochs_per_batch):
            sums: dict[str, torch.Tensor] = {}
            for m in range(steps):
                window = slice(m * size, (m + 1) * size)
                t_step = time.perf_counter()
                part_sums, grad_norm, cosine, logps = self._step(
                    parts[window], weights[window], proximal[window],
                    ref[window] if ref else None, scale=float(steps), replay=replays[m])
                step_times.append(time.perf_counter() - t_step)
                if epoch == m == 0:
                    proximal[window], grad_cosine = logps, cosine
                for k, v in part_sums.items():
                    sums[k] = sums.get(k, 0.0) + v
        t2 = time.perf_counter()
        stats = self._reduce(sums, batch)
        stats.update(grad_norm=grad_norm, micro_batches=count, epochs=cfg.epochs_per_batch,
                     mini_batches=steps, grad_cosine=grad_cosine,
                     proximal_s=t1 - t0, steps_s=t2 - t1, mini_batch_s=step_times)
        self.policy_version += 1
        stats["policy_version"] = self.policy_version
        return stats

    def _replay_parts(self, batch: Batch, total: int, replay: Batch | None,
                      total_replay: int | None, steps: int) -> list[tuple | None]:
        """Per optimiser step: (replayed part, loss weights, stat weights), or None for
        every step when nothing is replayed. A rank whose share of a step is empty runs a
        zero-weight pass (FSDP's collectives need the same passes on every rank)."""
        total_replay = total_replay or (replay.num_trajectories if replay is not None else 0)
        if self.cfg.replay_trajectories <= 0 or total_replay == 0:
            return [None] * steps
        pieces = micro_batches(replay, steps) if replay is not None else [None] * steps
        out = []
        for piece in pieces:
            real = piece is not None
            part = piece if real else batch.select([0])
            w = token_weights(part.valid_mask, part.traj_index, total).to(self.device)
            stat_w = token_weights(part.valid_mask, part.traj_index, total_replay)
            out.append((part, w * (self.cfg.replay_coef * float(real)),
                        stat_w.to(self.device) * float(real)))
        return out

    def _step(self, parts: list[tuple[Batch, bool]], weights: list[torch.Tensor],
              proximal: list[torch.Tensor | None], ref: list[torch.Tensor] | None,
              scale: float = 1.0, replay: tuple | None = None
              ) -> tuple[dict[str, torch.Tensor], float, float | None, list[torch.Tensor]]:
        """Forward/backward every micro-batch (loss times ``scale``: the batch's share of
        this mini-batch; a micro-batch without proximal log-probs is scored against its own,
        detached), then the step's replayed successes if any (``replay``: part, loss
        weights, stat weights), clip, one optimiser step -> (stat sums, grad norm before clipping,
        gradient cosine between the two halves of the micro-batches, each micro-batch's
        detached log-probs before the step)."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        logps: list[torch.Tensor] = []
        half = len(parts) // 2 if len(parts) > 1 and _world_size() == 1 else 0
        first: list[torch.Tensor | None] | None = None
        bad_loss = torch.zeros((), device=self.device)   # micro-batches with a non-finite loss
        for i, ((part, _), w) in enumerate(zip(parts, weights)):
            self._set_gradient_sync(i == len(parts) - 1 and replay is None)
            logp, entropy = self._forward(part, self.policy, cfg.entropy_coef != 0)
            logps.append(logp.detach())
            loss, stats = policy_loss(
                logp, proximal[i] if proximal[i] is not None else logps[-1],
                part.behaviour_log_probs.to(self.device), part.advantages.to(self.device), w,
                clip_low=cfg.clip_low, clip_high=cfg.clip_high, is_cap=cfg.is_cap,
                ref_log_probs=ref[i] if ref else None, kl_coef=cfg.kl_coef,
                entropy=entropy, entropy_coef=cfg.entropy_coef)
            (loss * scale).backward()
            bad_loss += (~torch.isfinite(loss.detach())).float()
            ent = entropy if entropy is not None else -part.behaviour_log_probs.to(self.device)
            stats["entropy"] = (w * ent.detach()).sum()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            if half and i == half - 1:
                first = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        cosine = half_gradient_cosine(self.params, first) if first is not None else None
        if replay is not None:
            bad_loss += self._replay_pass(*replay, scale=scale, sums=sums)
        norm = float(_full(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)))
        if _world_size() > 1:
            dist.all_reduce(bad_loss)   # every rank makes the same decision
        if math.isfinite(norm) and not bad_loss.item():
            self.optimizer.step()
        else:
            # a NaN/inf loss or gradient would poison the weights every actor then fetches
            log.warning("loss (%d micro-batches not finite) or grad norm %s is not finite; "
                        "skipping the optimiser step", int(bad_loss.item()), norm)
        return sums, norm, cosine, logps

    def _replay_pass(self, part: Batch, weights: torch.Tensor, stat_weights: torch.Tensor,
                     scale: float, sums: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward/backward of one step's replayed successes (the step's last pass, so it
        syncs the gradients) -> 1.0 if its loss is not finite, else 0.0."""
        self._set_gradient_sync(True)
        logp, _ = self._forward(part, self.policy, entropy_grad=False)
        loss, _ = imitation_loss(logp, weights)
        (loss * scale).backward()
        _, nll = imitation_loss(logp.detach(), stat_weights)
        sums["replay_nll"] = sums.get("replay_nll", 0.0) + nll.float()
        return (~torch.isfinite(loss.detach())).float()

    def _reduce(self, sums: dict[str, torch.Tensor], batch: Batch) -> dict[str, float]:
        """Stat sums of this rank -> batch statistics over all ranks."""
        staleness = torch.from_numpy(self.policy_version - batch.policy_versions).double()
        counts = {"staleness_sum": staleness.sum(), "trajectories": batch.num_trajectories,
                  "tokens": batch.valid_mask.sum(), "decisions": batch.num_rows,
                  "successes": float(batch.rewards.sum())}
        merged = {**{k: v.double().cpu() for k, v in sums.items()},
                  **{k: torch.as_tensor(v, dtype=torch.double) for k, v in counts.items()}}
        keys = sorted(merged)
        vec = torch.stack([merged[k] for k in keys])
        top = staleness.max().reshape(1)
        if _world_size() > 1:
            dist.all_reduce(vec, op=dist.ReduceOp.SUM)
            dist.all_reduce(top, op=dist.ReduceOp.MAX)
        out = {k: int(v) if k in counts else float(v) for k, v in zip(keys, vec)}
        n = out["trajectories"]
        out["staleness_mean"] = out.pop("staleness_sum") / n
        out["staleness_max"] = int(top[0])
        out["success_rate"] = out.pop("successes") / n
        return out


def half_gradient_cosine(params: list[torch.Tensor], first: list[torch.Tensor | None]
                         ) -> float | None:
    """Cosine between the gradient of the first half of a step's micro-batches (``first``,
    a copy taken after their backward) and that of the second half (the accumulated
    gradient minus ``first``): near 1 when the batch's trajectories agree on a direction,
    near 0 when the gradient is mostly noise (the gradient signal-to-noise of the step)."""
    dot = norm_a = norm_b = 0.0
    for p, a in zip(params, first):
        if p.grad is None:
            continue
        a = torch.zeros_like(p.grad) if a is None else a
        b = p.grad.detach() - a
        dot += float((a * b).sum())
        norm_a += float((a * a).sum())
        norm_b += float((b * b).sum())
    if norm_a == 0 or norm_b == 0:
        return None
    return dot / math.sqrt(norm_a * norm_b)


def make_optimizer(params: Any, algo_cfg: AlgoConfig) -> torch.optim.Optimizer:
    """AdamW with the config's lr and weight decay (works on FSDP2 DTensor parameters)."""
    return torch.optim.AdamW(params, lr=algo_cfg.lr, weight_decay=algo_cfg.weight_decay)
