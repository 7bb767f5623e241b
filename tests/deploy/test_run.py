"""``pushcut run`` end to end as separate OS processes (store, learner, actors; demos and
SFT first when there is no policy), in async and in sync mode."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from rich.console import Console

from common.config import load_config
from common.metrics import read_jsonl
from common.transport.heartbeats import HealthMonitor
from common.wire.heartbeat import encode_heartbeat
from deploy.roles import config_overrides
from deploy.run_status import LearnerLog, StatusBoard, one_line, render
from learner.store import TrajectoryStore
from tests.waiting import server_addresses, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_config_overrides_reproduce_the_config():
    cfg = load_config(["env=libero", "mode=sync", "++model.kwargs={image_size:16}",
                       'run_dir="/tmp/a b\'c"', "env.tasks=[spatial/0,goal/1]",
                       "learner.max_versions=7", "eval.temperatures=[0.0,1.6]"])
    overrides = config_overrides(cfg)
    assert overrides[0] == "env=libero"     # its fields exist once the option is chosen
    assert all(o.startswith("++") for o in overrides[1:])
    assert load_config(overrides) == cfg
    assert config_overrides(load_config([])) == []


def test_status_board_reads_the_learner_log_as_it_grows(tmp_path):
    path = tmp_path / "learner.jsonl"
    log = LearnerLog(path)
    log.refresh()                                     # no file yet
    with open(path, "w") as f:
        f.write(json.dumps({"event": "start", "policy_version": 4}) + "\n")
        f.write(json.dumps({"event": "update", "policy_version": 5, "success_rate": 0.5,
                            "dropped_stale": 2, "staleness_mean": 1.0, "staleness_max": 2,
                            "kept": 7, "learner_steps_per_s": 0.5})[:40])
    log.refresh()
    assert log.last_start["policy_version"] == 4 and log.last_update is None
    with open(path, "a") as f:
        f.write(json.dumps({"event": "update", "policy_version": 5, "success_rate": 0.5,
                            "dropped_stale": 2, "staleness_mean": 1.0, "staleness_max": 2,
                            "kept": 7, "learner_steps_per_s": 0.5})[40:] + "\n")
    # an actor's heartbeats: version 5 now, 130 env steps in the second between the two
    heartbeats = HealthMonitor("tcp://127.0.0.1:*")
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(heartbeats.address)
    push.send(encode_heartbeat("a-0", 4, 1000, 8, sent_at=1000.0))
    push.send(encode_heartbeat("a-0", 5, 1130, 9, sent_at=1001.0))
    wait_until(lambda: (heartbeats.poll(0.05),
                        [h.env_steps for h in heartbeats.report()])[1] == [1130])
    push.close(0)
    board = StatusBoard(tmp_path, tmp_path / "store", "async", heartbeats)
    board.learner_log = log
    figures = board.figures({"learner": True, "actor-0": True})
    assert figures["policy_version"] == 5 and figures["dropped"] == {"stale": 2}
    assert figures["env_steps_per_s"] == 130 and figures["actor_versions"] == [5]
    console = Console(record=True, width=120)
    console.print(render(figures))
    text = console.export_text()
    assert "policy_version" in text and "stale 2" in text and "130" in text
    assert "v5" in one_line(figures) and "130 steps/s" in one_line(figures)
    # while the learner waits for a batch, its wait records carry the filter's counters
    with open(path, "a") as f:
        f.write(json.dumps({"event": "wait", "time": 2e9, "policy_version": 5, "kept": 7,
                            "dropped_stale": 2, "dropped_success_low": 40}) + "\n")
    figures = board.figures({"learner": True, "actor-0": True})
    assert figures["dropped"] == {"stale": 2, "success_low": 40} and figures["kept"] == 7
    assert figures["policy_version"] == 5 and "success_low=40" in one_line(figures)
    assert "too weak" not in one_line(figures)             # groups were kept: no stall
    # a policy that never succeeds: every group dropped, none kept -> the status says why
    with open(path, "a") as f:
        f.write(json.dumps({"event": "wait", "time": 2e9 + 1, "policy_version": 0, "kept": 0,
                            "dropped_success_low": 40}) + "\n")
    figures = board.figures({"learner": True, "actor-0": True})
    assert "too weak for GRPO" in one_line(figures)
    console.print(render(figures))
    assert "sft.steps" in console.export_text()
    board.close()


def tiny_run_args(run_dir: Path, **extra) -> list[str]:
    over = {"run_dir": run_dir, "model.preset": "micro", "env.tasks": "[spatial/0]",
            "env.max_steps": 24, "num_actors": 2, "actor.num_envs": 4, "actor.log_every_s": 1,
            "algo.group_size": 4, "algo.groups_per_batch": 2, "algo.micro_batch_size": 8,
            # a barely trained micro policy rarely succeeds: keep every group so that the
            # learner gets batches at all (the filter itself is tested in test_filter.py)
            "algo.success_lo": 0.0, "algo.success_hi": 1.0,
            "learner.max_versions": 3, "learner.checkpoint_every": 2, "wandb": "false",
            # held-out measurements have a test of their own (test_run_evaluation.py)
            "run.eval_episodes": 0,
            **server_addresses(), **extra}
    return [f"{k}={v}" for k, v in over.items()]


def saved_micro_policy(tmp_path: Path) -> Path:
    """A fresh micro tiny VLA (seed 0) saved as ``tmp_path/policy``, to start RL from: the
    default model settings at the micro preset, so that a run's settings agree with it."""
    import torch
    from common.config.schema import ModelConfig
    from common.models import build_policy
    torch.manual_seed(0)
    policy_dir = tmp_path / "policy"
    build_policy(ModelConfig(preset="micro")).save_pretrained(str(policy_dir))
    return policy_dir


def run_command(args: list[str]) -> dict:
    """``pushcut run ARGS`` as subprocess keywords: its argv, the repository as the working
    directory, Weights & Biases offline."""
    return {"args": [sys.executable, "-m", "deploy.cli", "run", *args], "cwd": ROOT,
            "env": {**os.environ, "WANDB_MODE": "offline"}}


def start_run(args: list[str], out_path: Path) -> subprocess.Popen:
    """``pushcut run ARGS`` in the background, its output in ``out_path``."""
    with open(out_path, "wb") as out:
        return subprocess.Popen(**run_command(args), stdout=out, stderr=subprocess.STDOUT)


def pushcut_run(args: list[str], timeout_s: float) -> str:
    done = subprocess.run(**run_command(args), capture_output=True, text=True,
                          timeout=timeout_s)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    return out


def actor_summaries(run_dir: Path) -> list[dict]:
    found = []
    for path in sorted((run_dir / "logs").glob("actor-*.log")):
        lines = re.findall(r"^actor stopped: (\{.*\})$", path.read_text(), re.M)
        assert lines, f"{path.name} has no final summary:\n{path.read_text()[-2000:]}"
        found.append(json.loads(lines[-1]))
    return found


def updates(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "learner.jsonl") if r["event"] == "update"]


@pytest.mark.slow
def test_run_from_nothing_reaches_version_3_with_actors_on_new_versions(tmp_path):
    run_dir = tmp_path / "run"
    # max_staleness=1: version 3 needs groups generated with version >= 1
    out = pushcut_run(tiny_run_args(run_dir, **{"demos.per_task": 1, "sft.steps": 3,
                                                "sft.batch_size": 8,
                                                "sft.eval_episodes_per_task": 0,
                                                "algo.max_staleness": 1}), timeout_s=600)
    assert (run_dir / "demos" / "index.jsonl").exists() and (run_dir / "sft" / "final").exists()
    machine = json.loads((run_dir / "calibration.json").read_text())
    assert machine["cores"] >= 1 and machine["gflops_1thread"] > 0 and "machine:" in out
    stopped = json.loads(re.search(r"^run stopped: (\{.*\})$", out, re.M).group(1))
    assert stopped["policy_version"] == 3 and set(stopped["exits"].values()) == {0}
    assert [r["policy_version"] for r in updates(run_dir)] == [1, 2, 3]
    summaries = actor_summaries(run_dir)
    assert len(summaries) == 2
    assert any(int(v) > 0 for s in summaries for v in s["by_version"])
    with TrajectoryStore(str(run_dir / "store"), readonly=True) as store:
        versions = {v for g in store.complete_groups(include_consumed=True)
                    for v in g.policy_versions}
    assert max(versions) >= 1
    assert (run_dir / "checkpoints" / "version-00000003" / "policy" / "config.json").exists()
    status = read_jsonl(run_dir / "run.jsonl")
    assert status and status[-1]["policy_version"] == 3


@pytest.mark.slow
def test_sync_mode_in_lock_step_and_sigint_stops_everything_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_run_args(run_dir, mode="sync", **{
        "model.checkpoint": saved_micro_policy(tmp_path), "learner.max_versions": "null"})
    proc = start_run(args, tmp_path / "run.out")
    try:
        wait_until(lambda: len(updates(run_dir)) >= 3, 500, "3 versions", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=240) == 0, (tmp_path / "run.out").read_text()[-4000:]
    finally:
        proc.kill()
    text = (tmp_path / "run.out").read_text()
    stopped = json.loads(re.search(r"^run stopped: (\{.*\})$", text, re.M).group(1))
    assert stopped["reason"] == "interrupted" and set(stopped["exits"].values()) == {0}
    rows = updates(run_dir)
    assert [r["policy_version"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["staleness_max"] == 0 for r in rows)      # lock-step: never stale
    final = rows[-1]["policy_version"]
    assert (run_dir / "checkpoints" / f"version-{final:08d}").exists()   # saved on SIGINT
    by_version = {}
    for s in actor_summaries(run_dir):
        for v, n in s["by_version"].items():
            by_version[int(v)] = by_version.get(int(v), 0) + n
    assert {0, 1, 2} <= set(by_version)                # a round at every version
