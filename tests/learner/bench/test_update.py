"""`pushcut bench learner` (learner/bench/update.py): the bare training step that is also the
learner stage of `pushcut bench pipeline`."""
from common.config import load_config
from learner.bench.update import stage_rate


def test_stage_rate_counts_env_steps_of_one_micro_batch():
    cfg = load_config(["model.preset=micro", "algo.micro_batch_size=4", "algo.group_size=2",
                       "learner.torch_threads=1"])
    f = stage_rate(cfg, 0.2, length=3)
    assert f["trajectories"] == 4 and f["env_steps"] == 12
    assert f["step_s"] > 0 and f["env_steps_per_s"] == 12 / f["step_s"]
