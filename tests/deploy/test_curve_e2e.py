"""CurveZMQ end to end: store, learner and two actors as real processes, CURVE on every socket.

Keys come from ``pushcut keys``; only ``actor-good``'s public key is in the authorized
directory. ``actor-bad`` holds a valid key pair that the servers do not list. What must hold
(issue 9): the accepted actor's trajectories are stored and it receives new weights; the other
one gets nothing stored, never a version past its start and no heartbeat through, while the
store and learner keep serving the accepted actor; both servers log its refused key.
"""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq.auth

from common.metrics import read_jsonl
from deploy.roles import role_argv
from deploy.supervisor import ProcessSupervisor
from tests.deploy.test_chaos import _all, learner_versions, system_overrides
from tests.ingest_helpers import REPO, wait_until


def make_keys(tmp: Path) -> Path:
    """``pushcut keys`` for the servers and both actors; only actor-good is authorized."""
    keys = tmp / "keys"
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "keys", str(keys), "server",
                          "actor-good", "actor-bad"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    (tmp / "authorized").mkdir()
    shutil.copy(keys / "actor-good.key", tmp / "authorized")
    return keys


def actor_stopped(log: Path) -> dict:
    """The summary an actor prints when it exits (``actor stopped: {json}``)."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if ln.startswith("actor stopped: ")]
    assert lines, f"no summary in {log}:\n{log.read_text(errors='replace')[-2000:]}"
    return json.loads(lines[-1][len("actor stopped: "):])


@pytest.mark.slow
def test_curve_admits_the_listed_actor_only_and_keeps_serving_it(tmp_path):
    keys = make_keys(tmp_path)
    servers = [f"{role}.{k}={v}" for role in ("store", "learner") for k, v in (
        ("curve_secret_key", keys / "server.key_secret"),
        ("curve_authorized_dir", tmp_path / "authorized"))]
    over = [*system_overrides(tmp_path), *servers, f"actor.curve_server_key={keys}/server.key"]
    logs = tmp_path / "logs"

    def actor(name: str, *extra: str) -> ProcessSupervisor:
        argv = role_argv("actor", [*over, f"actor.actor_id={name}",
                                   f"actor.curve_secret_key={keys}/{name}.key_secret", *extra])
        return ProcessSupervisor(name, argv, log_path=str(logs / f"{name}.log"), max_restarts=0)

    store = ProcessSupervisor("store", role_argv("store", over), log_path=str(logs / "store.log"))
    learner = ProcessSupervisor("learner", role_argv("learner", over),
                                log_path=str(logs / "learner.log"))
    good = actor("actor-good")
    # a few groups, short waits: it exits by itself once it has tried everything it can
    bad = actor("actor-bad", "actor.max_groups=3", "actor.weights_wait_s=3",
                "actor.flush_timeout_s=3")
    try:
        for sup in (store, learner, good):
            sup.start()
        wait_until(lambda: _servers_alive(store, learner) and
                   any(t.policy_version >= 1 for t in _stored(tmp_path)), 240,
                   "a trajectory from actor-good generated with learned weights")
        bad_start = time.time()
        bad.start()
        wait_until(lambda: _servers_alive(store, learner) and not bad.alive, 240,
                   "actor-bad to finish its groups and give up on the store")
        bad_end = time.time()
    finally:
        for sup in (bad, good, learner, store):
            sup.stop(60)

    assert bad.proc.returncode == 0, (logs / "actor-bad.log").read_text(errors="replace")[-2000:]
    summary = actor_stopped(logs / "actor-bad.log")
    assert summary["groups"] >= 3 and summary["sent"] > 0, f"actor-bad sent nothing: {summary}"
    assert summary.get("acked", 0) == 0, f"the store acknowledged actor-bad: {summary}"
    assert summary["policy_version"] == 0 and summary["swaps"] == 0, (
        f"actor-bad received weights: {summary}")

    stored = _all(tmp_path)
    assert not [t for t in stored if t.actor_id == "actor-bad"], "actor-bad's trajectory stored"
    served = [t for t in stored
              if t.actor_id == "actor-good" and bad_start < t.created_at < bad_end]
    updates = [t for t, _ in learner_versions(tmp_path) if bad_start < t < bad_end]
    assert served and updates, (
        f"while actor-bad knocked: {len(served)} trajectories of actor-good stored, "
        f"{len(updates)} learner updates")
    # heartbeats go through the same CURVE gate: the learner only ever heard of actor-good
    records = [r for r in read_jsonl(tmp_path / "learner.jsonl") if r.get("event") == "update"]
    heard = {r["actors_live"] + r["actors_stalled"] + r["actors_dead"] for r in records}
    assert heard <= {0, 1} and 1 in heard, f"actors heard per update: {sorted(heard)}"
    # the operator sees the knocking: both servers log actor-bad's refused key (a rich log
    # line may wrap, so the pieces are looked for separately)
    bad_key = zmq.auth.load_certificate(str(keys / "actor-bad.key"))[0].decode()
    good_key = zmq.auth.load_certificate(str(keys / "actor-good.key"))[0].decode()
    for role in ("store", "learner"):
        text = (logs / f"{role}.log").read_text(errors="replace")
        assert "CURVE refused a client from" in text and "unknown_key" in text, role
        assert bad_key in text and good_key not in text, f"{role} log: {text[-2000:]}"


def _stored(tmp: Path) -> list:
    """Every trajectory in the store ([] until the learner has trained on some: before that
    the store's files may not be complete enough to open read-only)."""
    return _all(tmp) if learner_versions(tmp) else []


def _servers_alive(store: ProcessSupervisor, learner: ProcessSupervisor) -> bool:
    assert store.alive and learner.alive, "store or learner died"
    return True
