"""``pushcut report`` on an experiment directory written here in the real layout (eval.json
files as ``pushcut eval`` writes them, snapshot.json files as the learner writes them)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.report import (
    Curve, Point, choose_target, load_experiment, parse_args, time_to_target, write_report,
)
from learner.snapshots import INFO_FILE, snapshot_name

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("spatial", "object")


def write_eval(out: Path, by_family: dict[str, float]) -> None:
    """An eval.json with two tasks per family, as actors/evaluate.py writes it."""
    per_task = {f"{fam}/{i}": {"family": fam, "episodes": 10, "success_rate": rate,
                               "successes": int(10 * rate),
                               "outcomes": [int(e < 10 * rate) for e in range(10)],
                               "init_state_ids": list(range(40, 50))}
                for fam, rate in by_family.items() for i in range(2)}
    summary = {"temperature": 0.0, "per_task": per_task, "per_family": by_family,
               "average": sum(by_family.values()) / len(by_family), "episodes": 40}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({"checkpoint": "x", "temperatures": {
        "greedy": summary, "T=1.6": {**summary, "average": 0.0}}, "videos": []}))


def write_rl(rl: Path, mode: str, points: list[tuple[int, float, int, float, float]],
             complete: bool = True) -> None:
    """points: (policy_version, wall_s, env_steps, spatial rate, object rate)."""
    for i, (version, wall_s, steps, spatial, obj) in enumerate(points):
        snap = rl / "snapshots" / snapshot_name(version)
        snap.mkdir(parents=True)
        final = complete and i == len(points) - 1
        (snap / INFO_FILE).write_text(json.dumps({
            "policy_version": version, "wall_s": wall_s, "env_steps": steps,
            "env_steps_trained": steps // 2, "mode": mode, "final": final,
            "stop_reason": "max_wall_s" if final else None}))
        (snap / "config.json").write_text("{}")
        write_eval(rl / "evals" / snap.name, {"spatial": spatial, "object": obj})


@pytest.fixture
def experiment(tmp_path) -> Path:
    exp = tmp_path / "exp_onedemo"
    write_eval(exp / "eval_sft", {"spatial": 0.3, "object": 0.2})          # average 0.25
    write_rl(exp / "rl_async", "async", [(10, 300.0, 20_000, 0.7, 0.5),
                                         (20, 600.0, 40_000, 0.95, 0.85),   # 0.90: target
                                         (30, 900.0, 60_000, 1.0, 0.9)])    # final 0.95
    write_rl(exp / "rl_sync", "sync", [(10, 500.0, 10_000, 0.5, 0.4),
                                       (20, 1000.0, 20_000, 0.8, 0.7),
                                       (30, 1500.0, 30_000, 0.9, 0.9)])     # 0.90 at 1500 s
    (exp / "experiment.json").write_text(json.dumps({"name": "onedemo", "calibration": [
        {"cores": 2, "gflops_1thread": 33.4, "cpu": "AMD EPYC"}], "stages": {
        "demos": {"status": "done", "wall_s": 12.0}, "sft": {"status": "done", "wall_s": 100.0},
        "rl_async": {"status": "done", "wall_s": 950.0}}}))
    return exp


def test_loads_curves_with_the_sft_level_first(experiment):
    result = load_experiment(experiment)
    assert result.name == "onedemo"
    assert result.sft.average == pytest.approx(0.25)
    curve = result.curves["async"]
    assert [p.policy_version for p in curve.points] == [0, 10, 20, 30]
    assert [p.wall_s for p in curve.points] == [0.0, 300.0, 600.0, 900.0]
    assert curve.final.average == pytest.approx(0.95) and curve.complete
    assert result.curves["sync"].final.per_family == {"spatial": 0.9, "object": 0.9}


def test_report_table_numbers_and_png(experiment, tmp_path):
    png, md, text = write_report([experiment], 0.9, None)
    assert png == experiment / "report.png" and md.read_text() == text
    assert png.stat().st_size > 10_000            # two panels with curves, not a blank canvas
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ")}
    # family: SFT, SFT+RL async, SFT+RL sync, gain async, gain sync
    assert rows["spatial"] == ["30%", "100%", "90%", "+70", "+60"]
    assert rows["object"] == ["20%", "90%", "90%", "+70", "+70"]
    assert rows["**average**"] == ["25%", "95%", "90%", "+70", "+65"]
    # async, sync, async/sync
    assert rows["RL wall time (s)"] == ["900", "1500", "0.60"]
    assert rows["env steps"] == ["60,000", "30,000", "2.00"]
    assert rows["share of env steps trained on"] == ["0.50", "0.50", "1.00"]
    assert rows["wall time to 90% (s)"] == ["600", "1500", "0.40"]
    assert rows["env steps to 90%"] == ["40,000", "30,000", "1.33"]
    assert "Target 90% (target)" in text and "Incomplete" not in text
    assert "sft 100 s" in text
    assert "Machine: 2 cores, 33 GFLOPS per thread (AMD EPYC)." in text
    record = json.loads((experiment / "results.json").read_text())
    assert record["calibration"] == [{"cores": 2, "gflops_1thread": 33.4, "cpu": "AMD EPYC"}]


def test_target_falls_back_to_the_best_every_mode_reached(experiment, tmp_path):
    _, _, text = write_report([experiment], 0.99, tmp_path / "out")
    assert "Target 90% (best reached by every mode (99% was not))" in text
    assert (tmp_path / "out" / "report.png").exists()


def test_time_to_target_and_choose_target_on_curves():
    def point(wall_s, avg):
        return Point(0, wall_s, 0, avg, {})
    a = Curve("async", [point(0, 0.2), point(10, 0.5), point(20, 0.8)], True)
    s = Curve("sync", [point(0, 0.2), point(30, 0.6)], False)
    assert time_to_target(a, 0.5).wall_s == 10 and time_to_target(s, 0.7) is None
    assert time_to_target(a, 0.1).wall_s == 0          # SFT already there
    assert choose_target([a, s], 0.5) == (0.5, "target")
    assert choose_target([a, s], 0.9)[0] == pytest.approx(0.6)
    flat = Curve("sync", [point(0, 0.2), point(30, 0.2)], True)
    assert choose_target([a, flat], 0.9)[0] is None     # nothing to time: no progress


def test_an_incomplete_run_is_flagged_and_bad_arguments_are_named(tmp_path, experiment):
    exp = tmp_path / "exp2"
    write_eval(exp / "eval_sft", {"spatial": 0.1, "object": 0.1})
    write_rl(exp / "rl_async", "async", [(5, 60.0, 1000, 0.2, 0.2)], complete=False)
    _, _, text = write_report([experiment, exp], 0.9, None)
    assert "## exp2" in text and "Incomplete RL run(s), budget not spent: async." in text
    assert (tmp_path / "report.png").exists()    # several dirs: their common parent
    with pytest.raises(ValueError, match="--target 2"):
        parse_args([str(exp), "--target", "2"])
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_experiment(tmp_path / "nothing")


def test_pushcut_report_command_prints_the_table(experiment):
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "report", str(experiment),
                           "--target", "0.9"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| **average** | 25% | 95% | 90% | +70 | +65 |" in done.stdout
    assert (experiment / "report.md").exists()


def test_results_json_has_the_figures_intervals_and_paired_test(experiment):
    write_report([experiment], 0.9, None)
    record = json.loads((experiment / "results.json").read_text())
    assert record["sft"]["average"] == pytest.approx(0.25)
    assert record["sft"]["families"] == {"spatial": 0.3, "object": 0.2}
    assert record["rl_async"]["average"] == pytest.approx(0.95)
    assert record["rl_wall_s"] == {"async": 900.0, "sync": 1500.0}
    assert record["time_to_target_s"] == {"async": 600.0, "sync": 1500.0}
    # 40 paired episodes: SFT wins 3+3+2+2, the final async policy 10+10+9+9 of them
    paired = record["rl_async"]["paired"]
    assert (paired["pairs"], paired["gained"], paired["lost"]) == (40, 28, 0)
    assert paired["z"] > 5 and paired["p"] < 1e-6


def test_compare_pairs_two_evaluations_and_refuses_other_states(tmp_path, capsys):
    from deploy.results import compare_main
    write_eval(tmp_path / "before", {"spatial": 0.3, "object": 0.2})
    write_eval(tmp_path / "after", {"spatial": 0.8, "object": 0.5})
    assert compare_main(None, [str(tmp_path / "before"), str(tmp_path / "after")]) == 0
    out = capsys.readouterr().out
    assert "| average | 25.0 % | 65.0 % |" in out
    assert "paired over 40 episodes: 16 gained, 0 lost" in out
    record = json.loads((tmp_path / "after" / "eval.json").read_text())
    for task in record["temperatures"]["greedy"]["per_task"].values():
        task["init_state_ids"] = [99] * 10
    (tmp_path / "after" / "eval.json").write_text(json.dumps(record))
    assert compare_main(None, [str(tmp_path / "before"), str(tmp_path / "after")]) == 2
    assert "different initial states" in capsys.readouterr().out
    assert compare_main(None, [str(tmp_path / "before")]) == 2


def test_per_task_table_marks_a_task_learned_then_lost(tmp_path):
    exp = tmp_path / "exp"
    write_eval(exp / "eval_sft", {"spatial": 0.3, "object": 0.2})
    # object peaks at version 20 and falls back by 40 points; spatial falls by 10 only
    write_rl(exp / "rl_async", "async", [(10, 300.0, 20_000, 0.5, 0.5),
                                         (20, 600.0, 40_000, 0.9, 0.9),
                                         (30, 900.0, 60_000, 0.8, 0.5)])
    _, _, text = write_report([exp], 0.9, None)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ")}
    # task: SFT, best (version), end, lost?
    assert rows["object/0"] == ["20%", "90% (v20)", "50%", "**lost**"]
    assert rows["spatial/1"] == ["30%", "90% (v20)", "80%", ""]
