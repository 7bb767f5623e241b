"""The tabletop scripted expert behind the :class:`~common.models.policy.Policy` interface, so that an
actor can be driven with a policy whose successes are known (tests, smoke runs).

In: the in-process ``TabletopEnv`` s the rollout steps (the expert reads privileged state),
told which of them each batch row is through :meth:`select_envs` (VectorRollout calls it before
every ``sample``). Out: tokens int64 [B, C·D], the bins of the expert's actions, and their
log-probs under a peaked distribution (``peak`` logit on the expert's bin, 0 elsewhere,
divided by the temperature) — the tokens themselves are the argmax, never sampled, so the
expert is deterministic at any temperature.

A chunk is planned open loop like any chunked policy's: the expert runs C steps ahead on the
env itself, executing the de-tokenised actions, then the simulator state is restored exactly
(``mj_getState``/``mj_setState``). The rollout then replays those same actions, so what the
env executes is what the expert planned.
"""
from __future__ import annotations

import math

import mujoco
import numpy as np
import torch

from actors.envs.tabletop import Expert, TabletopEnv
from common.models.policy import ObsBatch, logprob_temperature
from common.models.action_tokenizer import ActionTokenizer

_STATE = mujoco.mjtState.mjSTATE_INTEGRATION


def peaked_log_prob(peak: float, num_bins: int, temperature: float) -> float:
    """log softmax(logits / T) at the peak bin, logits = peak there and 0 elsewhere
    (T == 0: under T = 1, as the Policy protocol says for greedy)."""
    t = logprob_temperature(temperature)
    return peak / t - math.log(math.exp(peak / t) + num_bins - 1)


class ExpertPolicy:
    """Policy-shaped adapter over one :class:`Expert` per env."""

    def __init__(self, envs: list[TabletopEnv], chunk_size: int = 8, num_bins: int = 256,
                 peak: float = 10.0):
        self.envs = [getattr(e, "env", e) for e in envs]   # workers or bare envs
        if not all(isinstance(e, TabletopEnv) for e in self.envs):
            raise TypeError("ExpertPolicy needs in-process TabletopEnvs (it reads their "
                            "simulator state)")
        self.experts = [Expert(e) for e in self.envs]
        self.chunk_size = chunk_size
        self.action_dim = 7
        self.num_bins = num_bins
        self.peak = peak
        self.tokenizer = ActionTokenizer.identity(self.action_dim, num_bins)
        self._rows: list[int] | None = None

    def select_envs(self, indices: list[int]) -> None:
        """Row b of the next ``sample`` batch is ``envs[indices[b]]``."""
        self._rows = list(indices)

    def sample(self, obs: ObsBatch, temperature: float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._rows if self._rows is not None else list(range(len(obs)))
        if len(rows) != len(obs):
            raise ValueError(f"ExpertPolicy: batch of {len(obs)} but {len(rows)} envs selected")
        self._rows = None
        tokens = np.stack([self._plan(i) for i in rows])
        logp = np.full(tokens.shape, peaked_log_prob(self.peak, self.num_bins, temperature),
                       np.float32)
        return torch.from_numpy(tokens), torch.from_numpy(logp)

    def log_probs(self, obs: ObsBatch, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        raise NotImplementedError("the scripted expert reads simulator state, so it cannot "
                                  "score tokens from observations alone")

    def tokens_to_actions(self, tokens: np.ndarray) -> np.ndarray:
        return self.tokenizer.decode_chunk(np.asarray(tokens), self.chunk_size)

    def load_state_dict(self, state_dict: dict) -> None:
        """No weights; accepting any keeps the actor's weight-swap path usable in tests."""

    def _plan(self, i: int) -> np.ndarray:
        """The next C expert actions for env i, as int64 tokens [C*D]; env state unchanged."""
        env, expert = self.envs[i], self.experts[i]
        m, d = env.sim.model, env.sim.data
        saved = np.empty(mujoco.mj_stateSize(m, _STATE))
        mujoco.mj_getState(m, d, saved, _STATE)
        counters = (env.steps, env.success, env.done)
        bins = []
        for _ in range(self.chunk_size):
            if env.done:     # after the end: padding, never executed
                bins.append(bins[-1])
                continue
            b = self.tokenizer.encode(expert.act())
            env.step(self.tokenizer.decode(b), render=False)
            bins.append(b)
        mujoco.mj_setState(m, d, saved, _STATE)
        mujoco.mj_forward(m, d)   # derived quantities (body poses) back in step with qpos
        env.steps, env.success, env.done = counters
        return np.concatenate(bins).astype(np.int64)
