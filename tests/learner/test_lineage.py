"""learner/lineage.py: the resume rule, its durable record, fencing the groups of lost
versions in a real LMDB store, ``pushcut learner`` refusing a record it did not write, and
real processes (store, actor, learner) with the learner SIGKILLed between checkpoints: every
published version hashed, one set of weights per number."""
from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from common.config.endpoints import ENDPOINTS
from common.metrics import read_jsonl
from common.wire.weights import ANNOUNCE_TOPIC, parse_manifest, unpack_map
from learner.lineage import (
    FENCED, LINEAGE_FILE, FencedStore, Lineage, LineageError, resume_version,
)
from learner.store import TrajectoryStore
from tests.actors.helpers import StoreProcess, pushcut
from tests.learner.helpers import micro_policy, sampled_group
from tests.learner.test_learner_process import learner_args, run_to_the_end, start_learner
from tests.waiting import server_addresses, wait_until


@pytest.mark.parametrize("checkpoint, published, expected", [
    (None, None, (0, None)),            # a fresh run
    (5, None, (5, None)),               # a checkpoint directory from before the record
    (5, 5, (5, None)),                  # a clean stop: its final checkpoint is the last version
    (250, 253, (254, (251, 253))),      # killed between checkpoints: 251-253 are lost
    (None, 3, (4, (0, 3))),             # killed before its first checkpoint: even 0 is lost
    (7, 5, (7, None)),                  # a checkpoint past the record: nothing to skip
])
def test_the_resume_rule(checkpoint, published, expected):
    assert resume_version(checkpoint, published) == expected


def test_the_record_is_durable_and_accumulates_lost_ranges(tmp_path):
    lineage = Lineage.load(tmp_path)
    assert lineage.published is None and lineage.fenced == [] and lineage.resume(None) == 0
    assert not (tmp_path / LINEAGE_FILE).exists()        # nothing lost, nothing written yet
    for v in range(5):
        lineage.record_published(v)
    lineage.record_published(3)                          # a lower number never lowers it
    assert Lineage.load(tmp_path).published == 4
    # checkpoint 2, published 4: resumed as 5, 3-4 fenced, recorded before any publish
    assert Lineage.load(tmp_path).resume(2) == 5
    reread = Lineage.load(tmp_path)
    assert reread.published == 4 and reread.fenced == [(3, 4)]
    # killed again before publishing 5: the same rule gives the same answer
    assert reread.resume(2) == 5 and Lineage.load(tmp_path).fenced == [(3, 4)]
    again = Lineage.load(tmp_path)
    for v in (5, 6, 7):
        again.record_published(v)
    assert again.resume(6) == 8 and Lineage.load(tmp_path).fenced == [(3, 4), (7, 7)]
    assert json.loads((tmp_path / LINEAGE_FILE).read_text()) == \
        {"published": 7, "fenced": [[3, 4], [7, 7]]}
    assert [p.name for p in tmp_path.iterdir()] == [LINEAGE_FILE]   # no temporary file left


def test_no_version_is_ever_published_for_two_weight_sets(tmp_path):
    """A learner's life, simulated over the real record: random kills between checkpoints
    and clean stops, 60 starts. Every version names one set of weights, a fenced version is
    one whose weights no checkpoint holds, and the resumed weights are always new by number."""
    rng = random.Random(0)
    named: dict[int, object] = {}           # version -> the weights published under it
    checkpoints: dict[int, object] = {}     # version -> the weights the checkpoint holds
    for start in range(60):
        lineage = Lineage.load(tmp_path)
        latest = max(checkpoints) if checkpoints else None
        version = lineage.resume(latest)
        weights = checkpoints[latest] if latest is not None else ("fresh", start)

        def publish(v: int, w: object) -> None:
            lineage.record_published(v)
            assert named.setdefault(v, w) == w, f"version {v} named two weight sets"
        publish(version, weights)
        for update in range(rng.randrange(6)):
            version, weights = version + 1, (start, update)
            publish(version, weights)
            if version % 3 == 0:
                checkpoints[version] = weights
        if rng.random() < 0.3:                  # a clean stop writes a final checkpoint
            checkpoints[version] = weights
    lost = {v for lo, hi in Lineage.load(tmp_path).fenced for v in range(lo, hi + 1)}
    assert lost and lost.isdisjoint(checkpoints)
    assert max(named) == Lineage.load(tmp_path).published


def test_is_fenced_covers_the_lost_ranges_only(tmp_path):
    lineage = Lineage(tmp_path / LINEAGE_FILE, published=9, fenced=[(0, 0), (3, 4)])
    assert [v for v in range(-1, 11) if lineage.is_fenced(v)] == [0, 3, 4]


def put_group(store: TrajectoryStore, version: int, rng) -> str:
    group = sampled_group(micro_policy(0), rng, [True, False], policy_version=version,
                          length=8)
    for t in group:
        store.put(t)
    return group[0].group_id


def test_the_filters_view_of_the_store_fences_the_groups_of_lost_versions(tmp_path):
    rng = np.random.default_rng(0)
    with TrajectoryStore(str(tmp_path / "store"), capacity=1000, map_size_mb=64) as store:
        ids = {v: put_group(store, v, rng) for v in (2, 3, 4, 5, 6)}
        seen: list[list[str]] = []
        nothing_lost = FencedStore(store, Lineage(tmp_path / LINEAGE_FILE, published=4),
                                   seen.append)
        assert len(nothing_lost.complete_groups()) == 5 and seen == []
        view = FencedStore(store, Lineage(tmp_path / LINEAGE_FILE, published=4,
                                          fenced=[(3, 4)]), seen.append)
        assert {g.group_id for g in view.complete_groups()} == {ids[2], ids[5], ids[6]}
        assert seen == [sorted([ids[3], ids[4]])]
        assert store.consumption_marks() == {ids[3]: FENCED, ids[4]: FENCED}
        assert {g.group_id for g in store.complete_groups()} == {ids[2], ids[5], ids[6]}
        view.complete_groups()                          # marked once, never counted again
        assert len(seen) == 1 and len(view.complete_groups(include_consumed=True)) == 5
        assert [t.group_id for t in view.read_group(ids[2])] == [ids[2]] * 2   # the store's


@pytest.mark.parametrize("text, why", [
    ("{not json", "not JSON"),
    ('{"published": 3}', "keys"),
    ('{"published": -2, "fenced": []}', "published -2"),
    ('{"published": 3, "fenced": [[4, 2]]}', "fenced"),
    ('{"published": 3, "fenced": [[1, 5]]}', "fenced"),
    ('{"published": null, "fenced": [[0, 0]]}', "fenced"),
])
def test_a_file_that_is_not_a_record_is_refused(tmp_path, text, why):
    (tmp_path / LINEAGE_FILE).write_text(text)
    with pytest.raises(LineageError, match=why) as err:
        Lineage.load(tmp_path)
    assert str(tmp_path / LINEAGE_FILE) in str(err.value)


def test_the_learner_refuses_a_record_it_did_not_write_in_one_line(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / LINEAGE_FILE).write_text('{"published": "many", "fenced": []}')
    proc = start_learner(learner_args(tmp_path), tmp_path / "learner.log")
    try:
        assert proc.wait(timeout=300) == 1
    finally:
        proc.kill()
    lines = (tmp_path / "learner.log").read_text().splitlines()
    assert len(lines) == 1 and "published 'many' is not a version" in lines[0], lines
    assert not (tmp_path / "learner.jsonl").exists()


# ------------------------------------------- a learner killed between checkpoints, real actor
PUBLISHED = re.compile(r"published policy_version (\d+) \(.*sha256 ([0-9a-f]{64})\)")
SWAPPED = re.compile(r"policy_version (\d+) -> (\d+)")


class Announcements:
    """Every (policy_version, sha256) announced on ``address``, heard by a SUB of the test's
    own (it reconnects by itself across learner restarts)."""

    def __init__(self, address: str):
        self.heard: set[tuple[int, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(address,), daemon=True)
        self._thread.start()

    def _run(self, address: str) -> None:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, ANNOUNCE_TOPIC)
        sub.connect(address)
        try:
            while not self._stop.is_set():
                if sub.poll(100):
                    msg = unpack_map(sub.recv()[len(ANNOUNCE_TOPIC):])
                    m = parse_manifest(msg, with_chunks=False)
                    self.heard.add((m.policy_version, m.sha256))
        finally:
            sub.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def published(log: Path) -> list[tuple[int, str]]:
    """(version, sha256) of every version a learner published, from its log."""
    return [(int(v), h) for v, h in PUBLISHED.findall(log.read_text())] if log.exists() else []


def swaps(log: Path) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in SWAPPED.findall(log.read_text())]


def system_args(tmp: Path, addresses: dict[str, str]) -> list[str]:
    """What the learner and the actor share: the probe env (its groups mix successes and
    failures, so every update changes the weights), a micro policy, no group dropped but the
    fenced ones (this test is about versions, not about what is learnt)."""
    over = {"run_dir": tmp, "wandb": "false", "store.path": tmp / "store",
            "learner.checkpoint_dir": tmp / "ckpt", "learner.poll_s": 0.05,
            "learner.checkpoint_every": 1000, "learner.snapshot_every": 0,
            "learner.torch_threads": 1, "actor.torch_threads": 1, "model.preset": "micro",
            "env.name": "probe", "env.tasks": "[probe/right]", "env.max_steps": 1,
            "actor.num_envs": 4, "actor.resend_after_s": 1.0, "actor.weights_wait_s": 300,
            "actor.log_every_s": 1, "algo.group_size": 4, "algo.groups_per_batch": 2,
            "algo.micro_batch_size": 8, "algo.temperature": 1.0, "algo.success_lo": 0.0,
            "algo.success_hi": 1.0, "algo.max_staleness": 1000, **addresses,
            **{e.client: addresses[e.server] for e in ENDPOINTS}}
    return [f"{k}={v}" for k, v in over.items()]


def store_groups(path: str | Path) -> tuple[dict[str, int], dict[str, str]]:
    """({group_id: policy_version} of every complete group, consumption marks)."""
    with TrajectoryStore(str(path), readonly=True) as store:
        return ({g.group_id: g.policy_versions[0]
                 for g in store.complete_groups(include_consumed=True)},
                store.consumption_marks())


def unconsumed_versions(path: str | Path) -> set[int]:
    versions, marks = store_groups(path)
    return {v for g, v in versions.items() if g not in marks}


@pytest.mark.slow
def test_a_learner_killed_between_checkpoints_never_renames_weights(tmp_path):
    """A learner stops cleanly at version 2 (its checkpoint), is restarted, publishes 3..h and
    is SIGKILLed while an actor holds one of them; restarted again, it publishes the
    checkpoint's weights as h+1. Every published version is hashed: one digest per version,
    across the three learners; the actor reloads; the lost versions' groups are fenced."""
    addresses = server_addresses()
    args = system_args(tmp_path, addresses)
    store = StoreProcess(tmp_path / "store",
                         int(addresses["store.ingest_address"].rsplit(":", 1)[1])).start()
    heard = Announcements(addresses["learner.announce_address"])
    logs = [tmp_path / f"learner{i}.log" for i in (1, 2, 3)]
    actor_log = tmp_path / "actor.log"
    learner = actor = None
    try:
        with open(actor_log, "w") as out:     # it waits for the learner's first version
            actor = pushcut("actor", *args, stdout=out, stderr=subprocess.STDOUT)
        run_to_the_end([*args, "learner.max_versions=2"], logs[0])
        learner = start_learner(args, logs[1])
        wait_until(lambda: any(b >= 4 for _, b in swaps(actor_log)), 400,
                   "the actor on version 4 or later", actor)
        learner.send_signal(signal.SIGKILL)
        learner.wait(30)
        lost = max(v for v, _ in published(logs[1]))
        # the actor goes on with the lost weights: a group of theirs reaches the store
        wait_until(lambda: any(3 <= v <= lost for v in unconsumed_versions(store.path)), 300,
                   "an unconsumed group of a lost version", actor)
        run_to_the_end([*args, f"learner.max_versions={lost + 4}"], logs[2])
        wait_until(lambda: any(b > lost for _, b in swaps(actor_log)), 120,
                   "the actor on the resumed learner's weights", actor)
        actor.send_signal(signal.SIGTERM)
        assert actor.wait(120) == 0, actor_log.read_text()[-3000:]
    finally:
        for proc in (learner, actor):
            if proc is not None:
                proc.kill()
        heard.close()
        store.stop()
    check_lineage(tmp_path, logs, actor_log, heard.heard, lost)


def check_lineage(tmp: Path, logs: list[Path], actor_log: Path,
                  heard: set[tuple[int, str]], lost: int) -> None:
    digests: dict[int, set[str]] = {}
    for log in logs:
        for version, digest in published(log):
            digests.setdefault(version, set()).add(digest)
    assert all(len(d) == 1 for d in digests.values()), \
        {v: d for v, d in digests.items() if len(d) > 1}
    assert sorted(digests) == list(range(lost + 5))
    # the resumed weights are the checkpoint's, under a number never used before; the lost
    # number named other weights (the collision this prevents was real)
    assert digests[lost + 1] == digests[2] != digests[lost]
    assert [v for v, _ in published(logs[1])][0] == 2          # a clean restart: same number
    assert heard and all(digest in digests[v] for v, digest in heard)
    starts = [r for r in read_jsonl(tmp / "learner.jsonl") if r["event"] == "start"]
    assert [(s["policy_version"], s["resumed_from"], s["fenced_versions"]) for s in starts] == \
        [(0, None, []), (2, 2, []), (lost + 1, 2, [[3, lost]])]
    # the actor held weights of a lost version until the resumed learner's came
    held = next(a for a, b in swaps(actor_log) if b > lost)
    assert 4 <= held <= lost, swaps(actor_log)
    # nothing of a lost version trained after the resume, and staleness never below 0
    versions, marks = store_groups(tmp / "store")
    rows = [r for r in read_jsonl(tmp / "learner.jsonl") if r["event"] == "update"]
    resumed = [r for r in rows if r["time"] > starts[2]["time"]]
    assert [r["policy_version"] for r in resumed] == [lost + 2, lost + 3, lost + 4]
    for row in rows:
        assert all(versions[g] <= row["policy_version"] - 1 for g in row["group_ids"]), row
    assert not any(3 <= versions[g] <= lost for r in resumed for g in r["group_ids"])
    fenced = [g for g, why in marks.items() if why == FENCED]
    assert fenced and all(3 <= versions[g] <= lost for g in fenced)
    stop = [r for r in read_jsonl(tmp / "learner.jsonl") if r["event"] == "stop"][-1]
    assert stop["dropped_fenced"] == len(fenced)
