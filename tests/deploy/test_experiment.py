"""``pushcut experiment``: the stage plan and its checks, and the ``tiny`` experiment end to
end as real processes (demos -> SFT -> eval -> RL async -> eval -> RL sync -> eval), then
resumed after one output is removed, then reported."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import load_config
from common.metrics import read_jsonl
from deploy.experiment import check_config, main, select_experiment, stages
from learner.snapshots import list_snapshots, read_snapshot_info
from tests.waiting import server_addresses

ROOT = Path(__file__).resolve().parents[2]
ALL_STAGES = ["demos", "sft", "eval_sft", "rl_async", "eval_async_v000002", "rl_sync",
              "eval_sync_v000002"]


def tiny_args(run_dir: Path) -> list[str]:
    return [f"run_dir={run_dir}", *(f"{k}={v}" for k, v in server_addresses().items())]


def pushcut_experiment(args: list[str], timeout_s: float) -> str:
    env = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "experiment", "tiny", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    return out


def test_experiment_configs_compose_and_derive_their_paths(tmp_path):
    for name in ("onedemo", "fulldemo", "tiny", "unseen"):
        cfg = load_config([f"experiment={name}", f"run_dir={tmp_path}"])
        check_config(cfg)
        assert cfg.demos.out == f"{tmp_path}/demos"
    one, full = load_config(["experiment=onedemo"]), load_config(["experiment=fulldemo"])
    assert (one.demos.per_task, one.sft.demos_per_task) == (1, 1)
    assert (full.demos.per_task, full.sft.demos_per_task) == (50, 50)
    assert one.learner.max_wall_s == 3600 and one.learner.snapshot_every > 0


def test_the_unseen_experiment_is_onedemo_with_one_task_per_family_never_drawn(tmp_path):
    cfg = load_config(["experiment=unseen", f"run_dir={tmp_path}"])
    one = load_config(["experiment=onedemo"])
    assert (cfg.demos.per_task, cfg.algo, cfg.learner) == (1, one.algo, one.learner)
    assert dict(cfg.actor.task_weights) == {f"{f}/3": 0.0
                                            for f in ("spatial", "object", "goal", "long")}
    rl_async = next(s for s in stages(cfg, tmp_path) if s.name == "rl_async")
    weights = next(a for a in rl_async.args if a.startswith("++actor.task_weights="))
    assert load_config([weights]).actor.task_weights == cfg.actor.task_weights
    assert cfg.env.tasks == [] and cfg.eval.episodes_per_task == 50   # evaluated on all 16


def test_stage_plan_before_anything_ran(tmp_path):
    cfg = load_config(["experiment=tiny", f"run_dir={tmp_path}"])
    plan = list(stages(cfg, tmp_path))
    # no snapshots yet: the evaluations of the RL stages are planned after they run
    assert [s.name for s in plan] == ["demos", "sft", "eval_sft", "rl_async", "rl_sync"]
    assert not any(s.done() for s in plan)
    rl_sync = plan[-1]
    assert rl_sync.role == "run" and "++mode=sync" in rl_sync.args
    assert f"++run_dir='{tmp_path / 'rl_sync'}'" in rl_sync.args
    assert f"++model.checkpoint='{tmp_path / 'sft' / 'final'}'" in rl_sync.args
    assert plan[2].args[0] == str(tmp_path / "sft" / "final")      # eval's positional


def test_bad_experiments_are_rejected_with_the_reason(tmp_path, capsys):
    with pytest.raises(ValueError, match="budget"):
        check_config(load_config(["experiment=tiny", "learner.max_versions=null",
                                  "learner.max_wall_s=null"]))
    with pytest.raises(ValueError, match="snapshot_every=0"):
        check_config(load_config(["experiment=tiny", "learner.snapshot_every=0"]))
    with pytest.raises(ValueError, match="usage"):
        select_experiment(None, [], ["run_dir=x"])
    assert select_experiment("tiny", ["tiny"], ["a=1"]) == ("tiny", ["experiment=tiny", "a=1"])
    cfg = load_config([])
    assert main(cfg, ["no_such_experiment"], overrides=[]) == 2
    assert "no_such_experiment" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_experiment_end_to_end_then_resume_then_report(tmp_path):
    run_dir = tmp_path / "exp"
    out = pushcut_experiment(tiny_args(run_dir), timeout_s=900)
    record = json.loads((run_dir / "experiment.json").read_text())
    assert list(record["stages"]) == ALL_STAGES
    assert all(s["status"] == "done" and s["wall_s"] > 0 for s in record["stages"].values())
    assert (run_dir / "demos" / "index.jsonl").exists()
    assert not (run_dir / "demos.partial").exists()
    assert (run_dir / "eval_sft" / "eval.json").exists()
    for mode in ("async", "sync"):
        rl = run_dir / f"rl_{mode}"
        snaps = list_snapshots(rl / "snapshots")
        assert [s.name for s in snaps] == ["v000002"]
        info = read_snapshot_info(snaps[-1])
        assert info["final"] and info["stop_reason"] == "max_versions"
        assert info["mode"] == mode and info["wall_s"] > 0 and info["env_steps_trained"] > 0
        assert (snaps[-1] / "config.json").exists()
        results = json.loads((rl / "evals" / "v000002" / "eval.json").read_text())
        assert results["checkpoint"] == str(snaps[-1])
        assert results["temperatures"]["greedy"]["episodes"] == 2      # 1 per task, 2 tasks
        assert results["videos"]                                        # the final policy's
    updates = [r for r in read_jsonl(run_dir / "rl_sync" / "learner.jsonl")
               if r["event"] == "update"]
    assert [r["policy_version"] for r in updates] == [1, 2]
    assert all(r["staleness_max"] == 0 for r in updates)                # lock-step
    assert re.search(r"^experiment done: ", out, re.M)
    summary = json.loads((run_dir / "results.json").read_text())      # written by the run
    assert set(summary) >= {"sft", "rl_async", "rl_sync", "rl_wall_s", "time_to_target_s"}
    assert summary["rl_async"]["policy_version"] == 2 and (run_dir / "report.png").exists()

    # resume: only the stage whose output is missing runs again
    shutil.rmtree(run_dir / "rl_sync" / "evals" / "v000002")
    out = pushcut_experiment(tiny_args(run_dir), timeout_s=600)
    assert out.count("skipped (output exists)") == len(ALL_STAGES) - 1
    again = json.loads((run_dir / "experiment.json").read_text())["stages"]
    assert again["rl_async"] == record["stages"]["rl_async"]            # not re-run
    assert again["eval_sync_v000002"]["started_at"] > \
        record["stages"]["eval_sync_v000002"]["started_at"]
    assert (run_dir / "rl_sync" / "evals" / "v000002" / "eval.json").exists()

    done = subprocess.run([sys.executable, "-m", "deploy.cli", "report", str(run_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| **average** |" in done.stdout and "| policy versions | 2 | 2 | 1.00 |" in done.stdout
    assert (run_dir / "report.png").stat().st_size > 10_000
