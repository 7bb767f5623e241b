"""The learning path guarded in seconds: ``pushcut run`` on the probe env (a task with a
known answer, actors/envs/probe.py) must raise the actors' unfiltered success from about
30 % (an untrained policy) to at least 90 % within 50 updates, for each of two seeds,
through the real actor -> ZeroMQ -> LMDB store -> filter -> GRPO -> weight broadcast path."""
from __future__ import annotations

import pytest

from tests.deploy.test_run import pushcut_run, tiny_run_args, updates

VERSIONS = 50


def rollout_success(rows: list[dict]) -> list[float]:
    return [r["rollout_success"] for r in rows if r.get("rollout_success") is not None]


@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_solves_the_probe_task(tmp_path, seed):
    from common.config import load_config
    from common.models import build_policy
    import torch

    torch.manual_seed(seed)
    policy_dir = tmp_path / "policy"
    cfg = load_config(["env.name=probe", "model.preset=micro", "model.num_bins=8"])
    build_policy(cfg.model).save_pretrained(str(policy_dir))
    run_dir = tmp_path / "run"
    pushcut_run(tiny_run_args(run_dir, **{
        "env.name": "probe", "env.tasks": "[probe/right]", "env.max_steps": 1,
        "model.num_bins": 8, "model.checkpoint": policy_dir, "seed": seed,
        "num_actors": 1, "actor.num_envs": 8, "algo.group_size": 8,
        "algo.groups_per_batch": 4, "algo.micro_batch_size": 32, "algo.temperature": 1.0,
        # success_hi 1: once the task is solved every group succeeds, and the learner must
        # still get batches to reach its version budget (their advantages are all zero)
        "algo.lr": 3e-3, "algo.success_lo": 0.1, "algo.success_hi": 1.0,
        "learner.max_versions": VERSIONS, "learner.checkpoint_every": 1000,
        "learner.torch_threads": 1}), timeout_s=300)
    rows = updates(run_dir)
    assert [r["policy_version"] for r in rows] == list(range(1, VERSIONS + 1))
    success = rollout_success(rows)
    start, end = success[:3], success[-5:]
    assert sum(start) / len(start) < 0.5, success
    assert sum(end) / len(end) >= 0.9, success
