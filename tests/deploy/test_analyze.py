"""``pushcut analyze``: strategies, failure phases, novelty and distance to the demos, from
the fingerprints in eval.json and in a demo dataset's index."""
import json

import numpy as np
import pytest

from deploy.analyze import (analyze_text, breakdown, demo_distance, demo_rows, dtw, episodes,
                            main, novel)


def fingerprint(strategy, phase=None):
    return {"touched": [], "lifted": [], "slid": [], "gripper_events": [], "path_m": 0.1,
            "path_mm": [[0, 0, 0]], "success_step": None, "strategy": strategy,
            "failure_phase": phase}


def write_eval(path, tasks):
    """tasks: {task_id: (family, [(success, strategy, phase), ...])}"""
    per_task = {t: {"family": fam, "outcomes": [int(ok) for ok, _, _ in eps],
                    "init_state_ids": list(range(len(eps))),
                    "fingerprints": [fingerprint(s, p) for _, s, p in eps]}
                for t, (fam, eps) in tasks.items()}
    path.mkdir(parents=True)
    (path / "eval.json").write_text(json.dumps({"temperatures": {"greedy": {
        "per_task": per_task}}}))
    return path


def test_breakdown_and_novelty_against_the_first_evaluation(tmp_path):
    sft = write_eval(tmp_path / "sft", {
        "spatial/0": ("spatial", [(True, "grasp_and_place", None), (False, "other", "never_reached")]),
        "goal/0": ("goal", [(False, "push", "grasp_failed"), (False, "other", "never_reached")])})
    rl = write_eval(tmp_path / "rl", {
        "spatial/0": ("spatial", [(True, "push", None), (True, "grasp_and_place", None)]),
        "goal/0": ("goal", [(True, "push", None), (False, "grasp_and_place", "dropped")])})
    parts = breakdown(episodes(rl))
    assert parts["all"]["strategy"] == {"push": 2, "grasp_and_place": 1}
    assert parts["goal"]["phase"] == {"dropped": 1}
    # spatial/0's push is new; goal/0's push was tried (and failed) by SFT: not novel
    assert novel(episodes(sft), episodes(rl)) == {"spatial": 1, "all": 1}
    text = analyze_text([sft, rl])
    assert "| all | 3 | 1 (33 %) | 2 (67 %) | 0 (0 %) | 1 |" in text
    assert text.count("| novel |") == 1     # a column of the later evaluation only


def test_an_evaluation_without_fingerprints_is_refused_in_one_line(tmp_path, capsys):
    path = write_eval(tmp_path / "old", {"spatial/0": ("spatial", [(True, "push", None)])})
    data = json.loads((path / "eval.json").read_text())
    del data["temperatures"]["greedy"]["per_task"]["spatial/0"]["fingerprints"]
    (path / "eval.json").write_text(json.dumps(data))
    assert main(None, [str(path)]) == 2
    assert "has no fingerprints" in capsys.readouterr().out
    assert main(None, []) == 2


def test_dtw_ignores_timing_and_measures_offsets():
    path = np.cumsum(np.random.default_rng(0).normal(size=(12, 3)), axis=0)
    assert dtw(path, path) == 0.0
    assert dtw(path, np.repeat(path, 2, axis=0)) == pytest.approx(0.0)   # slower, same path
    assert dtw(path, path + [0.0, 0.0, 10.0]) == pytest.approx(10.0)     # 10 mm higher
    assert dtw(path, path[::-1]) > 1.0


def test_novelty_and_distance_against_the_demos(tmp_path):
    demos = tmp_path / "demos"
    demos.mkdir()
    line = {"trajectory_id": "d0", "task_id": "spatial/0", "success": True, "file": "x",
            "fingerprint": {**fingerprint("grasp_and_place"), "path_mm": [[0, 0, 0], [0, 0, 100]]}}
    (demos / "index.jsonl").write_text(json.dumps(line) + "\n")
    rl = write_eval(tmp_path / "rl", {"spatial/0": ("spatial", [
        (True, "push", None), (True, "grasp_and_place", None), (False, "other", "dropped")])})
    data = json.loads((rl / "eval.json").read_text())
    prints = data["temperatures"]["greedy"]["per_task"]["spatial/0"]["fingerprints"]
    prints[0]["path_mm"] = [[0, 0, 0], [0, 0, 100]]           # the demo's path
    prints[1]["path_mm"] = [[0, 20, 0], [0, 20, 100]]         # 20 mm to the side
    prints[2]["path_mm"] = [[0, 0, 0]]
    (rl / "eval.json").write_text(json.dumps(data))
    assert novel(demo_rows(demos), episodes(rl)) == {"spatial": 1, "all": 1}   # the push
    assert demo_distance(demo_rows(demos), episodes(rl)) == {"spatial": 10.0, "all": 10.0}
    text = analyze_text([demos, rl])
    assert "| novel | dtw_mm |" in text and "| 1 | 10 |" in text
    del line["fingerprint"]
    (demos / "index.jsonl").write_text(json.dumps(line) + "\n")
    assert main(None, [str(demos), str(rl)]) == 2
