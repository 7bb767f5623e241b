"""``pushcut analyze``: strategies, failure phases and novelty from eval.json fingerprints."""
import json

from deploy.analyze import analyze_text, breakdown, episodes, main, novel


def fingerprint(strategy, phase=None):
    return {"touched": [], "lifted": [], "slid": [], "gripper_events": [], "path_m": 0.1,
            "success_step": None, "strategy": strategy, "failure_phase": phase}


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
