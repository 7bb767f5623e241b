"""``RUN_DIR/results.json``: an experiment's figures in one machine-readable record.

In: an :class:`~deploy.report.ExperimentResult` (the SFT evaluation and the evaluated
snapshots of each RL mode) and the target success. Out: ``{"sft": {"average", "ci95",
"families", "family_ci95"}, "rl_async": {... of the final snapshot, "paired": McNemar
against SFT}, "rl_sync": {...}, "rl_wall_s": {mode: s}, "time_to_target_s": {mode: s or
null}, "target": x, "calibration": [the machine of each start]}``; written by ``pushcut
report`` (and so by ``pushcut experiment``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.stats import mcnemar

RESULTS = "results.json"
Point = Any              # deploy.report.Point (report imports this module, not back)
ExperimentResult = Any   # deploy.report.ExperimentResult


def time_to_target(curve: Any, target: float) -> Point | None:
    """The first point of a curve at or above ``target`` success, None if never reached."""
    return next((p for p in curve.points if p.average >= target - 1e-9), None)


def point_summary(point: Point) -> dict:
    return {"average": point.average, "ci95": point.ci95, "families": point.per_family,
            "family_ci95": point.family_ci95, "policy_version": point.policy_version}


def paired(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict | None:
    """McNemar over the episodes two evaluations (outcomes per task) ran on the same
    held-out states (tasks in common, episodes in order); None when they kept no outcomes."""
    tasks = sorted(set(before) & set(after))
    a = [bool(x) for t in tasks for x in before[t][:len(after[t])]]
    b = [bool(x) for t in tasks for x in after[t][:len(before[t])]]
    return mcnemar(a, b) if a else None


def results_record(result: ExperimentResult, target: float) -> dict:
    record: dict = {"name": result.name, "target": target, "calibration": result.calibration,
                    "sft": point_summary(result.sft) if result.sft else None,
                    "rl_wall_s": {}, "time_to_target_s": {}}
    for mode, curve in result.curves.items():
        final = curve.final if curve.points and curve.final is not result.sft else None
        if final is None:
            record[f"rl_{mode}"] = None
            continue
        record[f"rl_{mode}"] = {**point_summary(final), "complete": curve.complete,
                                "paired": paired(result.sft.outcomes, final.outcomes) if result.sft else None}
        record["rl_wall_s"][mode] = final.wall_s
        reached = time_to_target(curve, target)
        record["time_to_target_s"][mode] = reached.wall_s if reached else None
    return record


def write_results(result: ExperimentResult, target: float) -> Path:
    path = Path(result.path) / RESULTS
    path.write_text(json.dumps(results_record(result, target), indent=2))
    return path


def read_outcomes(path: Path) -> tuple[dict, dict[str, list[int]]]:
    """An eval directory (or its eval.json) -> (greedy summary, outcomes per task)."""
    file = path / "eval.json" if path.is_dir() else path
    temps = json.loads(file.read_text())["temperatures"]
    summary = temps.get("greedy") or next(iter(temps.values()))
    return summary, {t: v.get("outcomes", []) for t, v in summary["per_task"].items()}


def compare_text(before: Path, after: Path) -> str:
    """Both evaluations per family and on average with their intervals, and McNemar's test
    over the episodes they share (the same held-out states, in order)."""
    (a, oa), (b, ob) = read_outcomes(before), read_outcomes(after)
    if a["per_task"].keys() != b["per_task"].keys():
        raise ValueError("the two evaluations cover different tasks")
    for t in oa:
        if a["per_task"][t]["init_state_ids"][:len(ob[t])] != \
                b["per_task"][t]["init_state_ids"][:len(oa[t])]:
            raise ValueError(f"{t}: the evaluations ran on different initial states")

    def cell(s: dict, fam: str | None) -> str:
        rate = s["average"] if fam is None else s["per_family"][fam]
        ci = s.get("ci95") if fam is None else s.get("family_ci95", {}).get(fam)
        return f"{100 * rate:.1f} %" + (f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]" if ci else "")

    rows = [f"| {fam or 'average'} | {cell(a, fam)} | {cell(b, fam)} |"
            for fam in [*sorted(a["per_family"]), None]]
    test = paired(oa, ob)
    verdict = "no outcomes to pair" if test is None else (
        f"paired over {test['pairs']} episodes: {test['gained']} gained, {test['lost']} lost, "
        f"McNemar z = {test['z']:.2f}, p = {test['p']:.2g}")
    return "\n".join([f"| family | {before} | {after} |", "|---|---:|---:|", *rows, "",
                      verdict])


def compare_main(cfg, args: list[str]) -> int:
    """``pushcut compare BEFORE AFTER``: two eval directories (or eval.json files)."""
    if len(args) != 2:
        print("usage: pushcut compare BEFORE_EVAL AFTER_EVAL  (directories with eval.json)")
        return 2
    try:
        print(compare_text(Path(args[0]), Path(args[1])))
    except (OSError, ValueError, KeyError) as exc:
        print(f"pushcut compare: {exc}")
        return 2
    return 0
