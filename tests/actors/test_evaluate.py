"""``pushcut eval``: per-task and per-family held-out success on the real tabletop suite,
greedy and sampled, with videos and a JSON report."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from actors.env_workers import make_workers
from actors.envs.base import TaskSpec
from actors.evaluate import evaluate_policy, heldout_requests, main, summarize
from common.stats import wilson_interval
from actors.expert_policy import ExpertPolicy
from actors.rollout import EpisodeRequest
from common.config import load_config
from common.config.schema import ModelConfig, TabletopEnvConfig
from common.models import build_policy

TASKS = ["spatial/0", "object/2"]


def _env_cfg(**kw):
    return TabletopEnvConfig(tasks=TASKS, num_train_init_states=3, num_heldout_init_states=2, **kw)


def test_the_scripted_expert_scores_per_task_and_family(tmp_path):
    # a policy with known outcomes: the expert succeeds on held-out states
    workers = make_workers(_env_cfg(fingerprints=True), 2, seed=0, use_subprocess=False)
    try:
        results = evaluate_policy(ExpertPolicy(workers), _env_cfg(), episodes_per_task=2,
                                  temperatures=[0.0], videos_per_task=1, out_dir=tmp_path,
                                  workers=workers)
    finally:
        for w in workers:
            w.close()
    greedy = results["temperatures"]["greedy"]
    assert set(greedy["per_task"]) == set(TASKS)
    for task_id, row in greedy["per_task"].items():
        assert row["episodes"] == 2 and row["init_state_ids"] == [3, 4]   # held-out ids only
        assert row["success_rate"] == 1.0 and 0 < row["mean_length"] < 120
        # each episode's behaviour fingerprint travels with its outcome
        assert [f["strategy"] for f in row["fingerprints"]] == ["grasp_and_place"] * 2
    assert greedy["per_family"] == {"spatial": 1.0, "object": 1.0} and greedy["average"] == 1.0
    assert json.loads((tmp_path / "eval.json").read_text())["temperatures"]["greedy"] == greedy
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["greedy_object-2_init3_success.mp4",
                                        "greedy_spatial-0_init3_success.mp4"]
    assert all(v.stat().st_size > 1000 for v in videos)


@pytest.mark.slow
def test_eval_command_on_a_checkpoint(tmp_path):
    policy = build_policy(ModelConfig(preset="micro"))
    policy.save_pretrained(tmp_path / "ckpt")
    cfg = load_config([f"eval.out={tmp_path / 'eval'}", "eval.episodes_per_task=3",
                       "eval.temperatures=[0.0,1.6]", "eval.videos_per_task=0",
                       "eval.num_envs=3", "env.max_steps=16", f"env.tasks=[{','.join(TASKS)}]",
                       "env.num_heldout_init_states=2"])
    assert main(cfg, [str(tmp_path / "ckpt")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["checkpoint"] == str(tmp_path / "ckpt")
    assert set(report["temperatures"]) == {"greedy", "T=1.6"}
    for summary in report["temperatures"].values():
        assert {k: v["episodes"] for k, v in summary["per_task"].items()} == \
            {"spatial/0": 3, "object/2": 3}
        # three episodes over two held-out ids: cycled
        assert summary["per_task"]["spatial/0"]["init_state_ids"] == [40, 41, 40]
        assert all(v["mean_length"] <= 16 for v in summary["per_task"].values())
        # an untrained policy fails: each failure says in which phase it ended
        phases = {f["failure_phase"] for v in summary["per_task"].values()
                  for f in v["fingerprints"]}
        assert len(phases) >= 1 and phases <= {"never_reached", "grasp_failed", "timed_out",
                                               "misplaced", "dropped", None}


def test_summarize_rates_per_task_family_and_average():
    tasks = [TaskSpec("a/0", "a", "x", 10), TaskSpec("a/1", "a", "y", 10),
             TaskSpec("b/0", "b", "z", 10)]
    outcomes = {"a/0": [1, 1, 0, 0], "a/1": [1, 1, 1, 1], "b/0": [0, 0, 0, 1]}
    episodes = [SimpleNamespace(request=EpisodeRequest(t, 7, "g"), success=bool(s), length=5,
                                info=None)
                for t, wins in outcomes.items() for s in wins]
    out = summarize(tasks, episodes)
    assert {k: v["success_rate"] for k, v in out["per_task"].items()} == \
        {"a/0": 0.5, "a/1": 1.0, "b/0": 0.25}
    assert out["per_family"] == {"a": 0.75, "b": 0.25}
    assert out["average"] == pytest.approx(1.75 / 3) and out["episodes"] == 12
    # intervals: Wilson over each task's, each family's and all episodes; outcomes kept
    assert out["per_task"]["a/0"]["ci95"] == pytest.approx(list(wilson_interval(2, 4)))
    assert out["family_ci95"]["a"] == pytest.approx(list(wilson_interval(6, 8)))
    assert out["ci95"] == pytest.approx(list(wilson_interval(7, 12)))
    assert out["per_task"]["b/0"]["outcomes"] == [0, 0, 0, 1]


def test_requests_cycle_heldout_ids_and_mark_videos():
    tasks = [TaskSpec("a/0", "a", "x", 10)]
    reqs = heldout_requests(tasks, {"a/0": [5, 6]}, episodes_per_task=3, videos_per_task=1)
    assert [(r.init_state_id, r.record_video) for r in reqs] == [(5, True), (6, False), (5, False)]
    assert len({r.group_id for r in reqs}) == 3
    with pytest.raises(ValueError, match="held-out"):
        heldout_requests(tasks, {"a/0": []}, 1, 0)
