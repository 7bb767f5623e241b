"""``pushcut bench libero``: LIBERO env worker step and reset time per core, and its memory,
against LIBERO's own env as OpenVLA's evaluation runs it, measured in the same run.

In: ``cfg.env`` (LIBERO; the task is ``env.tasks[0]`` or ``<env.suite>/0``; wrist camera
as configured), ``cfg.model.chunk_size`` C. Image sizes: ``env.image_size`` and 128 px.
Out: a printed table and a dict of figures per size:

- ours (a real subprocess env worker, ``actors/env_workers.py``, hosting a LiberoEnv):
  wall and CPU ms per step with an observation after every step, after every C-th step
  (what a chunked policy needs) and never; soft reset time; the worker's RSS.
- limit (LIBERO's ``OffScreenRenderEnv`` in its own process, camera observations on every
  step, hard resets: the standalone env as OpenVLA(-OFT)'s eval builds it): the same figures.

CPU ms count every thread of the process (llvmpipe's included), so they stay meaningful on
a shared machine; ``LP_NUM_THREADS=1`` pins llvmpipe to one thread, so "per core" is literal.
Random actions in [-1, 1]; each mode steps ``STEPS`` times from a fresh reset.

Run: ``pushcut bench libero`` (or ``python -m actors.bench.libero [key=value ...]``).
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import sys
import time
from dataclasses import replace

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

STEPS = 32
RESETS = 3
SIZES = (224, 128)


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _timed(proc: psutil.Process, fn, n: int) -> tuple[float, float]:
    """Run ``fn(i)`` for i < n -> (wall ms, CPU ms of ``proc``) per call."""
    wall, cpu = time.perf_counter(), _cpu_s(proc)
    for i in range(n):
        fn(i)
    return ((time.perf_counter() - wall) * 1e3 / n, (_cpu_s(proc) - cpu) * 1e3 / n)


def measure_worker(env_cfg, task_id: str, chunk_size: int) -> dict[str, float]:
    """Figures of one subprocess env worker hosting a LiberoEnv."""
    from actors.env_workers import SubprocessWorker
    rng = np.random.default_rng(0)
    worker = SubprocessWorker(env_cfg, seed=0)
    try:
        proc = psutil.Process(worker.proc.pid)
        t0 = time.perf_counter()
        worker.reset(task_id, 0)
        out = {"build_s": time.perf_counter() - t0}
        wall, cpu = _timed(proc, lambda i: worker.reset(task_id, 1 + i), RESETS)
        out.update(reset_s=wall / 1e3, reset_cpu_s=cpu / 1e3)
        for mode, every in (("every_step", 1), ("every_C", chunk_size), ("none", 0)):
            worker.reset(task_id, 0)
            wall, cpu = _timed(proc, lambda i: worker.step(
                rng.uniform(-1, 1, 7), render=every > 0 and (i + 1) % every == 0), STEPS)
            out.update({f"{mode}_ms": wall, f"{mode}_cpu_ms": cpu})
        out["rss_gb"] = proc.memory_info().rss / 1e9
        return out
    finally:
        worker.close()


def _limit_child(task_id: str, size: int, wrist: bool, queue) -> None:
    from actors.envs.libero import _prepare_libero_import, parse_task_id
    _prepare_libero_import()
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv
    suite, index = parse_task_id(task_id)
    with contextlib.redirect_stdout(io.StringIO()):   # libero prints its task order
        bench = benchmark.get_benchmark_dict()[suite]()
    task = bench.get_task(index)
    states = bench.get_task_init_states(index)
    cams = ["agentview", "robot0_eye_in_hand"] if wrist else ["agentview"]
    env = OffScreenRenderEnv(bddl_file_name=os.path.join(get_libero_path("bddl_files"),
                             task.problem_folder, task.bddl_file), camera_names=cams,
                             camera_heights=size, camera_widths=size)
    proc, rng = psutil.Process(), np.random.default_rng(0)

    def reset(i):
        env.reset()
        env.set_init_state(states[i])

    reset(0)
    wall, cpu = _timed(proc, lambda i: reset(1 + i), RESETS)
    out = {"reset_s": wall / 1e3, "reset_cpu_s": cpu / 1e3}
    reset(0)
    wall, cpu = _timed(proc, lambda i: env.step(rng.uniform(-1, 1, 7)), STEPS)
    out.update(every_step_ms=wall, every_step_cpu_ms=cpu, rss_gb=proc.memory_info().rss / 1e9)
    env.close()
    queue.put(out)


def measure_limit(task_id: str, size: int, wrist: bool) -> dict[str, float]:
    """Figures of LIBERO's own env in a fresh process (spawn)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_limit_child, args=(task_id, size, wrist, queue))
    child.start()
    try:
        return queue.get(timeout=1800)
    finally:
        child.join(60)


def _table(figures: dict[str, dict], chunk_size: int) -> Table:
    table = Table(title=f"LIBERO, ms per control step (wall, and CPU = per core); C={chunk_size}")
    for col in ("px", "env", "ms", "obs every step", "every C", "never", "reset s", "RSS GB"):
        table.add_column(col, justify="right")
    for size, f in figures.items():
        for name, fig in (("worker", f["ours"]), ("LIBERO", f["limit"])):
            for kind, suffix in (("wall", "_ms"), ("CPU", "_cpu_ms")):
                cells = [f"{fig[m + suffix]:.0f}" if m + suffix in fig else "-"
                         for m in ("every_step", "every_C", "none")]
                reset = fig["reset_s" if kind == "wall" else "reset_cpu_s"]
                table.add_row(str(size), name, kind, *cells, f"{reset:.2f}",
                              f"{fig['rss_gb']:.2f}" if kind == "wall" else "")
    return table


def run(cfg) -> dict:
    if cfg.env.name != "libero":   # `pushcut bench libero` without env=libero
        from common.config import load_config
        cfg = replace(cfg, env=load_config(["env=libero"]).env)
    os.environ.setdefault("LP_NUM_THREADS", "1")   # llvmpipe on one core: "per core" figures
    task_id = cfg.env.tasks[0] if cfg.env.tasks else f"{cfg.env.suite}/0"
    chunk = cfg.model.chunk_size
    console = Console()
    figures: dict = {"task_id": task_id, "wrist_camera": cfg.env.wrist_camera,
                     "lp_num_threads": os.environ["LP_NUM_THREADS"], "sizes": {}}
    for size in dict.fromkeys((cfg.env.image_size, *SIZES[1:])):
        env_cfg = replace(cfg.env, image_size=size, render_size=None, max_steps=None)
        with console.status(f"LIBERO {task_id} at {size} px: subprocess worker"):
            ours = measure_worker(env_cfg, task_id, chunk)
        with console.status(f"LIBERO {task_id} at {size} px: LIBERO's own env"):
            limit = measure_limit(task_id, size, cfg.env.wrist_camera)
        ours["speedup_every_C_vs_limit"] = limit["every_step_ms"] / ours["every_C_ms"]
        ours["speedup_every_C_vs_limit_cpu"] = (limit["every_step_cpu_ms"]
                                                / ours["every_C_cpu_ms"])
        figures["sizes"][size] = {"ours": ours, "limit": limit}
    console.print(_table(figures["sizes"], chunk))
    for size, f in figures["sizes"].items():
        o, lim = f["ours"], f["limit"]
        console.print(f"{size} px: an observation every C={chunk} steps gives "
                      f"{o['speedup_every_C_vs_limit']:.1f}x (CPU: "
                      f"{o['speedup_every_C_vs_limit_cpu']:.1f}x) the step rate of LIBERO's own "
                      f"env; soft reset {o['reset_s']:.2f} s vs hard {lim['reset_s']:.2f} s; "
                      f"worker built in {o['build_s']:.1f} s", soft_wrap=True)
    return figures


if __name__ == "__main__":
    from common.config import load_config
    run(load_config(["env=libero", *sys.argv[1:]]))
