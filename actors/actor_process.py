"""``pushcut actor``: one rollout actor process — env workers, a policy copy, the store
connection, the weight subscription, signals and progress logs around :class:`Actor`.

In: ``cfg.env`` (which tasks), ``cfg.model`` (the policy; ``actor.policy=expert`` drives the
tabletop scripted expert instead), the store at ``actor.store_address``, the learner's weights
at ``actor.weights_address`` / ``actor.announce_address``. Out: complete groups of trajectory
records streamed to the store, acknowledged; a heartbeat to ``actor.heartbeat_address`` every
``actor.heartbeat_s``; a log line (stderr) every ``actor.log_every_s`` (env steps/s, episodes,
success rate, policy_version, send window); acknowledged ids appended to ``actor.ack_log`` if
set; a final ``actor stopped: {json}`` line on stdout.

    pushcut actor actor.num_envs=8 actor.store_address=tcp://learner-host:5555 \\
        actor.weights_address=tcp://learner-host:5556 actor.announce_address=tcp://learner-host:5557

Initial weights: the learner's latest version if one answers within ``actor.weights_wait_s``,
else ``model.checkpoint`` or fresh weights (policy_version 0) until the learner publishes.
Any number of actors may start and stop at any time. SIGTERM/SIGINT: the round in progress is
cut at its next decision step (its unfinished groups are dropped, its finished ones sent), the
acks are awaited for up to ``actor.flush_timeout_s`` (a second signal stops that wait), then
the process exits 0.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import zlib
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")           # before anything imports mujoco
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import torch  # noqa: E402

from actors.actor import Actor, double_buffer_for  # noqa: E402
from actors.env_workers import make_workers  # noqa: E402
from actors.rollout import VectorRollout  # noqa: E402
from actors.scheduler import FilterWindow, TaskScheduler  # noqa: E402
from common.process import (  # noqa: E402
    USAGE_ERROR, StopSignals, setup_logging, unexpected_arguments,
)
from common.transport.heartbeats import HeartbeatSender  # noqa: E402
from common.transport.curve import CurveClientKeys  # noqa: E402
from common.transport.trajectories import TrajectorySender  # noqa: E402
from common.transport.weights import WeightClient  # noqa: E402

log = logging.getLogger("pushcut.actor")


def actor_seed(seed: int, actor_id: str) -> list[int]:
    """Scheduling/sampling seed: deterministic for (actor.seed, actor_id), and different for
    two actors started with the same actor.seed."""
    return [int(seed), zlib.crc32(actor_id.encode())]


def curve_keys(cfg) -> CurveClientKeys | None:
    if cfg.actor.curve_secret_key is None:
        return None
    if cfg.actor.curve_server_key is None:
        raise ValueError("actor.curve_secret_key is set but actor.curve_server_key is not")
    return CurveClientKeys(cfg.actor.curve_secret_key, cfg.actor.curve_server_key)


def build_policy_for(cfg, workers: list, client: WeightClient | None) -> tuple[Any, int]:
    """-> (policy in eval mode on actor.device, its policy_version)."""
    if cfg.actor.policy == "expert":
        from actors.expert_policy import ExpertPolicy
        return ExpertPolicy(workers, chunk_size=cfg.model.chunk_size,
                            num_bins=cfg.model.num_bins), 0
    if cfg.actor.policy != "model":
        raise ValueError(f"actor.policy must be model or expert, got {cfg.actor.policy!r}")
    from common.models import build_policy
    policy = build_policy(cfg.model)
    version = 0
    got = client.wait(cfg.actor.weights_wait_s) if client is not None else None
    if got is not None:
        version, state_dict = got
        policy.load_state_dict(state_dict)
        log.info("starting from the learner's policy_version %d", version)
    else:
        log.info("no learner weights within %.0fs: starting from %s (policy_version 0)",
                 cfg.actor.weights_wait_s, cfg.model.checkpoint or "fresh weights")
    return policy.to(cfg.actor.device).eval(), version


def filter_window(cfg) -> FilterWindow | None:
    """The adaptive scheduler's target (``actor.adaptive_tasks``), None when it is off."""
    if not cfg.actor.adaptive_tasks:
        return None
    return FilterWindow(cfg.algo.group_size, cfg.algo.success_lo, cfg.algo.success_hi,
                        floor=cfg.actor.adaptive_floor)


def make_actor(cfg, actor_id: str, workers: list, client: WeightClient | None) -> Actor:
    policy, version = build_policy_for(cfg, workers, client)
    env0 = workers[0]
    tasks = env0.tasks()
    scheduler = TaskScheduler(tasks, {t.task_id: env0.train_init_state_ids(t.task_id)
                                      for t in tasks},
                              cfg.actor.task_weights, seed=actor_seed(cfg.actor.seed, actor_id),
                              window=filter_window(cfg))
    generator = torch.Generator(device=cfg.actor.device)
    generator.manual_seed(zlib.crc32(repr(actor_seed(cfg.actor.seed, actor_id)).encode()))
    rollout = VectorRollout(workers, policy, double_buffer_for(cfg.actor, workers))
    return Actor(rollout, scheduler, actor_id=actor_id,
                 group_size=cfg.algo.group_size, temperature=cfg.algo.temperature,
                 policy_version=version, weight_client=client, generator=generator)


class AckLog:
    """Appends every acknowledged trajectory_id to ``path`` (one per line), so that a test or
    an operator can check that nothing acknowledged was lost, even after a SIGKILL."""

    def __init__(self, path: str | None):
        self._file = open(path, "a") if path else None
        self._written = 0

    def update(self, sender: TrajectorySender) -> None:
        if self._file is None:
            return
        new = sender.counters["acked"] - self._written
        if new > 0:
            ids = list(sender.acked_ids)[-new:]
            self._file.write("".join(f"{tid}\n" for tid in ids))
            self._file.flush()
            self._written += new

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class ProgressLog:
    """A daemon thread: a heartbeat to the learner every ``heartbeat_s`` and a log line of the
    actor's counters every ``every_s``."""

    def __init__(self, actor: Actor, sender: TrajectorySender, cfg, curve):
        self.actor, self.sender = actor, sender
        self.every_s, self.heartbeat_s = cfg.actor.log_every_s, cfg.actor.heartbeat_s
        self._heartbeat_args = (cfg.actor.heartbeat_address, curve)
        self._stop = threading.Event()
        self._last = (time.monotonic(), 0, 0, 0)
        self._thread = threading.Thread(target=self._run, name="actor-log", daemon=True)

    def start(self) -> "ProgressLog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def line(self) -> str:
        s, now, steps = self.actor.stats, time.monotonic(), self.actor.rollout.env_steps
        t0, steps0, eps0, succ0 = self._last
        self._last = (now, steps, s.episodes, s.successes)
        window_eps = s.episodes - eps0
        rate = f"{(s.successes - succ0) / window_eps:.0%}" if window_eps else "n/a"
        c = self.sender.counters
        return (f"{self.actor.actor_id} v{self.actor.policy_version} | "
                f"{(steps - steps0) / max(now - t0, 1e-9):.0f} env steps/s | "
                f"episodes {s.episodes} (+{window_eps}, success {rate}) | groups {s.groups} | "
                f"acked {c['acked']}/{c['sent']} in flight {self.sender.in_flight} | "
                f"waited {s.wait_s:.1f}s"
                + (f" | env worker restarts {s.worker_restarts}" if s.worker_restarts else ""))

    def _run(self) -> None:
        beats = HeartbeatSender(*self._heartbeat_args)   # its socket lives in this thread
        next_log = time.monotonic() + self.every_s
        try:
            while True:
                # beat before the first wait: a short-lived actor is known to the learner too
                a = self.actor
                beats.beat(a.actor_id, a.policy_version, a.rollout.env_steps, a.stats.episodes)
                if self._stop.wait(min(self.heartbeat_s, self.every_s)):
                    break
                if time.monotonic() >= next_log:
                    next_log += self.every_s
                    log.info(self.line())
        finally:
            beats.close()


def summary(actor: Actor, sender: TrajectorySender, flushed: bool, started: float) -> dict:
    """The final figures; env_steps_per_s counts from the first round to the end of the flush."""
    s = actor.stats
    elapsed = time.monotonic() - started
    return {"actor_id": actor.actor_id, "policy_version": actor.policy_version,
            "groups": s.groups, "episodes": s.episodes, "successes": s.successes,
            "env_steps": s.env_steps, "env_steps_per_s": s.env_steps / max(elapsed, 1e-9),
            "dropped_episodes": s.dropped_episodes, "swaps": s.swaps,
            "worker_restarts": s.worker_restarts, "rerun_episodes": s.rerun_episodes,
            "by_version": {str(k): v for k, v in sorted(s.by_version.items())},
            "flushed": flushed, **sender.stats()}


def holds_round(mode: str, client) -> bool:
    """Must the next round wait for the learner? Always in mode=sync; in mode=async while it
    says so (``paused``: its backlog of trainable groups is full, algo.max_backlog_batches)."""
    return mode == "sync" or (client is not None and client.paused)


def loop(cfg, actor: Actor, sender: TrajectorySender, acks: AckLog,
         stop: threading.Event) -> None:
    """Rounds until stopped or ``actor.max_groups`` are sent."""
    max_groups = cfg.actor.max_groups
    while not stop.is_set() and (max_groups is None or actor.stats.groups < max_groups):
        if holds_round(cfg.mode, actor.weight_client) and not actor.wait_for_learner(
                cfg.actor.sync_wait_s, stop.is_set):
            if not stop.is_set():
                log.warning("held by the learner, no word from it in %.0fs; rolling out anyway",
                            cfg.actor.sync_wait_s)
        left = None if max_groups is None else max_groups - actor.stats.groups
        actor.run_round(sender.send, max_groups=left, should_stop=stop.is_set)
        sender.poll(0)   # take the acks that arrived during the round
        acks.update(sender)


def run_actor(cfg, stop: threading.Event, hurry: threading.Event | None = None) -> dict:
    """The whole actor lifetime; returns the final summary. Reusable by launchers. Once
    ``hurry`` is set the flush stops waiting for acknowledgements."""
    actor_id = cfg.actor.actor_id or f"{socket.gethostname()}-{os.getpid()}"
    if cfg.actor.torch_threads:
        torch.set_num_threads(cfg.actor.torch_threads)
    curve = curve_keys(cfg)
    workers = make_workers(cfg.env, cfg.actor.num_envs, cfg.actor.seed,
                           cfg.actor.subprocess_envs, cpus=cfg.placement.env_workers,
                           fifo=cfg.placement.env_workers_fifo)
    client = sender = progress = None
    acks = AckLog(cfg.actor.ack_log)
    try:
        client = WeightClient(cfg.actor.weights_address, cfg.actor.announce_address, curve=curve)
        actor = make_actor(cfg, actor_id, workers, client)
        sender = TrajectorySender(cfg.actor.store_address, max_in_flight=cfg.actor.max_in_flight,
                                  resend_after_s=cfg.actor.resend_after_s, curve=curve,
                                  keep_acked=1000)
        log.info("actor %s: %d envs (%s), %d tasks, group size %d at T=%.2f, store %s",
                 actor_id, len(workers), "subprocess" if cfg.actor.subprocess_envs else
                 "in-process", len(actor.scheduler.tasks), actor.group_size, actor.temperature,
                 cfg.actor.store_address)
        progress = ProgressLog(actor, sender, cfg, curve).start()
        started = time.monotonic()
        loop(cfg, actor, sender, acks, stop)
        flushed = sender.flush(cfg.actor.flush_timeout_s,
                               give_up=hurry.is_set if hurry is not None else None)
        acks.update(sender)
        if not flushed:
            log.warning("%d trajectories still unacknowledged (%s); dropping them",
                        sender.in_flight, "told to hurry" if hurry is not None and
                        hurry.is_set() else f"after {cfg.actor.flush_timeout_s:.0f}s")
        log.info(progress.line())
        return summary(actor, sender, flushed, started)
    finally:
        if progress is not None:
            progress.stop()
        for part in (acks, sender, client, *workers):
            if part is not None:
                part.close()


def main(cfg, args: list[str]) -> int:
    """``pushcut actor [key=value ...]``."""
    if unexpected_arguments("actor", args):
        return USAGE_ERROR
    setup_logging()
    # a second signal is seen by the flush, which then stops waiting for the acks
    signals = StopSignals(log, stopping="finishing (unfinished groups are dropped)").install()
    result = run_actor(cfg, signals.stop, signals.hurry)
    print("actor stopped: " + json.dumps(result), flush=True)
    return 0
