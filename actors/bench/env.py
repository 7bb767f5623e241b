"""``pushcut bench env``: env steps/s per process of a simulator (``env.name``, the tabletop
suite by default), with and without rendering, with 1 and 2 processes
(``bench.processes``), against the standalone limits measured in the same run (the tabletop
suite's bare MuJoCo physics and renders, ManiSkill's bare SAPIEN steps and renders; other
simulators report steps/s alone). A simulator with its own interpreter (ManiSkill) is
measured in that interpreter.

In: ``cfg.env`` (image size, wrist camera, tasks), ``cfg.model.chunk_size`` C,
``cfg.bench.seconds`` (split evenly over the measurements), ``cfg.bench.processes``.
Out: a printed table and a dict of figures. Every measurement runs real OS processes
(multiprocessing, spawn), started together on an event; each steps uniformly random
actions through every task in turn, resetting at episode ends (resets are counted in the
time). Modes: ``render`` (an observation after every step), ``render_every_C`` (as a
chunked policy needs), ``no_render``. Limits: bare ``mj_step`` calls (physics) and bare
renders in one process.

Run: ``pushcut bench env`` (``bench.processes=[1,2] bench.seconds=30``).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
from rich.console import Console
from rich.table import Table

from actors.envs import env_spec, make_env
from common.config.schema import EnvConfig, PushcutConfig

MODES = ("every step", "every C", "none")   # when an observation is rendered


def _render_every(mode: str, chunk_size: int) -> int:
    return {"every step": 1, "every C": chunk_size, "none": 0}[mode]


def step_loop(env, task_ids: list[str], seconds: float, render_every: int, seed: int
              ) -> tuple[int, float, float]:
    """Step ``env`` with random actions for ``seconds``; -> (steps, wall s, CPU s of this
    process, renderer threads included). ``render_every``: observe after every k-th step
    (0: never)."""
    rng = np.random.default_rng(seed)
    steps, episode, k = 0, 0, 0
    env.reset(task_ids[0], 0)
    start, cpu = time.perf_counter(), time.process_time()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):   # check the clock every 50 steps only
            k += 1
            result = env.step(rng.uniform(-1, 1, 7), render=render_every > 0 and
                              k % render_every == 0)
            steps += 1
            if result.done:
                episode += 1
                env.reset(task_ids[episode % len(task_ids)], episode)
                k = 0
    return steps, time.perf_counter() - start, time.process_time() - cpu


def _worker(env_cfg: EnvConfig, seconds: float, render_every: int, seed: int, go, out) -> None:
    env = make_env(env_cfg)
    task_ids = [t.task_id for t in env.tasks()]
    for task_id in task_ids:                  # warm up: build every scene and renderer
        env.reset(task_id, 0)
    out.put("ready")
    go.wait()
    out.put(step_loop(env, task_ids, seconds, render_every, seed))
    env.close()


def measure(env_cfg: EnvConfig, processes: int, seconds: float, render_every: int) -> dict:
    """``processes`` spawned workers stepping concurrently -> steps/s per process (wall),
    in total, and per CPU-second (a per-core figure that other load does not dilute)."""
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(env_cfg, seconds, render_every, i, go, out))
             for i in range(processes)]
    for p in procs:
        p.start()
    try:
        for _ in procs:   # start the clocks together, once every worker has built its env
            # a ManiSkill worker imports torch and builds SAPIEN scenes: minutes when busy
            if out.get(timeout=900) != "ready":
                raise RuntimeError("bench env: a worker failed before it was ready")
        go.set()
        results = [out.get(timeout=seconds + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    rates = [steps / wall for steps, wall, _ in results]
    return {"per_process": float(np.mean(rates)), "total": float(np.sum(rates)),
            "per_cpu_s": float(sum(r[0] for r in results) / sum(r[2] for r in results))}


def limits(env_cfg: EnvConfig, seconds: float) -> dict | None:
    """Standalone limits in this process, per CPU-second, over every scene of the selected
    tasks: bare mj_step control periods (random actuator targets, no env logic) and bare
    renders. An env with ``bare_rates(seconds)`` measures its own (ManiSkill: bare SAPIEN
    steps and renders); None for another simulator."""
    env = make_env(env_cfg)
    if hasattr(env, "bare_rates"):      # a simulator that measures its own bare limits
        try:
            return env.bare_rates(seconds)
        finally:
            env.close()
    import mujoco   # the tabletop suite's own (a simulator's interpreter may lack it)

    from actors.envs.tabletop import TabletopEnv
    from actors.envs.tabletop.env import action_to_ctrl
    from actors.envs.tabletop.scene import SUBSTEPS

    if not isinstance(env, TabletopEnv):
        env.close()
        return None
    rng = np.random.default_rng(0)
    families = {t.family: t.task_id for t in env.tasks()}
    cost = {"physics": 0.0, "render": 0.0}
    try:
        for task_id in families.values():
            env.reset(task_id, 0)
            m, d, sim = env.sim.model, env.sim.data, env.sim

            def physics():
                d.ctrl[:] = action_to_ctrl(rng.uniform(-1, 1, 7), sim.gripper_qpos())
                mujoco.mj_step(m, d, nstep=SUBSTEPS)

            for name, fn in (("physics", physics), ("render", sim.render)):
                n, start = 0, time.process_time()
                while time.process_time() - start < seconds / len(families):
                    fn()
                    n += 1
                cost[name] += (time.process_time() - start) / n / len(families)
    finally:
        env.close()
    return {name: 1.0 / c for name, c in cost.items()}


def run(cfg: PushcutConfig) -> dict:
    spec = env_spec(cfg.env.name)   # ValueError naming the registered envs
    procs = sorted(set(int(p) for p in cfg.bench.processes))
    if not procs or procs[0] < 1:
        raise ValueError(f"bench.processes must be positive counts, got {cfg.bench.processes}")
    share = max(cfg.bench.seconds / (len(procs) * len(MODES) + 1), 1.0)
    there = spec.elsewhere()
    if there:   # a simulator in its own interpreter is measured there, the same way
        python, environ = there
        job = json.dumps({"env": asdict(cfg.env), "processes": procs, "seconds": share,
                          "chunk_size": cfg.model.chunk_size})
        out = subprocess.run([python, "-m", "actors.bench.env", job], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, **environ})
        if out.returncode != 0:
            raise RuntimeError(f"bench env: the {cfg.env.name} interpreter failed "
                               f"(exit {out.returncode})")
        figures = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        figures = measure_all(cfg.env, procs, share, cfg.model.chunk_size)
    _print(figures)
    return figures


def measure_all(env_cfg: EnvConfig, procs: list[int], share: float, chunk_size: int) -> dict:
    """Every (processes, mode) measurement and the limits, ``share`` seconds each."""
    spec = env_spec(env_cfg.name)
    figures: dict = {"env": env_cfg.name, "limits_per_cpu_s": limits(env_cfg, share),
                     "image_size": spec.image_size(env_cfg), "cameras": spec.views(env_cfg),
                     "chunk_size": chunk_size, "seconds_each": share, "runs": []}
    for n in procs:
        for mode in MODES:
            r = measure(env_cfg, n, share, _render_every(mode, chunk_size))
            figures["runs"].append({"processes": n, "render": mode, **r})
    return figures


def _print(fig: dict) -> None:
    lim = fig["limits_per_cpu_s"]
    # the cost of a step with nothing but the simulator: physics, plus the renders
    bound = {mode: 1 / (1 / lim["physics"] + (1 / (lim["render"] * k) if k else 0.0))
             for mode, k in ((m, _render_every(m, fig["chunk_size"])) for m in MODES)
             } if lim else {}
    single = {r["render"]: r["per_process"] for r in fig["runs"] if r["processes"] == 1}
    bare = (f"; bare sim per CPU-s: physics {lim['physics']:.0f}, render {lim['render']:.0f}"
            if lim else "")
    table = Table(title=f"{fig['env']} env steps/s ({fig['image_size']}x{fig['image_size']}, "
                        f"{fig['cameras']} camera(s), C={fig['chunk_size']}){bare}")
    for col in ("procs", "render", "per process", "total", "per CPU-s", "vs bare sim",
                "vs 1 proc"):
        table.add_column(col, justify="right")
    for r in fig["runs"]:
        vs_one = r["per_process"] / single[r["render"]] if r["render"] in single else np.nan
        vs_bare = f"{r['per_cpu_s'] / bound[r['render']]:.2f}" if bound else "-"
        table.add_row(str(r["processes"]), r["render"], f"{r['per_process']:.0f}",
                      f"{r['total']:.0f}", f"{r['per_cpu_s']:.0f}", vs_bare, f"{vs_one:.2f}")
    Console().print(table)


if __name__ == "__main__":   # the measurement in a simulator's own interpreter (see run)
    _job = json.loads(sys.argv[1])
    from common.config.envs import env_config
    print(json.dumps(measure_all(env_config(_job["env"]), _job["processes"], _job["seconds"],
                                 _job["chunk_size"])))
