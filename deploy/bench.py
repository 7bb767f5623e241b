"""``pushcut bench <name>``: throughput benchmarks, each against its stage's own limit
measured in the same run. Each benchmark prints its figures and returns them as a dict; the
machine's calibration (common/calibration.py: cores, one-thread matmul GFLOPS) is printed
first and kept beside them, so that a figure can be mapped to another machine."""
from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

from common.calibration import calibrate
from common.config import PushcutConfig

BENCHMARKS = {
    "ingest": ("learner.bench.ingest:run", "trajectory ingest vs raw durable LMDB writes"),
    "ingest-bad": ("learner.bench.ingest_bad:run",
                   "valid stream's ack latency alone vs beside a sender of 12 MB bad records"),
    "env": ("actors.bench.env:run", "tabletop env steps/s, rendered and not, 1 and 2 processes"),
    "actor": ("actors.bench.actor:run",
              "full actor env steps/s vs the slower of bare env stepping and bare inference"),
    "learner": ("learner.bench.update:run", "learner tokens/s for one RL micro-batch"),
    "update": ("learner.bench.phases:run",
               "one configured learner update, phase by phase, vs the bare step and the calibration"),
    "policy": ("actors.bench.policy:run", "policy action-chunks/s and memory by batch size"),
    "libero": ("actors.bench.libero:run", "LIBERO worker step/reset time per core and RSS vs LIBERO's own env"),
    "pipeline": ("deploy.bench_pipeline:run",
                 "store + learner + actors in async and sync mode vs each stage alone"),
}


def main(cfg: PushcutConfig, args: list[str]) -> int:
    if len(args) != 1 or args[0] not in BENCHMARKS:
        names = "\n".join(f"  {k:<10} {v[1]}" for k, v in BENCHMARKS.items())
        print(f"usage: pushcut bench <name> [key=value ...]\n\nbenchmarks:\n{names}",
              file=sys.stderr)
        return 2
    module, func = BENCHMARKS[args[0]][0].split(":")
    calibration = calibrate()      # before the benchmark, while the cores are quiet
    print(f"machine: {calibration.line()}", flush=True)
    bench = getattr(importlib.import_module(module), func)
    # a benchmark that rates itself against the machine takes the calibration too
    takes = "calibration" in inspect.signature(bench).parameters
    figures = {**(bench(cfg, calibration=calibration) if takes else bench(cfg)),
               "calibration": calibration.to_dict()}
    if cfg.bench.out:
        Path(cfg.bench.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.bench.out).write_text(json.dumps(figures, indent=2))
    return 0
