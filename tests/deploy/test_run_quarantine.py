"""Records the running policy could not train on, injected into a running ``pushcut run``
(probe env, micro policy, real processes and sockets). Over the ingest, a group of other
shapes (32x32 images, 2 views, 17 proprio dims), one of 1x1 images and one from the farthest
future version sampled at another temperature are rejected with their reasons. Written
straight into the store (as records stored before the learner declared what it trains on), a
group at another temperature and one whose members differ in chunk length, both at the
front of the queue, are each set aside alone with its own reason. Versions keep
advancing on the actors' groups, none of which is refused or set aside; the learner,
SIGKILLed and restarted by the run, never trains on any of the injected groups either."""
from __future__ import annotations

import json
import os
import re
import signal
import time
import zlib

import numpy as np
import psutil
import pytest

from common.metrics import read_jsonl
from common.synthetic import make_trajectory
from common.transport.trajectories import TrajectorySender
from common.wire.trajectory import encode
from learner.store import TrajectoryStore
from tests.deploy.test_run import saved_micro_policy, start_run, tiny_run_args
from tests.waiting import wait_until

GROUP_SIZE = 4
REJECTED = {"shape": ({"image_size": 32, "cameras": 2, "proprio_dim": 17}, "shape_mismatch"),
            "pixel": ({"image_size": 1}, "shape_mismatch"),
            "future": ({"policy_version": 2 ** 63 - 1, "temperature": 0.7}, "future_version")}


def group(name: str, num_bins: int, chunk_sizes: list[int] | None = None, **kw) -> list:
    """A complete group of the probe task, by default of the micro policy's shapes (with
    ``num_bins``) at the run's temperature; ``chunk_sizes``: each member's chunk length."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    kw = {"length": 8, "task_id": "probe/right", "temperature": 1.0, "num_bins": num_bins,
          **kw}
    return [make_trajectory(rng, group_id=name, group_size=GROUP_SIZE, success=i % 2 == 0,
                            trajectory_id=f"{name}-{i}",
                            chunk_size=chunk_sizes[i] if chunk_sizes else 8, **kw)
            for i in range(GROUP_SIZE)]


def set_aside(version: int, num_bins: int) -> dict[str, tuple[list, str]]:
    """Groups the ingest would refuse now, to be written directly: -> {name: (records, the
    learner's reason)}. At the learner's version and created after every actor's group, so
    that the filter puts them at the front of the queue."""
    found = {"cold": (group("cold", num_bins, temperature=0.7, policy_version=version),
                      "temperature_mismatch"),
             "split": (group("split", num_bins, [8, 8, 8, 4], policy_version=version),
                       "shape_mismatch")}
    for records, _ in found.values():
        for t in records:
            t.created_at = time.time() + 3600
    return found


def learner_pid(run_dir) -> int | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "deploy.cli learner" in cmd and str(run_dir) in cmd:
            return proc.pid
    return None


@pytest.mark.slow
def test_untrainable_groups_are_refused_or_set_aside_alone_in_a_running_run(tmp_path):
    run_dir, policy = tmp_path / "run", saved_micro_policy(tmp_path)
    num_bins = json.loads((policy / "config.json").read_text())["num_bins"]
    args = tiny_run_args(run_dir, **{
        "env.name": "probe", "env.tasks": "[probe/right]", "env.max_steps": 1,
        "model.checkpoint": policy, "num_actors": 1, "algo.temperature": 1.0,
        "learner.max_versions": "null", "learner.checkpoint_every": 2})
    store_address = next(a.split("=", 1)[1] for a in args if a.startswith("store.ingest"))

    def updates() -> list[dict]:
        path = run_dir / "learner.jsonl"
        return [r for r in read_jsonl(path) if r["event"] == "update"] if path.exists() else []

    proc = start_run(args, tmp_path / "run.out")
    try:
        wait_until(lambda: len(updates()) >= 2, 300, "two versions", proc)
        with TrajectorySender(store_address) as sender:
            for name, (fields, _) in REJECTED.items():
                for traj in group(name, num_bins, **fields):
                    sender.send(traj)
            assert sender.flush(60)
            assert sender.counters["acked"] == 0, sender.stats()
            assert dict(sender.rejected) == {"shape_mismatch": 8, "future_version": 4}
        injected = set_aside(updates()[-1]["policy_version"], num_bins)
        with TrajectoryStore(str(run_dir / "store")) as store:
            for records, _ in injected.values():
                store.put_many([(t, encode(t)) for t in records])
            wait_until(lambda: set(injected) <= set(store.consumption_marks()), 120,
                       "the injected groups set aside", proc)
        seen = len(updates())
        wait_until(lambda: len(updates()) >= seen + 2, 120, "versions after them", proc)
        os.kill(learner_pid(run_dir), signal.SIGKILL)
        resumed = len(updates())
        wait_until(lambda: len(updates()) >= resumed + 3, 300,
                   "versions from the restarted learner", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=240) == 0, (tmp_path / "run.out").read_text()[-4000:]
    finally:
        proc.kill()
    trained = [g for r in updates() for g in r["group_ids"]]
    assert all(len(r["group_ids"]) == 2 for r in updates())     # every version trained
    assert not set(trained) & {*injected, *REJECTED}
    with TrajectoryStore(str(run_dir / "store"), readonly=True) as store:
        marks = store.consumption_marks()
        assert not any(f"{name}-0" in store for name in REJECTED)
    assert {g: marks[g] for g in injected} == {g: why for g, (_, why) in injected.items()}
    # no actor group was set aside or quarantined: only the injected ones were
    assert {g for g, why in marks.items()
            if why not in ("trained", "stale", "fenced")} == set(injected)
    stopped = re.findall(r"^store stopped: (\{.*\})$", (run_dir / "logs" / "store.log")
                         .read_text(), re.M)
    stats = json.loads(stopped[-1])     # the actors' records were never refused either
    assert {k: v for k, v in stats.items() if k.startswith("rejected_")} == {
        "rejected_shape_mismatch": 8, "rejected_future_version": 4}
    assert read_jsonl(run_dir / "run.jsonl")[-1]["restarts"].get("learner", 0) >= 1
