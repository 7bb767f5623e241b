"""``pushcut report RUN_DIR...``: learning curves and tables from experiment directories.

In: one or more directories made by ``pushcut experiment`` (deploy/experiment.py):
``eval_sft/eval.json`` (the SFT policy), ``rl_<mode>/snapshots/v<N>/snapshot.json``
(policy_version, wall_s, env_steps) with ``rl_<mode>/evals/v<N>/eval.json`` (its held-out
success), ``experiment.json`` (stage wall times). A plain ``pushcut run`` directory with
``snapshots/`` and ``evals/`` works too (one mode). Success is the greedy held-out success.

Out, in ``--out DIR`` (default: the RUN_DIR, or the common parent of several):
``report.png``, two panels (held-out success against RL wall time and against env steps;
async and sync on the same axes, the SFT level dashed) and ``report.md``: per experiment, a
table per family and on average (SFT, SFT + RL async, SFT + RL sync) and one of wall time,
env steps and time to reach the target success, async against sync. The tables are printed.

    pushcut report runs/exp_onedemo runs/exp_fulldemo --target 0.9

Target (``--target``, default 0.9): the wall time to reach it is that of the first evaluated
snapshot at or above it (snapshots are the curve's resolution). When a mode never reaches
it, the highest success that every mode reached is used instead, and the table says so.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.calibration import Calibration
from common.config.schema import MODES, PushcutConfig
from deploy.results import time_to_target, write_results
from learner.snapshots import list_snapshots, read_snapshot_info

DEFAULT_TARGET = 0.9


@dataclass
class Point:
    """The held-out success of one policy, where the run stood when it was saved."""
    policy_version: int
    wall_s: float
    env_steps: int
    average: float
    per_family: dict[str, float]
    ci95: list[float] | None = None
    family_ci95: dict[str, list[float]] = field(default_factory=dict)
    outcomes: dict[str, list[int]] = field(default_factory=dict)   # task -> per episode
    per_task: dict[str, float] = field(default_factory=dict)
    env_steps_trained: int = 0   # of env_steps, those in groups the learner trained on

    @property
    def trained_share(self) -> float | None:
        """The share of the generated env steps that were trained on (None: unknown)."""
        return self.env_steps_trained / self.env_steps if self.env_steps else None


@dataclass
class Curve:
    mode: str
    points: list[Point]          # the SFT policy at (0 s, 0 steps) first, if evaluated
    complete: bool               # its last snapshot was written when the budget ran out

    @property
    def final(self) -> Point | None:
        return self.points[-1] if self.points else None

    @property
    def best(self) -> float:
        return max((p.average for p in self.points), default=math.nan)


@dataclass
class ExperimentResult:
    path: Path
    name: str
    sft: Point | None
    curves: dict[str, Curve] = field(default_factory=dict)
    stage_wall_s: dict[str, float] = field(default_factory=dict)
    calibration: list[dict] = field(default_factory=list)   # each start's machine


# ---------------------------------------------------------------- reading
def greedy_summary(results: dict) -> dict:
    """eval.json -> the summary at temperature 0 (else the first one evaluated)."""
    temps = results["temperatures"]
    return temps.get("greedy") or next(iter(temps.values()))


def read_eval(path: Path) -> tuple | None:
    """``<dir>/eval.json`` -> (average, per_family, ci95, family_ci95, outcomes per task,
    success per task), the last four empty for an eval.json written without them; None if
    not evaluated."""
    file = path / "eval.json"
    if not file.exists():
        return None
    s = greedy_summary(json.loads(file.read_text()))
    return (float(s["average"]), {k: float(v) for k, v in s["per_family"].items()},
            s.get("ci95"), s.get("family_ci95", {}),
            {t: v["outcomes"] for t, v in s["per_task"].items() if "outcomes" in v},
            {t: float(v["success_rate"]) for t, v in s.get("per_task", {}).items()})


def read_curve(rl: Path, mode: str, sft: Point | None) -> Curve:
    """The evaluated snapshots of one RL run directory, SFT first."""
    points = [sft] if sft is not None else []
    snaps = list_snapshots(rl / "snapshots")
    for snap in snaps:
        found = read_eval(rl / "evals" / snap.name)
        if found is None:
            continue
        info = read_snapshot_info(snap)
        # env_steps counts the actors' heartbeats; without heartbeats, what was trained on
        steps = info.get("env_steps") or info.get("env_steps_trained") or 0
        points.append(Point(int(info["policy_version"]), float(info["wall_s"]), int(steps),
                            *found, env_steps_trained=int(info.get("env_steps_trained", 0))))
    complete = bool(snaps) and bool(read_snapshot_info(snaps[-1]).get("final"))
    return Curve(mode, points, complete)


def _mode_dirs(path: Path) -> dict[str, Path]:
    if (path / "snapshots").is_dir():              # a plain `pushcut run` directory
        snaps = list_snapshots(path / "snapshots")
        mode = read_snapshot_info(snaps[-1]).get("mode", "async") if snaps else "async"
        return {mode: path}
    return {m: path / f"rl_{m}" for m in MODES if (path / f"rl_{m}").is_dir()}


def load_experiment(path: str | Path) -> ExperimentResult:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    record = json.loads((path / "experiment.json").read_text()) \
        if (path / "experiment.json").exists() else {}
    found = read_eval(path / "eval_sft")
    sft = Point(0, 0.0, 0, *found) if found is not None else None
    result = ExperimentResult(path, record.get("name", path.name), sft, stage_wall_s={
        k: float(v["wall_s"]) for k, v in record.get("stages", {}).items() if "wall_s" in v},
        calibration=record.get("calibration", []))
    for mode, rl in _mode_dirs(path).items():
        result.curves[mode] = read_curve(rl, mode, sft)
    if sft is None and not any(c.points for c in result.curves.values()):
        raise FileNotFoundError(f"{path}: neither eval_sft/eval.json nor evaluated snapshots "
                                "(is it a `pushcut experiment` directory?)")
    return result


# ---------------------------------------------------------------- figures
def choose_target(curves: list[Curve], wanted: float) -> tuple[float | None, str]:
    """(target, how it was chosen): ``wanted`` if every curve reaches it, else the highest
    success every curve reached; None when that is no better than where the curves start
    (there is no time to compare)."""
    with_points = [c for c in curves if c.points]
    if all(c.best >= wanted - 1e-9 for c in with_points):
        return wanted, "target"
    common = min(c.best for c in with_points)
    if common <= max(c.points[0].average for c in with_points) + 1e-9:
        return None, f"{100 * wanted:.0f}% not reached, and no mode rose above its start"
    return common, f"best reached by every mode ({100 * wanted:.0f}% was not)"


def pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.0f}%"


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def family_rows(result: ExperimentResult) -> list[list[str]]:
    """Rows (family..., average) x (SFT, SFT+RL per mode, gain per mode in points)."""
    modes = list(result.curves)
    finals = {m: result.curves[m].final for m in modes}
    families = sorted({f for p in [result.sft, *finals.values()] if p for f in p.per_family})
    rows = []
    for fam in families + ["average"]:
        def rate(p: Point | None) -> float | None:
            if p is None:
                return None
            return p.average if fam == "average" else p.per_family.get(fam)
        sft = rate(result.sft)
        cells = [pct(sft)] + [pct(rate(finals[m])) for m in modes]
        gains = [_num(None if sft is None or rate(finals[m]) is None
                      else 100 * (rate(finals[m]) - sft), "+.0f") for m in modes]
        rows.append([f"**{fam}**" if fam == "average" else fam, *cells, *gains])
    return rows


LOST = 0.2   # a task whose end is this far below its best snapshot was learned, then lost


def task_rows(result: ExperimentResult, mode: str) -> list[list[str]]:
    """Per task of one mode: SFT, the best snapshot (and its version), the end, and whether
    the end lies ``LOST`` or more below the best (forgetting, which the family averages
    hide: one task can fall while its siblings rise)."""
    curve = result.curves[mode]
    snaps = [p for p in curve.points if p is not result.sft]
    tasks = sorted({t for p in snaps for t in p.per_task})
    rows = []
    for task in tasks:
        best = max(snaps, key=lambda p: p.per_task.get(task, -1.0))
        top, end = best.per_task.get(task), curve.final.per_task.get(task)
        sft = result.sft.per_task.get(task) if result.sft else None
        lost = top is not None and end is not None and end <= top - LOST
        rows.append([task, pct(sft), f"{pct(top)} (v{best.policy_version})", pct(end),
                     "**lost**" if lost else ""])
    return rows


def speed_rows(result: ExperimentResult, target: float | None) -> list[list[str]]:
    """Rows of wall time, versions, env steps, time/steps to target: async, sync, ratio."""
    curves = [result.curves[m] for m in MODES if m in result.curves]
    finals = [c.final for c in curves]
    hits = [time_to_target(c, target) for c in curves] if target is not None else []

    def ratio(values: list[float | None]) -> str:
        if len(values) == 2 and None not in values and values[1]:
            return f"{values[0] / values[1]:.2f}"
        return "–"

    def row(label: str, values: list[float | None], spec: str) -> list[str]:
        return [label, *[_num(v, spec) for v in values], ratio(values)]

    rows = [
        row("RL wall time (s)", [f.wall_s if f else None for f in finals], ".0f"),
        row("policy versions", [f.policy_version if f else None for f in finals], "d"),
        row("env steps", [f.env_steps if f else None for f in finals], ",d"),
        row("share of env steps trained on", [f.trained_share if f else None for f in finals],
            ".2f"),
    ]
    if hits:
        rows += [
            row(f"wall time to {pct(target)} (s)", [h.wall_s if h else None for h in hits],
                ".0f"),
            row(f"env steps to {pct(target)}", [h.env_steps if h else None for h in hits],
                ",d"),
        ]
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def experiment_markdown(result: ExperimentResult, wanted: float) -> str:
    modes = list(result.curves)
    target, how = choose_target(list(result.curves.values()), wanted)
    parts = [f"## {result.name} (`{result.path}`)", "",
             "Held-out success (greedy), SFT and at the end of RL:", "",
             markdown_table(["family", "SFT", *[f"SFT + RL {m}" for m in modes],
                             *[f"gain {m} (points)" for m in modes]], family_rows(result))]
    present = [m for m in MODES if m in result.curves]
    parts += ["", f"Target {pct(target)} ({how}):" if target is not None else f"{how}:", "",
              markdown_table(["", *present, " / ".join(present) if len(present) == 2
                              else "ratio"], speed_rows(result, target))]
    for mode in modes:
        rows = task_rows(result, mode)
        if rows:
            parts += ["", f"Per task, {mode} (lost: the end {100 * LOST:.0f} points or more "
                          "below the best snapshot):", "",
                      markdown_table(["task", "SFT", "best (version)", "end", ""], rows)]
    incomplete = [m for m, c in result.curves.items() if not c.complete]
    if incomplete:
        parts += ["", f"Incomplete RL run(s), budget not spent: {', '.join(incomplete)}."]
    if result.stage_wall_s:
        walls = ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_wall_s.items()
                          if not k.startswith("eval_") or k == "eval_sft")
        total = sum(result.stage_wall_s.values())
        parts += ["", f"Stage wall times: {walls}; all stages {total:.0f} s."]
    if result.calibration:
        machines = "; ".join(dict.fromkeys(Calibration(**c).line()
                                           for c in result.calibration))
        parts += ["", f"Machine: {machines}."]
    return "\n".join(parts) + "\n"


def plot(results: list[ExperimentResult], out_png: Path, target: float | None = None) -> None:
    """Success vs RL wall time (left) and vs env steps (right); a colour per experiment,
    solid async, dash-dot sync, dashed SFT level."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"async": "-o", "sync": "-.s"}
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, result in enumerate(results):
        color = f"C{i}"
        for mode, curve in result.curves.items():
            if not curve.points:
                continue
            y = [100 * p.average for p in curve.points]
            label = f"{result.name} {mode}"
            ax_t.plot([p.wall_s / 60 for p in curve.points], y, styles.get(mode, "-x"),
                      color=color, label=label, markersize=4)
            ax_s.plot([p.env_steps for p in curve.points], y, styles.get(mode, "-x"),
                      color=color, label=label, markersize=4)
        if result.sft is not None:
            for ax in (ax_t, ax_s):
                ax.axhline(100 * result.sft.average, color=color, linestyle="--",
                           linewidth=1, label=f"{result.name} SFT")
    for ax, xlabel in ((ax_t, "RL wall time (min)"), (ax_s, "env steps")):
        if target is not None:
            ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    ax_t.set_ylabel("held-out success (%)")
    ax_s.legend(fontsize=8, loc="lower right")
    fig.suptitle("pushcut: held-out success during RL (async vs sync)")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- command
def parse_args(args: list[str]) -> tuple[list[Path], float, Path | None]:
    """RUN_DIR... [--target X] [--out DIR] -> (run dirs, target, out dir or None)."""
    dirs, target, out = [], DEFAULT_TARGET, None
    it = iter(args)
    for arg in it:
        if arg in ("--target", "--out"):
            value = next(it, None)
            if value is None:
                raise ValueError(f"{arg} needs a value")
            if arg == "--out":
                out = Path(value)
            else:
                target = float(value)
                if not 0 < target <= 1:
                    raise ValueError(f"--target {value}: a success rate in (0, 1]")
        else:
            dirs.append(Path(arg))
    if not dirs:
        raise ValueError("usage: pushcut report RUN_DIR... [--target 0.9] [--out DIR]")
    return dirs, target, out


def write_report(dirs: list[Path], target: float, out: Path | None) -> tuple[Path, Path, str]:
    """-> (report.png, report.md, the markdown)."""
    results = [load_experiment(d) for d in dirs]
    out = out or (dirs[0] if len(dirs) == 1
                  else Path(os.path.commonpath([str(d.resolve()) for d in dirs])))
    out.mkdir(parents=True, exist_ok=True)
    text = "# pushcut report\n\n![learning curves](report.png)\n\n" + "\n".join(
        experiment_markdown(r, target) for r in results)
    png, md = out / "report.png", out / "report.md"
    plot(results, png, target)
    md.write_text(text)
    for result in results:
        write_results(result, target)
    return png, md, text


def main(cfg: PushcutConfig, args: list[str]) -> int:
    """``pushcut report RUN_DIR... [--target 0.9] [--out DIR]``."""
    try:
        dirs, target, out = parse_args(args)
        png, md, text = write_report(dirs, target, out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"pushcut report: {exc}")
        return 2
    print(text)
    print(f"wrote {png} and {md}")
    return 0
