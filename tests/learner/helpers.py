"""Shared by the learner tests: a micro tiny VLA and groups whose tokens and behaviour
log-probs are really sampled from it (so the importance weights are meaningful)."""
from __future__ import annotations

import uuid

import numpy as np
import torch

from common.config.schema import ModelConfig
from common.models import build_policy
from common.models.policy import ObsBatch
from common.synthetic import make_trajectory
from common.wire.trajectory import Trajectory

TEMPERATURE = 1.6


def micro_policy(seed: int = 0):
    """256 bins, as the synthetic trajectories declare (common/synthetic.py)."""
    torch.manual_seed(seed)
    return build_policy(ModelConfig(preset="micro", num_bins=256))


def sampled_group(policy, rng: np.random.Generator, successes: list[bool], *,
                  policy_version: int = 0, length: int = 12, task_id: str = "spatial/0",
                  init_state_id: int = 0, group_id: str | None = None) -> list[Trajectory]:
    """A complete group whose tokens/log-probs come from ``policy.sample`` at TEMPERATURE
    (members differ in length, so masks differ)."""
    group_id = group_id or uuid.uuid4().hex
    out = []
    for i, success in enumerate(successes):
        t = make_trajectory(rng, group_id=group_id, group_size=len(successes),
                            length=length - (i % 3), policy_version=policy_version,
                            success=success, task_id=task_id, init_state_id=init_state_id)
        t.temperature = TEMPERATURE
        obs = ObsBatch(t.images, t.proprio, [t.instruction] * t.num_decisions)
        policy.eval()
        tokens, logp = policy.sample(obs, TEMPERATURE, torch.Generator().manual_seed(
            int(rng.integers(1 << 31))))
        t.action_tokens = tokens.numpy().astype(np.int16)
        t.behaviour_log_probs = logp.numpy().astype(np.float32)
        out.append(t)
    return out
