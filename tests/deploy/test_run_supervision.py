"""``pushcut run`` checks its configuration before it starts anything (its settings against
the policy it starts from and its CurveZMQ key files too), and supervises its children: one
that dies more often than its role's restart intensity allows is retired; the run goes on
while it can still learn and ends with a non-zero status naming why when it cannot. Real
processes and sockets throughout (the chaos test of a run that survives its children is in
test_chaos.py)."""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from common.metrics import read_jsonl
from deploy.run import cannot_learn, child_states, fatal_retirements, run_over
from deploy.run_status import StatusBoard, one_line, render
from deploy.supervisor import ProcessSupervisor
from tests.deploy.test_chaos import sigkill
from tests.deploy.test_run import run_command, saved_micro_policy, start_run, tiny_run_args
from tests.waiting import wait_until

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
    (["store.curve_secret_key={tmp}/missing.key"], "store.curve_secret_key"),
    (["store.curve_secret_key={tmp}/a-file"], "store.curve_secret_key"),     # not a key
    (["learner.curve_authorized_dir={tmp}"], "learner.curve_authorized_dir"),  # no secret
]


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
    done = subprocess.run(**run_command(args), capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(lines) == 1 and lines[0].startswith("pushcut run: "), done.stderr
    assert key in lines[0] and ("must" in lines[0] or "keeps it" in lines[0]), lines[0]
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


def test_a_missing_curve_key_file_is_one_line_and_exit_2_for_the_store_alone(tmp_path):
    command = run_command([])     # `pushcut run`: the same interpreter, made `pushcut store`
    command["args"] = [*command["args"][:-1], "store", f"store.path={tmp_path / 'store'}",
                       "store.ingest_address=tcp://127.0.0.1:*",
                       f"store.curve_secret_key={tmp_path / 'missing.key_secret'}"]
    done = subprocess.run(**command, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("pushcut store: store.curve_secret_key=") and \
        "no such file" in lines[0]


def set_in_config(policy_dir: Path, **fields) -> Path:
    config = json.loads((policy_dir / "config.json").read_text())
    (policy_dir / "config.json").write_text(json.dumps({**config, **fields}))
    return policy_dir


# (overrides, a change to the checkpoint's config.json, the key the one line must name):
# settings a 1-view, 64-pixel, 7-bin, 8-step policy would silently ignore or crash on
MISMATCHES = [
    (["env.image_size=32"], {}, "env.image_size"),
    (["env.wrist_camera=true"], {}, "env.wrist_camera"),
    (["model.num_bins=5"], {}, "model.num_bins"),
    (["model.chunk_size=3"], {}, "model.chunk_size"),
    (["model.action_dim=6"], {}, "model.action_dim"),
    ([], {"proprio_dim": 9}, "env.name"),             # the env's proprio is 8 values
]


@pytest.mark.parametrize("bad, changed, key", MISMATCHES,
                         ids=[" ".join(b) or str(c) for b, c, _ in MISMATCHES])
def test_a_setting_against_the_checkpoint_is_one_line_and_exit_2(tmp_path, bad, changed, key):
    policy = set_in_config(saved_micro_policy(tmp_path), **changed)
    run_dir = tmp_path / "run"
    args = [*tiny_run_args(run_dir, **{"model.checkpoint": policy}), *bad]
    done = subprocess.run(**run_command(args), capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith(f"pushcut run: {key}=") and "must" in lines[0], lines[0]
    assert str(policy) in lines[0]
    assert not run_dir.exists() and _mentioning(str(run_dir)) == []


def test_the_run_s_warm_start_and_an_unreadable_checkpoint_are_checked_too(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(saved_micro_policy(tmp_path), run_dir / "sft" / "final")
    done = subprocess.run(**run_command([*tiny_run_args(run_dir), "model.num_bins=5"]),
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("pushcut run: model.num_bins=5: must be 7") and \
        "(the run's warm start)" in lines[0]
    (run_dir / "sft" / "final" / "config.json").write_text("{not json")
    args = tiny_run_args(tmp_path / "other", **{"model.checkpoint": run_dir / "sft" / "final"})
    done = subprocess.run(**run_command(args), capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("pushcut run: model.checkpoint=") and "readable JSON" in lines[0]


def test_the_run_goes_on_while_it_can_still_learn():
    """Children that retire at their first death (real processes): one actor of two leaves
    the run going; the second ends it, and so does the store."""
    idle = [sys.executable, "-c", "import signal; signal.pause()"]
    crash = [sys.executable, "-c", "raise SystemExit(3)"]
    children = {name: ProcessSupervisor(name, argv, max_restarts=0, window_s=60).start()
                for name, argv in (("store", idle), ("learner", idle), ("actor-0", crash),
                                   ("actor-1", idle))}

    def retired(name: str) -> bool:
        children[name].poll()
        return children[name].gave_up

    try:
        wait_until(lambda: retired("actor-0"), 60, "actor-0 to retire")
        assert child_states(children) == {"store": "running", "learner": "running",
                                          "actor-0": "retired", "actor-1": "running"}
        assert run_over(children) is None and cannot_learn(children) is None
        children["actor-1"].kill()
        wait_until(lambda: retired("actor-1"), 60, "actor-1 to retire")
        assert run_over(children) == "every actor retired"
        assert fatal_retirements(children) == ["actor-0", "actor-1"]
        children["store"].kill()
        wait_until(lambda: retired("store"), 60, "the store to retire")
        assert run_over(children) == "store retired"
        assert fatal_retirements(children) == ["store", "actor-0", "actor-1"]
    finally:
        for child in children.values():
            child.stop(10)


def last_status(run_dir: Path) -> dict:
    path = run_dir / "run.jsonl"
    rows = read_jsonl(path) if path.exists() else []
    return rows[-1] if rows else {}


def stopped_summary(text: str) -> dict:
    return json.loads(re.search(r"^run stopped: (\{.*\})$", text, re.M).group(1))


def learner_records(run_dir: Path, event: str) -> list[dict]:
    path = run_dir / "learner.jsonl"
    return [r for r in read_jsonl(path) if r.get("event") == event] if path.exists() else []


def learner_updates(run_dir: Path) -> list[dict]:
    return learner_records(run_dir, "update")


@pytest.mark.slow
def test_a_crash_looping_actor_is_retired_and_counts_survive_a_learner_kill(tmp_path):
    """actor-1 SIGKILLed 10 times within its 60 s window (9 restarts allowed): retired, the
    run goes on with actor-0 and keeps making versions; then the learner is SIGKILLed and
    the status's filter counts go on from where they were; Ctrl-C ends it with exit 0 and a
    summary naming the retired actor."""
    run_dir = tmp_path / "run"
    args = tiny_run_args(run_dir, **{
        "model.checkpoint": saved_micro_policy(tmp_path), "learner.max_versions": "null",
        "actor.flush_timeout_s": 2, "run.restarts.actor.max_restarts": 9,
        "run.restarts.actor.window_s": 60, "run.restarts.actor.backoff_s": 0.1,
        "run.restarts.actor.max_backoff_s": 0.2})
    run = start_run(args, tmp_path / "run.out")
    try:
        wait_until(lambda: len(learner_updates(run_dir)) >= 1, 300, "a first version", run)
        for _ in range(10):
            sigkill(run, "actor-1")
        wait_until(lambda: "actor-1" in last_status(run_dir).get("retired", []), 60,
                   "actor-1 retired in the status", run)
        assert last_status(run_dir)["children"]["actor-1"] == "retired"
        seen = len(learner_updates(run_dir))
        wait_until(lambda: len(learner_updates(run_dir)) >= seen + 2, 300,
                   "two more versions without actor-1", run)
        kept = wait_until(lambda: last_status(run_dir).get("kept"), 60, "kept groups")
        sigkill(run, "learner")
        restarted = wait_until(lambda: learner_records(run_dir, "start")[1:], 300,
                               "the learner's restart", run)[0]["time"]
        wait_until(lambda: learner_updates(run_dir)[-1]["time"] > restarted, 300,
                   "a version from the restarted learner", run)
        own = learner_updates(run_dir)[-1]["kept"]           # the new life's count alone
        wait_until(lambda: (last_status(run_dir).get("kept") or 0) >= kept + own, 60,
                   "the status's count to go on from where it was", run)
        assert own < kept + own <= last_status(run_dir)["kept"]
        run.send_signal(signal.SIGINT)
        assert run.wait(240) == 0, (tmp_path / "run.out").read_text()[-4000:]
    finally:
        run.kill()
        run.wait(60)
    text = (tmp_path / "run.out").read_text()
    stopped = stopped_summary(text)
    assert stopped["retired"] == ["actor-1"] and stopped["failed"] == []
    assert stopped["reason"] == "interrupted" and stopped["restarts"]["actor-1"] == 9
    assert "actor-1 exited with -9 (SIGKILL); retired (9 restart(s) within 60s already); " \
           "the run goes on without it" in text
    assert "pushcut run: actor-1 retired: exit -9 (SIGKILL)" in text


@pytest.mark.slow
def test_a_learner_past_its_restart_intensity_ends_the_run_naming_it(tmp_path):
    """The learner SIGKILLed 3 times with 2 restarts allowed: retired, and the run, which
    cannot learn without it, stops everything and exits 1 naming it, its exit status and
    its log."""
    run_dir = tmp_path / "run"
    args = tiny_run_args(run_dir, **{
        "model.checkpoint": saved_micro_policy(tmp_path), "num_actors": 1,
        "actor.flush_timeout_s": 2, "learner.max_versions": "null",
        "run.restarts.learner.max_restarts": 2, "run.restarts.learner.window_s": 60,
        "run.restarts.learner.backoff_s": 0.1, "run.restarts.learner.max_backoff_s": 0.2})
    run = start_run(args, tmp_path / "run.out")
    try:
        for _ in range(3):
            sigkill(run, "learner")
        assert run.wait(240) == 1, (tmp_path / "run.out").read_text()[-4000:]
    finally:
        run.kill()
        run.wait(60)
    text = (tmp_path / "run.out").read_text()
    stopped = stopped_summary(text)
    assert stopped["reason"] == "learner retired" and stopped["failed"] == ["learner"]
    assert stopped["retired"] == ["learner"] and stopped["restarts"]["learner"] == 2
    assert "learner exited with -9 (SIGKILL); retired (2 restart(s) within 60s already); " \
           "learner retired: the run cannot learn any more" in text
    # its log's last lines, or that it is empty (a learner killed before its first line)
    assert "pushcut run: learner retired: exit -9 (SIGKILL) with 2 restart(s) within 60s " \
           "already, 2 in all; " in text and str(run_dir / "logs" / "learner.log") in text
    assert "pushcut run: learner retired: the run could not learn any more" in text
    status = last_status(run_dir)
    assert status["children"]["learner"] == "retired" and status["retired"] == ["learner"]
