"""`pushcut bench pipeline` (deploy/bench_pipeline.py): the real store, learner and actor
processes in async and sync mode, against each stage alone; the figures are present and
consistent (not their speed)."""
from __future__ import annotations

import json

import pytest

from common.config import load_config
from deploy.bench import BENCHMARKS
from deploy.bench_pipeline import learner_figures, run, versions_ratio_range

MODE_KEYS = ("versions", "versions_per_s", "trained_env_steps_per_s",
             "generated_env_steps_per_s", "learner_busy", "actor_busy", "staleness_mean",
             "staleness_max", "consumed_fraction", "window_s")


def test_learner_figures_count_only_the_window(tmp_path):
    rows = [{"event": "start", "time": 0.0},
            {"event": "update", "time": 10.0, "batch_env_steps": 99, "group_ids": ["a"],
             "update_s": 5.0, "staleness_mean": 9.0, "staleness_max": 9},   # opens the window
            {"event": "update", "time": 11.0, "batch_env_steps": 40, "group_ids": ["b"],
             "update_s": 0.5, "staleness_mean": 1.0, "staleness_max": 2},
            {"event": "update", "time": 12.0, "batch_env_steps": 40, "group_ids": [],
             "update_s": 0.5, "staleness_mean": 0.0, "staleness_max": 0},   # quarantined
            {"event": "update", "time": 15.0, "batch_env_steps": 40, "group_ids": ["c"],
             "update_s": 0.5, "staleness_mean": 1.0, "staleness_max": 1}]   # after it
    (tmp_path / "learner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = learner_figures(tmp_path, 10.0, 14.0)
    assert f["versions"] == 2 and f["versions_per_s"] == 0.5
    assert f["trained_env_steps_per_s"] == 10.0 and f["learner_busy"] == 0.25
    assert f["staleness_mean"] == 0.5 and f["staleness_max"] == 2
    assert learner_figures(tmp_path, 20.0, 21.0)["staleness_mean"] is None


@pytest.mark.slow
def test_bench_pipeline_runs_both_modes_against_the_stages():
    assert "pipeline" in BENCHMARKS
    cfg = load_config([
        "bench.seconds=10", "env.name=probe", "model.preset=micro", "model.num_bins=8",
        "num_actors=1", "actor.num_envs=4", "algo.group_size=4", "algo.groups_per_batch=1",
        "algo.micro_batch_size=4", "algo.success_lo=0.0", "algo.success_hi=1.0",
        "learner.torch_threads=1", "learner.checkpoint_every=1000"])
    f = run(cfg)
    for mode in ("async", "sync"):
        m = f[mode]
        assert all(k in m for k in MODE_KEYS), sorted(m)
        assert m["window_s"] >= 4.0 and m["versions"] > 0 and m["records"] > 0
        assert m["versions_per_s"] == pytest.approx(m["versions"] / m["window_s"])
        assert 0 < m["trained_env_steps_per_s"] <= m["generated_env_steps_per_s"] * 2
        assert 0 < m["learner_busy"] <= 1.05 and 0 <= m["actor_busy"] <= 1
        assert 0 < m["consumed_fraction"] <= 10
        assert 0 <= m["staleness_mean"] <= m["staleness_max"] <= cfg.algo.max_staleness
        assert set(m["exits"].values()) == {0}
    assert f["sync"]["staleness_max"] == 0        # sync trains on its own version only
    st = f["stages"]
    assert set(st["env_steps_per_s"]) == {"env", "inference", "learner"}
    assert all(r > 0 for r in st["env_steps_per_s"].values())
    assert st["slowest_env_steps_per_s"] == min(st["env_steps_per_s"].values())
    assert st["per_actor"]["steps_per_decision"] == 1.0       # probe: one step per episode
    for key in ("versions_per_s", "trained_env_steps_per_s"):
        assert f["async_over_sync"][key] == pytest.approx(f["async"][key] / f["sync"][key])
        assert 0 < f["async_over_sync"][key] <= 100
    json.dumps(f)                                  # bench.out writes it as JSON


def test_the_versions_ratio_is_given_with_each_count_one_update_off():
    window = {"window_s": 60.0}
    low, high = versions_ratio_range({**window, "versions": 20}, {**window, "versions": 10})
    assert low == pytest.approx(19 / 11) and high == pytest.approx(21 / 9)
    # 2 against 1 in a minute: "2.00" could be anything from 0.5 up
    assert versions_ratio_range({**window, "versions": 2}, {**window, "versions": 1}) == [
        pytest.approx(0.5), None]
