"""What every action-token policy shares: the Policy protocol's sampling, log-probs and
decoding, on top of a model's own ``prepare_inputs(obs) -> forward() kwargs``, its
``forward(**kwargs) -> logits [B, K, num_bins]``, its ``action_tokenizer`` and its config's
``chunk_size`` / ``action_dim``.

Every use of the weights goes through ``self(...)`` (the module's ``__call__``), so that an
FSDP2-sharded model unshards its parameters in its forward hooks.
"""
from __future__ import annotations

import numpy as np
import torch

from common.models.policy import ObsBatch, logprob_temperature


def _check_temperature(temperature: float) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def gumbel_sample(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """log-probs float [..., N] -> int64 [...]: an exact categorical sample (Gumbel-max), far
    cheaper than multinomial over many small distributions. ``generator`` may live on the CPU
    or on ``logp``'s device."""
    device = generator.device if generator is not None else logp.device
    u = torch.rand(logp.shape, generator=generator, device=device).to(logp.device)
    gumbel = -torch.log(-torch.log(u.clamp_(min=1e-20, max=1.0 - 1e-7)))
    return (logp + gumbel).argmax(dim=-1)


class TokenPolicyMixin:
    """Mixed into a ``PreTrainedModel`` subclass to make it a :class:`common.models.policy.Policy`."""

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    def logits(self, obs: ObsBatch) -> torch.Tensor:
        """ObsBatch -> float32 logits [B, K, num_bins] (with grad if enabled)."""
        return self(**self.prepare_inputs(obs)).float()

    def sample(self, obs: ObsBatch, temperature: float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (tokens int64 [B, K], log_probs float32 [B, K]) of softmax(logits / T), on the
        CPU, no grad. T == 0: greedy, log-probs under T = 1."""
        _check_temperature(temperature)
        with torch.no_grad():
            logits = self.logits(obs)
            logp = torch.log_softmax(logits / logprob_temperature(temperature), dim=-1)
            tokens = logits.argmax(dim=-1) if temperature == 0 else gumbel_sample(logp, generator)
            chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return tokens.cpu(), chosen.cpu()

    def log_probs(self, obs: ObsBatch, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        """tokens int [B, K] -> float32 [B, K] log-probs of softmax(logits / T), with grad
        (T == 0 scores under T = 1, as :meth:`sample` does)."""
        _check_temperature(temperature)
        logits = self.logits(obs)
        tokens = torch.as_tensor(tokens, device=logits.device).long()
        if tokens.shape != logits.shape[:2]:
            raise ValueError(f"tokens: shape {tuple(tokens.shape)}, expected "
                             f"{tuple(logits.shape[:2])} = [B, C*D]")
        logp = torch.log_softmax(logits / logprob_temperature(temperature), dim=-1)
        return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def tokens_to_actions(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """tokens int [B, K] -> env actions float32 [B, C, D]."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, K], got shape {tokens.shape}")
        return self.action_tokenizer.decode_chunk(tokens, self.chunk_size)
