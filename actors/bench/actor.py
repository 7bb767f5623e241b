"""``pushcut bench actor``: env steps/s of a full actor against its real limit, the slower of
bare env stepping and bare inference for the same envs and policy.

In: ``cfg.env``, ``cfg.model`` (the policy; fresh weights unless ``model.checkpoint``),
``cfg.actor`` (num_envs, subprocess_envs, double_buffer, device, torch_threads), ``cfg.algo``
(group size, temperature), ``cfg.bench.seconds``. Out: printed figures, returned as a dict.

1. full actor: :class:`Actor` rounds — batched policy inference (double-buffered with
   subprocess env workers), chunked env stepping with sparse rendering, trajectory records
   streamed to a real ``pushcut store`` process and acknowledged — for ``bench.seconds`` of
   actor time (after a warm-up round), acks awaited at the end;
2. bare env stepping, in the same run: after each actor round the SAME env workers replay
   the SAME episodes (same resets, same actions, same rendering every C steps, same lengths,
   the same number of envs in lock-step) with no policy and no streaming;
3. bare inference, in the same run: after each round the same policy samples (and turns
   into actions) as many decisions as the round took, in full batches of the actor's
   forward-pass size (all envs, or half of them when double-buffered), on the round's real
   observations; env steps/s = the round's env steps / that time.

limit = min((2), (3)): an actor that overlapped inference and stepping perfectly would reach
it. ratio = (1) / limit; the goal is >= 0.85. Alternating the three keeps a shared machine's
changing load from favouring any.

    pushcut bench actor bench.seconds=30 actor.num_envs=8 actor.subprocess_envs=true
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
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from actors.actor import Actor, double_buffer_for  # noqa: E402
from actors.env_workers import make_workers  # noqa: E402
from actors.rollout import VectorRollout  # noqa: E402
from actors.scheduler import TaskScheduler  # noqa: E402
from common.models.policy import ObsBatch  # noqa: E402
from common.wire.trajectory import Trajectory, encode  # noqa: E402
from common.transport.trajectories import TrajectorySender  # noqa: E402

GOAL = 0.85


@dataclass
class Played:
    """What one episode did, enough to replay it: actions float32 [T, C, D]; ``obs``: its
    first observation (images uint8 [V, H, W, 3], proprio float32 [P], instruction), for
    the bare inference."""
    task_id: str
    init_state_id: int
    actions: np.ndarray
    length: int
    obs: tuple | None = None


def replay(workers: list, episodes: list[Played]) -> int:
    """Bare env stepping: the episodes on the workers in lock-step (reset, then chunks of C
    actions rendered on their last step), no policy. -> env steps executed."""
    return replay_counts(workers, episodes)[0]


def replay_counts(workers: list, episodes: list[Played]) -> tuple[int, int]:
    """:func:`replay` -> (env steps, decisions: chunks executed)."""
    pending, slots, steps, decisions = deque(episodes), [None] * len(workers), 0, 0
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
        decisions += len(active)
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
    return steps, decisions


def random_episodes(workers: list, count: int, chunk_size: int, action_dim: int,
                    seed: int = 0) -> list[Played]:
    """``count`` episodes of uniformly random actions in [-1, 1] [T, C, D], over the env's
    tasks in turn, each as long as its task's step limit (the env may end it sooner), each
    with its task's first observation: what :func:`replay` and :func:`obs_batch` take."""
    rng, specs = np.random.default_rng(seed), workers[0].tasks()
    first = {}
    for spec in specs[:count]:
        obs = workers[0].reset(spec.task_id, 0)
        first[spec.task_id] = (obs["images"], obs["proprio"], spec.instruction)
    out = []
    for k in range(count):
        spec = specs[k % len(specs)]
        decisions = -(-spec.max_steps // chunk_size)
        actions = rng.uniform(-1, 1, (decisions, chunk_size, action_dim)).astype(np.float32)
        out.append(Played(spec.task_id, 0, actions, spec.max_steps, first[spec.task_id]))
    return out


def obs_batch(played: list[Played], size: int) -> ObsBatch:
    """A batch of ``size`` real observations, cycling through the episodes' first ones."""
    rows = [played[k % len(played)].obs for k in range(size)]
    return ObsBatch(images=np.stack([r[0] for r in rows]),
                    proprio=np.stack([r[1] for r in rows]).astype(np.float32),
                    instructions=[r[2] for r in rows])


def bare_inference(policy, obs: ObsBatch, calls: int, temperature: float,
                   generator: torch.Generator | None = None) -> float:
    """Bare inference: ``calls`` forward passes of ``policy`` on ``obs`` as a rollout makes
    them (sample at ``temperature``, tokens to actions), nothing else. -> seconds."""
    t0 = time.perf_counter()
    for _ in range(calls):
        tokens, _ = policy.sample(obs, temperature, generator)
        policy.tokens_to_actions(tokens.detach().cpu().numpy())
    return time.perf_counter() - t0


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
        self.played.append(Played(traj.task_id, traj.init_state_id, traj.actions, traj.length,
                                  (traj.images[0], traj.proprio[0], traj.instruction)))
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
    rollout = VectorRollout(workers, policy, double_buffer_for(cfg.actor, workers))
    return Actor(rollout, scheduler, actor_id="bench",
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


class Limits:
    """The bare measurements that follow each actor round (see the module docstring)."""

    def __init__(self, cfg, actor: Actor, workers: list):
        self.workers, self.policy = workers, actor.rollout.policy
        self.batch = len(actor.rollout.halves()[0])     # the actor's forward-pass size
        self.temperature = cfg.algo.temperature
        self.generator = torch.Generator(device=cfg.actor.device).manual_seed(cfg.seed + 1)
        self.env_s = self.inference_s = 0.0
        self.env_steps = self.decisions = 0

    def after_round(self, played: list[Played]) -> None:
        if not played:
            return
        t0 = time.perf_counter()
        self.env_steps += replay(self.workers, played)
        self.env_s += time.perf_counter() - t0
        decisions = sum(len(p.actions) for p in played)
        self.decisions += decisions
        self.inference_s += bare_inference(self.policy, obs_batch(played, self.batch),
                                           -(-decisions // self.batch), self.temperature,
                                           self.generator)


def measure(cfg, workers: list, address: str, console: Console) -> dict:
    """Alternate timed actor rounds with timed bare replays and bare inference of the same
    round, so that all see the same load on a shared machine; the final flush counts as
    actor time."""
    warm_up(workers)
    actor = make_actor(cfg, workers)
    limits = Limits(cfg, actor, workers)
    with TrajectorySender(address, max_in_flight=cfg.actor.max_in_flight,
                          resend_after_s=cfg.actor.resend_after_s) as sender:
        actor.run_round(Recorder(sender))          # first forward, store up
        if not sender.flush(300):
            raise RuntimeError(f"the store at {address} did not acknowledge the warm-up round")
        rec, s0, w0 = Recorder(sender), actor.stats.env_steps, actor.stats.wait_s
        actor_s, replayed = 0.0, 0
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("actor rounds / bare replays", total=cfg.bench.seconds)
            while actor_s < cfg.bench.seconds:
                t0 = time.perf_counter()
                actor.run_round(rec)
                actor_s += time.perf_counter() - t0
                limits.after_round(rec.played[replayed:])
                replayed = len(rec.played)
                progress.update(bar, completed=actor_s)
        t0 = time.perf_counter()
        flushed = sender.flush(120)
        actor_s += time.perf_counter() - t0
        acked = sender.counters["acked"]
    steps = actor.stats.env_steps - s0
    if limits.env_steps != steps:
        raise RuntimeError(f"replay executed {limits.env_steps} steps, the actor {steps}")
    return {"episodes": len(rec.played), "env_steps": steps, "actor_s": actor_s,
            "bare_s": limits.env_s, "bare_inference_s": limits.inference_s,
            "decisions": limits.decisions, "inference_batch": limits.batch,
            "double_buffer": actor.rollout.double_buffer, "flushed": flushed, "acked": acked,
            "trajectory_bytes": rec.bytes, "wait_s": actor.stats.wait_s - w0,
            "inference_s": rec.inference_s, "env_s": rec.env_s}


@contextmanager
def pinned(cores: Sequence[int]) -> Iterator[None]:
    """This process on ``cores`` (``placement.actors``, as the launcher would pin an actor)
    for the block; empty: left where it is."""
    before = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run(cfg) -> dict:
    """``pushcut bench actor``: a store process, the actor's env workers, the measurement.
    -> the figures (printed too)."""
    console = Console()
    if cfg.actor.torch_threads:
        torch.set_num_threads(cfg.actor.torch_threads)
    with tempfile.TemporaryDirectory(prefix="pushcut-bench-actor-") as tmp, \
            pinned(cfg.placement.actors):
        store, address = start_store(tmp)
        workers = make_workers(cfg.env, cfg.actor.num_envs, cfg.seed, cfg.actor.subprocess_envs,
                               cpus=cfg.placement.env_workers,
                               fifo=cfg.placement.env_workers_fifo)
        try:
            m = measure(cfg, workers, address, console)
        finally:
            for w in workers:
                w.close()
            store.terminate()
            store.wait(60)
    figures = figures_of(cfg, m)
    print_figures(figures, console)
    return figures


def figures_of(cfg, m: dict) -> dict:
    """What :func:`measure` found -> the benchmark's figures (rates in env steps/s)."""
    steps = m["env_steps"]
    actor_rate, bare_rate = steps / m["actor_s"], steps / m["bare_s"]
    inference_rate = steps / max(m["bare_inference_s"], 1e-9)
    limit = min(bare_rate, inference_rate)
    return {
        "env": cfg.env.name, "suite": cfg.env.suite, "model": f"{cfg.model.name}/{cfg.model.preset}",
        "num_envs": cfg.actor.num_envs, "subprocess_envs": bool(cfg.actor.subprocess_envs),
        "double_buffer": bool(m["double_buffer"]), "inference_batch": m["inference_batch"],
        "device": cfg.actor.device, "torch_threads": torch.get_num_threads(),
        "group_size": cfg.algo.group_size, "episodes": m["episodes"], "env_steps": steps,
        "decisions": m["decisions"],
        "actor_steps_per_s": actor_rate, "bare_steps_per_s": bare_rate,
        "inference_steps_per_s": inference_rate, "limit_steps_per_s": limit,
        "limit": "env stepping" if bare_rate <= inference_rate else "inference",
        "ratio": actor_rate / limit, "env_ratio": actor_rate / bare_rate, "goal": GOAL,
        "trajectories_per_s": m["episodes"] / m["actor_s"],
        "stream_mb_per_s": m["trajectory_bytes"] / m["actor_s"] / 1e6,
        "acked": m["acked"], "flushed": m["flushed"], "actor_wait_s": m["wait_s"],
        "inference_share": m["inference_s"] / m["actor_s"], "env_share": m["env_s"] / m["actor_s"],
    }


def print_figures(f: dict, console: Console) -> None:
    console.print(f"pushcut bench actor: {f['num_envs']} envs "
                  f"({'subprocess' if f['subprocess_envs'] else 'in-process'}), {f['model']} "
                  f"on {f['device']} ({f['torch_threads']} torch threads), "
                  f"group size {f['group_size']}, "
                  f"{'double-buffered' if f['double_buffer'] else 'one batch'} "
                  f"(forward passes of {f['inference_batch']})", soft_wrap=True)
    table = Table()
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("full actor env steps/s", f"{f['actor_steps_per_s']:.0f}"),
            ("bare env steps/s (same envs, same episodes)", f"{f['bare_steps_per_s']:.0f}"),
            ("bare inference, env steps/s (same policy, same decisions)",
             f"{f['inference_steps_per_s']:.0f}"),
            (f"limit: the slower, {f['limit']}", f"{f['limit_steps_per_s']:.0f}"),
            ("ratio actor / limit (goal >= 0.85)", f"{f['ratio']:.2f}"),
            ("ratio actor / bare env stepping", f"{f['env_ratio']:.2f}"),
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
