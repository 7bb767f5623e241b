"""``pushcut bench actor``: env steps/s of a full actor against bare env stepping.

In: ``cfg.env``, ``cfg.model`` (the policy; fresh weights unless ``model.checkpoint``),
``cfg.actor`` (num_envs, subprocess_envs, device, torch_threads), ``cfg.algo`` (group size,
temperature), ``cfg.bench.seconds``. Out: printed figures, returned as a dict.

1. full actor: :class:`Actor` rounds — batched policy inference, chunked env stepping with
   sparse rendering, trajectory records streamed to a real ``pushcut store`` process and
   acknowledged — for ``bench.seconds`` of actor time (after a warm-up round), acks awaited
   at the end;
2. the limit, in the same run: after each actor round the SAME env workers replay the SAME
   episodes (same resets, same actions, same rendering every C steps, same lengths, the same
   number of envs in lock-step) with no policy and no streaming. Alternating the two keeps
   a shared machine's changing load from favouring either.

ratio = (1) / (2); the goal is >= 0.85.

    pushcut bench actor bench.seconds=30 actor.num_envs=8
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import deque  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from actors.actor import Actor  # noqa: E402
from actors.env_workers import make_workers  # noqa: E402
from actors.rollout import VectorRollout  # noqa: E402
from actors.scheduler import TaskScheduler  # noqa: E402
from common.wire.trajectory import Trajectory, encode  # noqa: E402
from common.transport.trajectories import TrajectorySender  # noqa: E402

GOAL = 0.85


@dataclass
class Played:
    """What one episode did, enough to replay it: actions float32 [T, C, D]."""
    task_id: str
    init_state_id: int
    actions: np.ndarray
    length: int


def replay(workers: list, episodes: list[Played]) -> int:
    """Bare env stepping: the episodes on the workers in lock-step (reset, then chunks of C
    actions rendered on their last step), no policy. -> env steps executed."""
    pending, slots, steps = deque(episodes), [None] * len(workers), 0
    while pending or any(slots):
        started = []
        for i, w in enumerate(workers):
            if slots[i] is None and pending:
                ep = pending.popleft()
                slots[i] = [ep, 0, 0]               # episode, decision, steps done
                w.start_reset(ep.task_id, ep.init_state_id)
                started.append(i)
        for i in started:
            workers[i].result()
        active = [i for i, s in enumerate(slots) if s is not None]
        for i in active:
            ep, t, done = slots[i]
            workers[i].start_chunk(ep.actions[t], ep.length - done, False)
        for i in active:
            res = workers[i].result()
            slots[i][1] += 1
            slots[i][2] += res.steps
            steps += res.steps
            if res.done or slots[i][2] >= slots[i][0].length:
                slots[i] = None
    return steps


def start_store(tmp: str) -> tuple[subprocess.Popen, str]:
    """A real ``pushcut store`` process on a free port; -> (process, ingest address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with open(Path(tmp) / "store.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "store",
                                 f"store.path={tmp}/store", f"store.ingest_address={address}",
                                 "store.log_every_s=60"], stdout=log, stderr=subprocess.STDOUT)
    return proc, address


class Recorder:
    """The actor's ``send``: remembers each episode for the replay, then sends it."""

    def __init__(self, sender: TrajectorySender):
        self.sender, self.played, self.bytes = sender, [], 0
        self.inference_s = self.env_s = 0.0

    def __call__(self, traj: Trajectory) -> None:
        self.played.append(Played(traj.task_id, traj.init_state_id, traj.actions, traj.length))
        self.inference_s += traj.timings["inference_s"]
        self.env_s += traj.timings["env_s"]
        raw = encode(traj)
        self.bytes += len(raw)
        self.sender.send(raw, trajectory_id=traj.trajectory_id)


def make_actor(cfg, workers: list) -> Actor:
    from common.models import build_policy
    policy = build_policy(cfg.model).to(cfg.actor.device).eval()
    tasks = workers[0].tasks()
    scheduler = TaskScheduler(tasks, {t.task_id: workers[0].train_init_state_ids(t.task_id)
                                      for t in tasks}, cfg.actor.task_weights, seed=cfg.seed)
    return Actor(VectorRollout(workers, policy), scheduler, actor_id="bench",
                 group_size=cfg.algo.group_size, temperature=cfg.algo.temperature,
                 generator=torch.Generator(device=cfg.actor.device).manual_seed(cfg.seed))


def warm_up(workers: list) -> None:
    """Reset every worker into one task of every family, so that no simulator or renderer
    is built during either timed phase (they are built lazily, once per family)."""
    seen: dict[str, str] = {}
    for spec in workers[0].tasks():
        seen.setdefault(spec.family, spec.task_id)
    for task_id in seen.values():
        for w in workers:
            w.start_reset(task_id, 0)
        for w in workers:
            w.result()


def measure(cfg, workers: list, address: str, console: Console) -> dict:
    """Alternate timed actor rounds with timed bare replays of the same round, so that both
    see the same load on a shared machine; the final flush counts as actor time."""
    warm_up(workers)
    actor = make_actor(cfg, workers)
    with TrajectorySender(address, max_in_flight=cfg.actor.max_in_flight,
                          resend_after_s=cfg.actor.resend_after_s) as sender:
        actor.run_round(Recorder(sender))          # first forward, store up
        if not sender.flush(300):
            raise RuntimeError(f"the store at {address} did not acknowledge the warm-up round")
        rec, s0, w0 = Recorder(sender), actor.stats.env_steps, actor.stats.wait_s
        actor_s = bare_s = 0.0
        bare_steps = replayed = 0
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("actor rounds / bare replays", total=cfg.bench.seconds)
            while actor_s < cfg.bench.seconds:
                t0 = time.perf_counter()
                actor.run_round(rec)
                t1 = time.perf_counter()
                bare_steps += replay(workers, rec.played[replayed:])
                bare_s += time.perf_counter() - t1
                actor_s += t1 - t0
                replayed = len(rec.played)
                progress.update(bar, completed=actor_s)
        t0 = time.perf_counter()
        flushed = sender.flush(120)
        actor_s += time.perf_counter() - t0
        acked = sender.counters["acked"]
    steps = actor.stats.env_steps - s0
    if bare_steps != steps:
        raise RuntimeError(f"replay executed {bare_steps} steps, the actor {steps}")
    return {"episodes": len(rec.played), "env_steps": steps, "actor_s": actor_s,
            "bare_s": bare_s, "flushed": flushed, "acked": acked, "trajectory_bytes": rec.bytes,
            "wait_s": actor.stats.wait_s - w0, "inference_s": rec.inference_s,
            "env_s": rec.env_s}


def run(cfg) -> dict:
    console = Console()
    if cfg.actor.torch_threads:
        torch.set_num_threads(cfg.actor.torch_threads)
    with tempfile.TemporaryDirectory(prefix="pushcut-bench-actor-") as tmp:
        store, address = start_store(tmp)
        workers = make_workers(cfg.env, cfg.actor.num_envs, cfg.seed, cfg.actor.subprocess_envs)
        try:
            m = measure(cfg, workers, address, console)
        finally:
            for w in workers:
                w.close()
            store.terminate()
            store.wait(60)
    actor_rate, bare_rate = m["env_steps"] / m["actor_s"], m["env_steps"] / m["bare_s"]
    figures = {
        "env": cfg.env.name, "suite": cfg.env.suite, "model": f"{cfg.model.name}/{cfg.model.preset}",
        "num_envs": cfg.actor.num_envs, "subprocess_envs": bool(cfg.actor.subprocess_envs),
        "device": cfg.actor.device, "torch_threads": torch.get_num_threads(),
        "group_size": cfg.algo.group_size, "episodes": m["episodes"], "env_steps": m["env_steps"],
        "actor_steps_per_s": actor_rate, "bare_steps_per_s": bare_rate,
        "ratio": actor_rate / bare_rate, "goal": GOAL,
        "trajectories_per_s": m["episodes"] / m["actor_s"],
        "stream_mb_per_s": m["trajectory_bytes"] / m["actor_s"] / 1e6,
        "acked": m["acked"], "flushed": m["flushed"], "actor_wait_s": m["wait_s"],
        "inference_share": m["inference_s"] / m["actor_s"], "env_share": m["env_s"] / m["actor_s"],
    }
    print_figures(figures, console)
    return figures


def print_figures(f: dict, console: Console) -> None:
    console.print(f"pushcut bench actor: {f['num_envs']} envs "
                  f"({'subprocess' if f['subprocess_envs'] else 'in-process'}), {f['model']} "
                  f"on {f['device']} ({f['torch_threads']} torch threads), "
                  f"group size {f['group_size']}", soft_wrap=True)
    table = Table()
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("full actor env steps/s", f"{f['actor_steps_per_s']:.0f}"),
            ("bare env steps/s (same envs, same episodes)", f"{f['bare_steps_per_s']:.0f}"),
            ("ratio (goal >= 0.85)", f"{f['ratio']:.2f}"),
            ("episodes / env steps", f"{f['episodes']} / {f['env_steps']}"),
            ("actor wall time in policy inference", f"{f['inference_share']:.0%}"),
            ("env stepping time / actor wall (summed over envs)", f"{f['env_share']:.0%}"),
            ("trajectories/s streamed", f"{f['trajectories_per_s']:.1f}"),
            ("stream MB/s", f"{f['stream_mb_per_s']:.2f}"),
            ("acknowledged by the store", f"{f['acked']} (all: {f['flushed']})"),
            ("actor blocked on the store", f"{f['actor_wait_s']:.2f}s")]
    for row in rows:
        table.add_row(*row)
    console.print(table)
