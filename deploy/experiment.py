"""``pushcut experiment NAME``: one experiment of configs/experiment/NAME.yaml, end to end.

In: the experiment config (``experiment=NAME``, ``# @package _global_``) plus any overrides.
Stages, each an existing ``pushcut`` command started as a subprocess with its own log, and
each skipped when its output already exists, so that running the command again resumes:

=================  =========================================  ==============================
stage              command                                    output (skip if present)
=================  =========================================  ==============================
demos              ``pushcut demos`` (or reuse ``demos.out``)  ``<demos.out>/index.jsonl``
sft                ``pushcut sft``                             ``sft/summary.json``
eval_sft           ``pushcut eval sft/final``                  ``eval_sft/eval.json``
rl_async           ``pushcut run mode=async``                  a final snapshot, budget spent
eval_async_vN      ``pushcut eval rl_async/snapshots/vN``      ``rl_async/evals/vN/eval.json``
rl_sync, eval_...  the same RL with ``mode=sync``              ``rl_sync/...``
=================  =========================================  ==============================

Out, under ``run_dir``: the directories above, ``logs/<stage>.log``, ``experiment.json``
(per stage: status, wall time, command, log) and, once every stage is done, what
``pushcut report`` (deploy/report.py) writes: ``results.json``, ``report.md``, ``report.png``.
The RL budget is ``learner.max_wall_s`` / ``learner.max_versions`` (one of them is required),
curves come from the snapshots every ``learner.snapshot_every`` versions (required >= 1). An
interrupted RL stage (Ctrl-C; a second one hurries the stage's shutdown) resumes from its
last checkpoint on the next run.

    pushcut experiment onedemo
    pushcut experiment fulldemo demos.out=runs/demos50 learner.max_wall_s=1800
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from common.calibration import calibrate
from common.config.schema import MODES, PushcutConfig
from common.process import StopSignals
from deploy.evaluator import eval_dir
from deploy.roles import RoleCommand, config_overrides, literal as _literal, role_process
from learner.snapshots import budget_spent, list_snapshots

RECORD = "experiment.json"


@dataclass
class Stage:
    """One step of the experiment: ``pushcut <role> <args>``, done when ``done()``."""
    name: str
    role: str
    args: list[str]
    done: Callable[[], bool]
    output: Path
    before: Callable[[], None] = field(default=lambda: None)  # run just before it starts
    after: Callable[[], None] = field(default=lambda: None)   # run once it exited with 0


def rl_dir(run_dir: Path, mode: str) -> Path:
    return run_dir / f"rl_{mode}"


def _eval_done(out: Path) -> Callable[[], bool]:
    return lambda: (out / "eval.json").exists()


def _demos_stage(cfg: PushcutConfig, common: list[str]) -> Stage:
    """Demos go to ``<demos.out>.partial`` and are renamed when complete, so an existing
    ``demos.out`` is always a whole dataset (made here or given to be reused)."""
    out = Path(cfg.demos.out).resolve()
    partial = out.with_name(out.name + ".partial")
    return Stage(
        "demos", "demos",
        # the expert gets the tasks' own step limits: env.max_steps is meant for RL episodes
        [*common, f"++demos.out={_literal(str(partial))}", "++env.max_steps=null"],
        done=lambda: (out / "index.jsonl").exists(), output=out,
        before=lambda: shutil.rmtree(partial, ignore_errors=True),
        after=lambda: partial.rename(out))


def stages(cfg: PushcutConfig, run_dir: Path) -> Iterator[Stage]:
    """The experiment's stages in order. A generator: the snapshot evaluations of an RL
    stage are listed only after that stage has run."""
    common = config_overrides(cfg)
    demos = Path(cfg.demos.out).resolve()
    sft = run_dir / "sft"
    yield _demos_stage(cfg, common)
    # the experiment evaluates separately (eval_sft), so sft's closing evaluation is off
    yield Stage("sft", "sft", [*common, f"++sft.demos={_literal(str(demos))}",
                               f"++sft.out={_literal(str(sft))}",
                               "++sft.eval_episodes_per_task=0"],
                done=lambda: (sft / "summary.json").exists(), output=sft)
    policy = sft / "final"
    out = run_dir / "eval_sft"
    yield Stage("eval_sft", "eval", [str(policy), *common, f"++eval.out={_literal(str(out))}"],
                done=_eval_done(out), output=out)
    for mode in MODES:
        rl = rl_dir(run_dir, mode)
        # the experiment evaluates the SFT policy and the snapshots itself, after RL, so
        # that evaluation takes none of RL's wall time: `pushcut run` measures nothing
        yield Stage(f"rl_{mode}", "run", [*common, f"++mode={mode}",
                                          f"++run_dir={_literal(str(rl))}",
                                          f"++model.checkpoint={_literal(str(policy))}",
                                          "++run.eval_episodes=0"],
                    done=lambda rl=rl: budget_spent(rl / "snapshots"), output=rl / "snapshots")
        snaps = list_snapshots(rl / "snapshots")
        for snap in snaps:
            out = eval_dir(rl, snap)
            # videos of the final policy only: the other snapshots are points of a curve
            videos = [] if snap == snaps[-1] else ["++eval.videos_per_task=0"]
            yield Stage(f"eval_{mode}_{snap.name}", "eval",
                        [str(snap), *common, f"++eval.out={_literal(str(out))}", *videos],
                        done=_eval_done(out), output=out)


def check_config(cfg: PushcutConfig) -> None:
    """Reject settings under which the experiment could not finish or make curves."""
    lc = cfg.learner
    if lc.max_versions is None and lc.max_wall_s is None:
        raise ValueError("the RL stages need a budget: set learner.max_wall_s or "
                         "learner.max_versions")
    if lc.snapshot_every < 1:
        raise ValueError(f"learner.snapshot_every={lc.snapshot_every}: the experiment needs "
                         "snapshots (>= 1) for its curves")
    if cfg.model.checkpoint:
        raise ValueError("model.checkpoint is set: the experiment trains its own SFT policy "
                         "(reuse demos with demos.out=DIR instead)")


class ExperimentRecord:
    """``experiment.json``: what ran, how long each stage took; rewritten after each stage."""

    def __init__(self, path: Path, name: str, overrides: list[str]):
        self.path = path
        old = json.loads(path.read_text()) if path.exists() else {}
        self.data = {"name": name, "overrides": overrides, "started_at": old.get(
            "started_at", time.time()), "stages": old.get("stages", {}),
            # every machine the experiment ran on, one entry per start (a resume may move)
            "calibration": [*old.get("calibration", []), calibrate().to_dict()]}

    def stage(self, name: str, **fields) -> None:
        self.data["stages"][name] = {**self.data["stages"].get(name, {}), **fields}
        self.data["updated_at"] = time.time()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


class StageFailed(RuntimeError):
    pass


def run_stage(stage: Stage, log_dir: Path, signals: StopSignals, progress: Progress,
              record: ExperimentRecord) -> None:
    """Start the stage's command, wait for it (Ctrl-C stops it, a second Ctrl-C hurries
    it), check its output."""
    task = progress.add_task(f"{stage.name}: pushcut {stage.role}", total=None)
    stage.before()
    child = role_process(stage.name, RoleCommand(stage.role, stage.args), log_dir,
                         max_restarts=0).start()
    record.stage(stage.name, status="running", log=str(child.log_path), argv=child.argv[2:],
                 started_at=time.time())
    t0 = time.monotonic()
    while child.alive:
        if signals.stop.wait(0.5):
            child.stop(timeout_s=180, hurry=signals.hurry)
            record.stage(stage.name, status="interrupted", wall_s=time.monotonic() - t0)
            raise StageFailed(f"interrupted during {stage.name}; run the command again to "
                              "resume")
    wall_s = time.monotonic() - t0
    if child.proc.returncode == 0:
        stage.after()
    if child.proc.returncode != 0 or not stage.done():
        why = (f"exited with {child.proc.returncode}" if child.proc.returncode
               else f"ended without its output {stage.output}")
        record.stage(stage.name, status="failed", wall_s=wall_s)
        progress.update(task, description=f"[red]{stage.name}: failed ({why})", total=1,
                        completed=1)
        raise StageFailed(f"stage {stage.name} {why}; see {child.log_path}:\n{child.tail()}")
    record.stage(stage.name, status="done", wall_s=wall_s, output=str(stage.output))
    progress.update(task, description=f"[green]{stage.name}: done ({wall_s:.0f} s)", total=1,
                    completed=1)


def run_experiment(cfg: PushcutConfig, name: str, overrides: list[str], signals: StopSignals,
                   console: Console) -> dict:
    """All stages of the experiment in ``cfg.run_dir``; -> the experiment record."""
    check_config(cfg)
    run_dir = Path(cfg.run_dir).resolve()
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    record = ExperimentRecord(run_dir / RECORD, name, overrides)
    columns = (SpinnerColumn(finished_text="•"), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for stage in stages(cfg, run_dir):
            if stage.done():
                progress.add_task(f"[dim]{stage.name}: skipped (output exists)", total=1,
                                  completed=1)
                if record.data["stages"].get(stage.name, {}).get("status") != "done":
                    record.stage(stage.name, status="reused", output=str(stage.output))
                continue
            run_stage(stage, log_dir, signals, progress, record)
    return record.data


def select_experiment(name: str | None, args: list[str], overrides: list[str]) -> tuple[str, list[str]]:
    """(experiment name, overrides selecting it) from ``NAME`` and/or ``experiment=NAME``."""
    given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")]
    if len(args) > 1 or (name and given and given[-1] != name) or not (name or given):
        raise ValueError("usage: pushcut experiment NAME [key=value ...] (NAME: a file of "
                         "configs/experiment/)")
    if name:
        return name, [f"experiment={name}", *overrides]
    return given[-1], list(overrides)


def main(cfg: PushcutConfig, args: list[str], overrides: list[str] | None = None) -> int:
    """``pushcut experiment NAME [key=value ...]``."""
    from common.config import load_config

    console = Console(stderr=True)
    try:
        name, full = select_experiment(args[0] if args else None, args, list(overrides or []))
        cfg = load_config(full)
        check_config(cfg)
    except Exception as exc:   # hydra names a missing experiment file; show just that
        console.print(f"[red]pushcut experiment: {exc}")
        return 2
    signals = StopSignals().install()
    console.print(f"[bold]pushcut experiment {name}[/]: {Path(cfg.run_dir).resolve()}")
    try:
        data = run_experiment(cfg, name, full, signals, console)
    except StageFailed as exc:
        console.print(f"[red]pushcut experiment {name}: {exc}")
        return 1
    walls = {k: round(v.get("wall_s", 0.0), 1) for k, v in data["stages"].items()}
    print("experiment done: " + json.dumps({"name": name, "run_dir": cfg.run_dir,
                                            "wall_s": walls}), flush=True)
    from deploy.report import DEFAULT_TARGET, write_report
    png, md, _ = write_report([Path(cfg.run_dir).resolve()], DEFAULT_TARGET, None)
    console.print(f"results: {Path(cfg.run_dir) / 'results.json'}, {md.name}, {png.name}; "
                  f"another target: pushcut report {cfg.run_dir} --target X")
    return 0
