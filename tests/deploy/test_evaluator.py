"""``pushcut evaluator``: each snapshot of a run evaluated once on the held-out states,
newest first, with intervals and per-episode outcomes; stops after the final one."""
from __future__ import annotations

import json
import threading

from common.config import load_config
from deploy.evaluator import eval_dir, pending, watch
from learner.snapshots import list_snapshots, save_snapshot
from tests.learner.helpers import micro_policy


def test_evaluates_every_snapshot_once_until_the_final_one(tmp_path):
    policy = micro_policy(0)
    sd = policy.state_dict()
    root = tmp_path / "snapshots"
    for version, final in ((5, False), (10, True)):
        save_snapshot(root, version, policy, sd, {"wall_s": 2.0 * version, "final": final})
    cfg = load_config([f"run_dir={tmp_path}", "env.name=probe", "env.image_size=64",
                       "eval.episodes_per_task=6", "eval.num_envs=2",
                       "env.num_heldout_init_states=3"])
    assert [s.name for s in pending(tmp_path)] == ["v000010", "v000005"]   # newest first
    assert watch(cfg, threading.Event(), until_final=True) == 2
    assert pending(tmp_path) == []
    for snap in list_snapshots(root):
        record = json.loads((eval_dir(tmp_path, snap) / "eval.json").read_text())
        greedy = record["temperatures"]["greedy"]
        assert record["policy_version"] == int(snap.name[1:])
        assert greedy["episodes"] == 6 * 2                        # two probe tasks
        lo, hi = greedy["ci95"]
        assert lo <= greedy["average"] <= hi
        assert all(len(t["outcomes"]) == 6 for t in greedy["per_task"].values())
        assert greedy["per_task"]["probe/right"]["init_state_ids"] == [40, 41, 42] * 2
    # nothing new and no final: a stopped evaluator returns at once
    stop = threading.Event()
    stop.set()
    assert watch(cfg, stop) == 0
