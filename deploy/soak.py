"""``pushcut soak``: the whole system for a set time, with RSS over time for every process.

    pushcut soak 600 num_actors=2 run_dir=runs/soak       # seconds, then the usual overrides

In: the duration in seconds and the config; out: a table of RSS (MiB, each role's process
tree: env workers and FSDP ranks included) and the store's size on disk sampled every
``soak_every_s`` seconds, written to ``<run_dir>/soak.jsonl`` and summarised at the end (first,
peak and last RSS per process, growth per hour). The roles run as separate OS processes under
:class:`~deploy.supervisor.ProcessSupervisor`, exactly as ``pushcut run`` would start them;
a role that dies is restarted and the restart is reported.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from deploy.supervisor import ProcessSupervisor, role_argv

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


def start_roles(cfg, overrides: list[str]) -> dict[str, ProcessSupervisor]:
    logs = Path(cfg.run_dir) / "logs"
    sups = {"store": ProcessSupervisor("store", role_argv("store", overrides),
                                       log_path=str(logs / "store.log")),
            "learner": ProcessSupervisor("learner", role_argv("learner", overrides),
                                         log_path=str(logs / "learner.log"))}
    for i in range(cfg.num_actors):
        name = f"actor-{i}"
        sups[name] = ProcessSupervisor(name, role_argv("actor", [*overrides,
                                                                 f"actor.actor_id={name}"]),
                                       log_path=str(logs / f"{name}.log"))
    for s in sups.values():
        s.start()
    return sups


def sample(sups: dict[str, ProcessSupervisor], store_path: str, t0: float) -> dict:
    row = {"t_s": round(time.monotonic() - t0, 1), "store_mb": round(dir_size_mb(store_path), 2)}
    for name, s in sups.items():
        s.poll()
        row[name] = round(tree_rss_mb(s.pid), 1) if s.alive() else 0.0
        row[f"{name}.restarts"] = s.restarts
    return row


def summarise(rows: list[dict], names: list[str]) -> Table:
    table = Table(title="soak: RSS per process tree (MiB)")
    for col in ("process", "first", "peak", "last", "growth MiB/h", "restarts"):
        table.add_column(col, justify="right" if col != "process" else "left")
    hours = max((rows[-1]["t_s"] - rows[0]["t_s"]) / 3600, 1e-9)
    for name in [*names, "store_mb"]:
        values = [r[name] for r in rows]
        restarts = str(rows[-1].get(f"{name}.restarts", "")) if name != "store_mb" else ""
        label = "store on disk" if name == "store_mb" else name
        table.add_row(label, f"{values[0]:.0f}", f"{max(values):.0f}", f"{values[-1]:.0f}",
                      f"{(values[-1] - values[0]) / hours:+.0f}", restarts)
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
    sups = start_roles(cfg, list(overrides or []))
    t0, rows = time.monotonic(), []
    try:
        with open(out, "w") as f:
            while time.monotonic() - t0 < duration:
                rows.append(sample(sups, cfg.store.path, t0))
                f.write(json.dumps(rows[-1]) + "\n")
                f.flush()
                console.print(" ".join(f"{k}={v}" for k, v in rows[-1].items()
                                       if not k.endswith(".restarts")))
                time.sleep(every)  # the sampling period
    except KeyboardInterrupt:
        pass
    finally:
        for s in reversed(list(sups.values())):
            s.stop(30)
    if rows:
        console.print(summarise(rows, list(sups)))
        console.print(f"samples written to {out}")
    return 0
