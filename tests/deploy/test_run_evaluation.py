"""``pushcut run`` measures the start policy's held-out success (greedy and sampled) before
RL and evaluates the learner's snapshots while RL runs, and its status shows both; on the
probe env, with real processes."""
from __future__ import annotations

import json
import signal

from common.metrics import read_jsonl
from tests.deploy.test_run import saved_micro_policy, start_run, tiny_run_args
from tests.waiting import wait_until


def test_start_policy_measured_and_snapshots_evaluated_while_rl_runs(tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_run_args(run_dir, **{
        "env.name": "probe", "env.tasks": "[probe/right,probe/open]", "env.max_steps": 1,
        "model.checkpoint": saved_micro_policy(tmp_path), "num_actors": 1, "algo.temperature": 1.0,
        "learner.max_versions": "null", "learner.snapshot_every": 2, "run.eval_episodes": 4,
        "eval.num_envs": 2})
    proc = start_run(args, tmp_path / "run.out")
    try:
        def latest_held_out():
            rows = read_jsonl(run_dir / "run.jsonl") if (run_dir / "run.jsonl").exists() else []
            return rows and rows[-1]["held_out"].get("latest")
        wait_until(latest_held_out, 300, "an evaluated snapshot in the status", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=240) == 0, (tmp_path / "run.out").read_text()[-4000:]
    finally:
        proc.kill()
    text = (tmp_path / "run.out").read_text()
    assert "start policy: held-out" in text and "% greedy" in text
    start = json.loads((run_dir / "eval_start" / "eval.json").read_text())["temperatures"]
    assert set(start) >= {"greedy", "T=1"}
    assert start["greedy"]["episodes"] == 8                    # 4 per task, two tasks
    evaluated = sorted((run_dir / "evals").glob("v*/eval.json"))
    assert evaluated
    greedy = json.loads(evaluated[-1].read_text())["temperatures"]["greedy"]
    # the same held-out states as the start policy's evaluation: paired comparisons hold
    assert {t: v["init_state_ids"] for t, v in greedy["per_task"].items()} == \
        {t: v["init_state_ids"] for t, v in start["greedy"]["per_task"].items()}
    last = read_jsonl(run_dir / "run.jsonl")[-1]
    assert "start" in last["held_out"] and last["held_out"]["latest"][0].startswith("v")
