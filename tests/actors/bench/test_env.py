"""`pushcut bench env` (actors/bench/env.py): figures from real spawned processes."""
import numpy as np
import pytest

from actors.bench.env import MODES, _print, limits, run, step_loop
from actors.envs.tabletop import TabletopEnv
from common.config import load_config
from common.config.envs import TabletopEnvConfig


def test_step_loop_counts_steps_and_crosses_episodes():
    env = TabletopEnv(TabletopEnvConfig(tasks=["spatial/0", "goal/1"], max_steps=5,
                                        image_size=16))
    steps, wall, cpu = step_loop(env, ["spatial/0", "goal/1"], 0.2, render_every=2, seed=0)
    assert steps >= 50 and steps % 50 == 0 and wall >= 0.2 and cpu > 0
    assert env.task.task_id in ("spatial/0", "goal/1") and env.steps <= 5
    env.close()


@pytest.mark.slow
def test_bench_env_reports_every_mode_for_each_process_count():
    cfg = load_config(["bench.seconds=2", "bench.processes=[1]", "env.tasks=[goal/0]"])
    fig = run(cfg)
    assert [(r["processes"], r["render"]) for r in fig["runs"]] == [(1, m) for m in MODES]
    assert all(r["per_process"] > 0 and r["per_cpu_s"] > 0 for r in fig["runs"])
    rate = {r["render"]: r["per_cpu_s"] for r in fig["runs"]}
    assert rate["none"] > rate["every step"]          # rendering costs something
    assert fig["limits_per_cpu_s"]["physics"] > 0 and fig["limits_per_cpu_s"]["render"] > 0
    assert np.isfinite(fig["seconds_each"])


def test_another_simulator_has_no_bare_sim_limits(capsys):
    cfg = load_config(["env=probe", "env.image_size=8"])
    assert limits(cfg.env, 0.1) is None
    _print({"env": "probe", "limits_per_cpu_s": None, "image_size": 8, "cameras": 1,
            "chunk_size": 8, "runs": [{"processes": 1, "render": m, "per_process": 10.0,
                                       "total": 10.0, "per_cpu_s": 12.0} for m in MODES]})
    assert "probe env steps/s" in capsys.readouterr().out
