"""`pushcut bench actor` (actors/bench/actor.py): the actor against the slower of bare env
stepping and bare inference, measured in the same run (figures present and consistent, not
their speed)."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from actors.bench.actor import (bare_inference, obs_batch, random_episodes,  # noqa: E402
                                replay_counts, run)
from actors.env_workers import make_workers  # noqa: E402
from common.config import load_config  # noqa: E402
from common.models import build_policy  # noqa: E402


def test_random_episodes_replay_and_feed_bare_inference():
    cfg = load_config(["model.preset=micro", "env.tasks=[goal/0,spatial/1]", "env.max_steps=12"])
    workers = make_workers(cfg.env, 2, seed=0, use_subprocess=False)
    policy = build_policy(cfg.model).eval()
    played = random_episodes(workers, 3, policy.chunk_size, policy.action_dim)
    assert [p.task_id for p in played] == ["goal/0", "spatial/1", "goal/0"]
    assert all(p.actions.shape == (2, 8, 7) and np.abs(p.actions).max() <= 1 for p in played)
    steps, decisions = replay_counts(workers, played)
    assert 3 <= decisions <= 6 and decisions <= steps <= 36
    obs = obs_batch(played, 5)
    assert obs.images.shape[0] == 5 and obs.instructions[3] == played[0].obs[2]
    assert bare_inference(policy, obs, 2, 1.6) > 0


@pytest.mark.slow
def test_bench_actor_reports_the_actor_against_its_limit():
    cfg = load_config(["bench.seconds=2", "env.name=probe", "model.preset=micro",
                       "actor.num_envs=4", "algo.group_size=2"])
    f = run(cfg)
    assert f["env_steps"] > 0 and f["episodes"] == f["env_steps"]      # probe: 1 step each
    assert f["decisions"] == f["env_steps"] and f["inference_batch"] == 4
    assert not f["double_buffer"] and f["flushed"] and f["acked"] >= f["episodes"]
    assert f["limit_steps_per_s"] == min(f["bare_steps_per_s"], f["inference_steps_per_s"])
    assert f["limit"] in ("env stepping", "inference")
    assert f["ratio"] == pytest.approx(f["actor_steps_per_s"] / f["limit_steps_per_s"])
    # the limit is at most bare env stepping, so the actor is closer to it
    assert 0 < f["env_ratio"] <= f["ratio"] * (1 + 1e-9) and f["ratio"] <= 10
