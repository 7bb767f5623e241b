"""``pushcut run`` checks its configuration before it starts anything, and a child that runs
out of restarts ends the run with a non-zero status that names it, its exit status and the
last lines of its log. Real processes and sockets throughout (the chaos test of a run that
survives its children is in test_chaos.py)."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from deploy.run_status import StatusBoard, one_line, render
from tests.deploy.test_run import run_command, saved_micro_policy, tiny_run_args

# (overrides, the key the one-line error must name)
BAD = [
    (["num_actors=0"], "num_actors"),
    (["placement.learner=[4096]"], "placement.learner"),
    (["placement.env_workers=[0]", "actor.subprocess_envs=false"], "placement.env_workers"),
    (["placement.actors_nice=-1"], "placement.actors_nice"),
    (["actor.num_envs=0"], "actor.num_envs"),
    (["algo.group_size=0"], "algo.group_size"),
    (["algo.group_size=1"], "algo.group_size"),
    (["algo.temperature=-1"], "algo.temperature"),
    (["algo.temperature=0"], "algo.temperature"),
    (["algo.groups_per_batch=0"], "algo.groups_per_batch"),
    (["algo.micro_batch_size=0"], "algo.micro_batch_size"),
    (["algo.mini_batches=0"], "algo.mini_batches"),
    (["actor.adaptive_floor=0"], "actor.adaptive_floor"),
    (["algo.epochs_per_batch=0"], "algo.epochs_per_batch"),
    (["learner.world_size=0"], "learner.world_size"),
    (["algo.success_lo=0.8", "algo.success_hi=0.2"], "algo.success_lo"),
    (["algo.success_hi=1.5"], "algo.success_hi"),
    (["env.name=nope"], "env.name"),
    (["env.name=libero"], "env.name"),          # LIBERO's settings come with env=libero
    (["env.tasks=[spatial/99]"], "env.tasks"),
    (["env.suite=nope"], "env.suite"),
    (["env.layout=nope"], "env.layout"),
    (["env.name=probe", "env.tasks=[spatial/0]"], "env.tasks"),
    (["model.preset=huge"], "model.preset"),
    (["model.name=nope"], "model.name"),
    (["mode=fast"], "mode"),
    (["store.ingest_address=tcp://127.0.0.1"], "store.ingest_address"),
    (["store.ingest_address=tcp://*:*"], "store.ingest_address"),    # the actors dial it
    (["learner.heartbeat_address=localhost:5558"], "learner.heartbeat_address"),
    (["store.path={tmp}/elsewhere"], "store.path"),
    (["learner.checkpoint_dir={tmp}/elsewhere"], "learner.checkpoint_dir"),
    (["run_dir={tmp}/a-file"], "run_dir"),
    (["model.checkpoint={tmp}/no-policy"], "model.checkpoint"),
    (["store.capacity=1"], "store.capacity"),        # never a whole batch: the learner waits
]
# a few seconds: the model check imports torch and the model's config (2-3 s on an idle
# machine); the margin is for a machine whose cores are busy with other work
CHECK_WITHIN_S = 15.0


def _mentioning(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (children a run would have started)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(text in part for part in proc.info["cmdline"] or []):
            found.append(proc.info["pid"])
    return found


@pytest.mark.parametrize("bad, key", BAD, ids=[" ".join(b) for b, _ in BAD])
def test_a_bad_setting_is_one_line_and_exit_2_with_nothing_started(tmp_path, bad, key):
    (tmp_path / "a-file").write_text("not a directory")
    run_dir = tmp_path / "run"
    args = [a for a in tiny_run_args(run_dir) if not a.startswith(("num_actors=", "run_dir="))]
    if not any(b.startswith("run_dir=") for b in bad):
        args.append(f"run_dir={run_dir}")
    args += [b.format(tmp=tmp_path) for b in bad]
    if not any(b.startswith("num_actors=") for b in bad):
        args.append("num_actors=2")
    t0 = time.monotonic()
    done = subprocess.run(**run_command(args), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(lines) == 1 and lines[0].startswith("pushcut run: "), done.stderr
    assert key in lines[0] and ("must" in lines[0] or "keeps it" in lines[0]), lines[0]
    assert elapsed < CHECK_WITHIN_S, f"took {elapsed:.1f}s"
    assert not run_dir.exists(), "the run wrote into its run_dir"
    assert _mentioning(str(run_dir)) == [], "a child process was started"


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = [*tiny_run_args(tmp_path / "run"), f"store.ingest_address=tcp://127.0.0.1:{port}"]
        done = subprocess.run(**run_command(args), capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("pushcut run: store.ingest_address=") and "in use" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_store_path_it_cannot_write_is_one_line_and_exit_2(tmp_path):
    command = run_command([])     # `pushcut run`: the same interpreter, made `pushcut store`
    command["args"] = [*command["args"][:-1], "store", "store.path=/proc/pushcut-store",
                       "store.ingest_address=tcp://127.0.0.1:*"]
    done = subprocess.run(**command, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("pushcut store: store.path=") and "writable" in lines[0]


def test_the_status_counts_restarts(tmp_path):
    board = StatusBoard(tmp_path, tmp_path / "store", "async")
    figures = board.figures({"store": "running", "learner": "restarting", "actor-0": True},
                            {"store": 1, "learner": 2, "actor-0": 0})
    board.close()
    assert figures["restarts"] == {"store": 1, "learner": 2}
    assert figures["children"] == {"store": "running", "learner": "restarting",
                                   "actor-0": "running"}
    assert "restarts learner=2,store=1" in one_line(figures)
    assert "2/3 processes" in one_line(figures)
    console = Console(record=True, width=120)
    console.print(render(figures))
    assert "learner 2, store 1" in console.export_text()
    json.dumps(figures)                          # what run.jsonl holds


@pytest.mark.slow
def test_a_child_out_of_restarts_fails_the_run_naming_it_its_exit_and_its_log(tmp_path):
    """The store's CURVE key file is missing: the store dies at every start; after its
    restarts the run stops everything and exits 1, naming the store, its exit status and its
    last lines."""
    run_dir = tmp_path / "run"
    args = tiny_run_args(run_dir, **{"model.checkpoint": saved_micro_policy(tmp_path),
                                     "num_actors": 1,
                                     "actor.flush_timeout_s": 2,
                                     "learner.max_versions": "null",
                                     "store.curve_secret_key": tmp_path / "missing.key"})
    t0 = time.monotonic()
    done = subprocess.run(**run_command(args), capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-4000:]
    stopped = json.loads(re.search(r"^run stopped: (\{.*\})$", done.stdout, re.M).group(1))
    assert stopped["reason"] == "store failed" and stopped["failed"] == ["store"]
    assert stopped["restarts"]["store"] == 5 and stopped["exits"]["learner"] == 0
    assert "pushcut run: store failed: exit 1, no restart left after 5 restart(s)" in out
    assert f"last 20 line(s) of {run_dir / 'logs' / 'store.log'}" in out
    assert re.search(r"^  store\| .*missing.key' does not exist", out, re.M), out[-4000:]
    assert out.count("store exited with 1;") == 6, out[-4000:]
    assert time.monotonic() - t0 < 300
    status = [json.loads(line) for line in (run_dir / "run.jsonl").read_text().splitlines()]
    assert status[-1]["restarts"]["store"] == 5 and status[-1]["children"]["store"] == "failed"
