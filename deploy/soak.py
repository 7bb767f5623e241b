"""``pushcut soak``: the whole system for a set time, with RSS over time for every process.

    pushcut soak 600 num_actors=2 run_dir=runs/soak       # seconds, then the usual overrides

In: the duration in seconds and the config; out: a table of RSS (MiB, each role's process
tree: env workers and FSDP ranks included), the store's size on disk and the learner's
policy_version, sampled every 10 s (or duration/20 if shorter), written to
``<run_dir>/soak.jsonl`` and summarised at the end (first, peak and last RSS per process,
growth per hour: the least-squares slope after start-up). Unless overridden, the store and
checkpoints live under ``run_dir``, so a soak never touches another run's files. The roles
run as separate OS processes under :class:`~deploy.supervisor.ProcessSupervisor`, with the
command lines ``pushcut run`` gives them (deploy/roles.py); a role that dies is restarted
and the restart is reported. Ctrl-C / SIGTERM ends the soak early (the summary covers what
was sampled); a second one hurries the roles' shutdown.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from common.process import StopSignals
from deploy.roles import local_addresses, role_commands, role_process, run_local_paths
from deploy.supervisor import ProcessSupervisor

SAMPLE_EVERY_S = 10.0


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, MiB (0 if it is gone)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def dir_size_mb(path: str) -> float:
    root = Path(path)
    if not root.exists():
        return 0.0
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20


class VersionTail:
    """The newest policy_version in ``learner.jsonl``, reading only what was appended."""

    def __init__(self, path: Path):
        self.path, self.offset, self.version = path, 0, 0

    def read(self) -> int:
        if not self.path.exists():
            return self.version
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for line in f:
                if not line.endswith(b"\n"):
                    break   # a line still being written: read it next time
                self.offset += len(line)
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("event") == "update":
                    self.version = max(self.version, int(row.get("policy_version", 0)))
        return self.version


def start_roles(cfg, overrides: list[str]) -> dict[str, ProcessSupervisor]:
    """The roles as ``pushcut run`` starts them (deploy/roles.py), each under a supervisor that
    restarts it."""
    commands = role_commands(cfg, overrides, local_addresses(cfg), range(cfg.num_actors))
    logs = Path(cfg.run_dir) / "logs"
    return {name: role_process(name, command, logs).start()
            for name, command in commands.items()}


def sample(sups: dict[str, ProcessSupervisor], store_path: str, t0: float,
           versions: VersionTail) -> dict:
    row = {"t_s": round(time.monotonic() - t0, 1), "store_mb": round(dir_size_mb(store_path), 2),
           "policy_version": versions.read()}
    for name, s in sups.items():
        s.poll()
        row[name] = round(tree_rss_mb(s.pid), 1) if s.alive else 0.0
        row[f"{name}.restarts"] = s.restarts
    return row


WARMUP_S = 60.0


def steady_rows(rows: list[dict]) -> list[dict]:
    """The samples after start-up (model loading, first allocations): from ``WARMUP_S`` or a
    quarter of the run, whichever is earlier, so growth per hour measures leaks, not loading."""
    start = min(WARMUP_S, rows[-1]["t_s"] / 4)
    return [r for r in rows if r["t_s"] >= start] or rows[-1:]


def summarise(rows: list[dict], names: list[str]) -> Table:
    """Per process: RSS at start-up and over the steady part of the run (see steady_rows)."""
    steady = steady_rows(rows)
    table = Table(title=f"soak: RSS per process tree (MiB); steady from t={steady[0]['t_s']:.0f}s")
    for col in ("process", "at start", "steady first", "peak", "last", "growth MiB/h",
                "restarts"):
        table.add_column(col, justify="right" if col != "process" else "left")
    hours = np.array([r["t_s"] for r in steady]) / 3600
    for name in [*names, "store_mb"]:
        values = [r[name] for r in steady]
        # a least-squares slope: the learner's RSS swings with each batch, end points mislead
        slope = np.polyfit(hours, values, 1)[0] if len(values) > 1 else 0.0
        restarts = str(rows[-1].get(f"{name}.restarts", "")) if name != "store_mb" else ""
        label = "store on disk" if name == "store_mb" else name
        table.add_row(label, f"{rows[0][name]:.0f}", f"{values[0]:.0f}", f"{max(values):.0f}",
                      f"{values[-1]:.0f}", f"{slope:+.0f}", restarts)
    return table


def main(cfg, args: list[str], overrides: list[str] | None = None) -> int:
    if len(args) != 1:
        print("usage: pushcut soak SECONDS [key=value ...]", file=sys.stderr)
        return 2
    duration = float(args[0])
    every = min(SAMPLE_EVERY_S, max(duration / 20, 1.0))
    out = Path(cfg.run_dir) / "soak.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    console = Console()
    overrides, store_path = run_local_paths(cfg, list(overrides or []))
    versions = VersionTail(Path(cfg.run_dir) / "learner.jsonl")
    # before the roles start: a SIGTERM must never leave them running without their soak
    signals = StopSignals().install()
    sups = start_roles(cfg, overrides)
    t0, rows = time.monotonic(), []
    try:
        with open(out, "w") as f:
            while time.monotonic() - t0 < duration:
                rows.append(sample(sups, store_path, t0, versions))
                f.write(json.dumps(rows[-1]) + "\n")
                f.flush()
                console.print(" ".join(f"{k}={v}" for k, v in rows[-1].items()
                                       if not k.endswith(".restarts")))
                if signals.stop.wait(every):  # the sampling period; Ctrl-C ends the soak
                    break
    finally:
        for s in reversed(list(sups.values())):
            s.stop(30, hurry=signals.hurry)
    if rows:
        console.print(summarise(rows, list(sups)))
        console.print(f"policy_version reached: {rows[-1]['policy_version']}; "
                      f"store on disk: {rows[-1]['store_mb']:.1f} MiB")
        console.print(f"samples written to {out}")
    return 0
