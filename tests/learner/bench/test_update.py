"""`pushcut bench learner` (learner/bench/update.py): the learner stage of `pushcut bench
pipeline` is one update as configured on a batch of groups_per_batch groups, with the bare
training step on one micro-batch beside it."""
from common.config import load_config
from learner.bench.update import stage_rate


def test_stage_rate_counts_env_steps_of_one_configured_update():
    cfg = load_config(["model.preset=micro", "algo.micro_batch_size=4", "algo.group_size=2",
                       "algo.groups_per_batch=3", "algo.mini_batches=2",
                       "learner.torch_threads=1"])
    f = stage_rate(cfg, 0.2, length=3)
    assert f["trajectories"] == 6 and f["env_steps"] == 18
    assert f["step_s"] > 0 and f["env_steps_per_s"] == 18 / f["step_s"]
    assert f["bare_env_steps_per_s"] > 0
