"""``pushcut run``: the whole system on this machine — store, learner and ``num_actors``
actors as separate OS processes — with a live status.

In: the composed config. Out, under ``run_dir``: ``store/`` (LMDB), ``checkpoints/``,
``learner.jsonl`` + ``wandb/`` (the learner's metrics), ``run.jsonl`` (status snapshots),
``logs/<process>.log`` (each child's output), ``eval_start/`` (the start policy's held-out
success, greedy and sampled: deploy/start_policy.py, which may lower ``algo.temperature`` so
that sampled groups succeed at all), ``snapshots/`` and ``evals/`` (each snapshot's held-out
success, from a ``pushcut evaluator`` child), and, when there is no policy to start from,
``demos/`` and ``sft/`` made first with ``pushcut demos`` and ``pushcut sft``.

    pushcut run                                    # built-in suite, tiny VLA, CPU
    pushcut run run_dir=runs/r1 num_actors=4 learner.max_versions=200
    pushcut run mode=sync                          # the lock-step schedule, for comparison

The starting policy: ``model.checkpoint`` if set, else ``<run_dir>/sft/final`` (made if
missing). Every child gets the same settings: the fields of this config that differ from the
defaults are passed on as overrides, plus the run's paths and the actors' addresses (derived
from ``store.ingest_address`` and the ``learner.*_address`` fields; see deploy/roles.py).
The actors send their heartbeats to the learner and to this process, whose status shows
their versions and env steps/s (deploy/run_status.py). Each child runs under a
:class:`~deploy.supervisor.ProcessSupervisor` (no restarts) in its own process group, so
Ctrl-C reaches only this process, which then stops them in order: actors (SIGTERM: finished
groups are flushed), learner (SIGTERM: final checkpoint), store. The run ends when the
learner stops (``learner.max_versions``) or a child fails.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.live import Live

from common.config.schema import PushcutConfig
from deploy.roles import (
    RoleCommand, config_overrides, literal as _literal, local_addresses, merge, override,
    role_commands, role_process, run_paths,
)
from deploy.start_policy import measure
from deploy.run_status import StatusBoard, one_line, render, status_heartbeats
from deploy.supervisor import ProcessSupervisor

STATUS_EVERY_S = 1.0
PLAIN_STATUS_EVERY_S = 10.0
def run_step(name: str, role: str, overrides: list[str], log_dir: Path, console: Console,
             stop: threading.Event) -> None:
    """Run a preparation command to completion (output in its log); Ctrl-C stops it."""
    child = role_process(name, RoleCommand(role, overrides), log_dir, max_restarts=0).start()
    console.print(f"[bold]pushcut run[/]: {name} (pid {child.pid}, log {child.log_path})")
    while child.alive:
        if stop.wait(0.5):
            child.stop(timeout_s=30)
            raise RuntimeError(f"interrupted during `pushcut {role}`")
    if child.returncode != 0:
        raise RuntimeError(f"`pushcut {role}` failed (exit {child.returncode}); "
                           f"see {child.log_path}:\n{child.tail()}")


def prepare_policy(cfg: PushcutConfig, run_dir: Path, log_dir: Path, console: Console,
                   stop: threading.Event) -> str:
    """The checkpoint RL starts from: model.checkpoint, else <run_dir>/sft/final, made with
    `pushcut demos` + `pushcut sft` when missing."""
    if cfg.model.checkpoint:
        if not (Path(cfg.model.checkpoint) / "config.json").exists():
            raise FileNotFoundError(f"model.checkpoint={cfg.model.checkpoint} is not a "
                                    "save_pretrained directory (no config.json)")
        return cfg.model.checkpoint
    sft_final = run_dir / "sft" / "final"
    if (sft_final / "config.json").exists():
        return str(sft_final)
    common = config_overrides(cfg)
    demos = run_dir / "demos"
    if not (demos / "index.jsonl").exists():
        # the expert gets the tasks' own step limits: env.max_steps is meant for RL episodes
        run_step("demos", "demos", [*common, override("demos.out", str(demos)),
                                    override("env.max_steps", None)], log_dir, console, stop)
    run_step("sft", "sft", [*common, override("sft.demos", str(demos)),
                            override("sft.out", str(run_dir / "sft"))], log_dir, console, stop)
    return str(sft_final)


def start_temperature(cfg: PushcutConfig, checkpoint: str, run_dir: Path, log_dir: Path,
                      console: Console, stop: threading.Event) -> PushcutConfig:
    """The start policy's held-out success, greedy and sampled (deploy/start_policy.py);
    -> the config with the temperature RL samples at. Raises StartPolicyTooWeak."""
    if cfg.run.eval_episodes < 1:
        return cfg

    def evaluate(temperatures: list[float], out: Path) -> None:
        run_step("eval_start", "eval", [
            checkpoint, *config_overrides(cfg), override("eval.out", str(out)),
            override("eval.temperatures", temperatures), override("eval.videos_per_task", 0),
            override("eval.episodes_per_task", cfg.run.eval_episodes)], log_dir, console, stop)

    temperature, line = measure(cfg, run_dir / "eval_start", evaluate)
    console.print(f"[bold]pushcut run[/]: {line}")
    return dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, temperature=temperature))


# ---------------------------------------------------------------- the run
def start_children(cfg: PushcutConfig, run_dir: Path, log_dir: Path, checkpoint: str,
                   status_heartbeats: str, children: dict[str, ProcessSupervisor]) -> None:
    """Into ``children`` (so that the caller can stop what started if this fails): store
    (unless the learner hosts it), learner, then the actors, which send their heartbeats to
    the learner and to ``status_heartbeats``."""
    per_role = merge(local_addresses(cfg, status_heartbeats), run_paths(run_dir, checkpoint))
    commands = role_commands(cfg, config_overrides(cfg), per_role, range(cfg.num_actors))
    if cfg.run.eval_episodes > 0 and cfg.learner.snapshot_every > 0:
        commands["evaluator"] = RoleCommand("evaluator", [
            *config_overrides(cfg), override("run_dir", str(run_dir)),
            override("eval.episodes_per_task", cfg.run.eval_episodes),
            override("eval.videos_per_task", 0)])
    for name, command in commands.items():
        # no restarts: a child that exits ends the run
        child = children[name] = role_process(name, command, log_dir, max_restarts=0).start()
        if name == "store":
            wait_for(lambda: (run_dir / "store" / "data.mdb").exists() or not child.alive,
                     120, "the store to create its LMDB")


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)   # polling interval of the condition above


def stop_children(children: dict[str, ProcessSupervisor]) -> dict[str, int | None]:
    """Actors first (their finished groups still reach the store), then learner, store."""
    servers = [n for n in ("learner", "store") if n in children]
    order = [n for n in children if n not in servers] + servers
    return {n: children[n].stop(timeout_s=120 if n == "learner" else 60) for n in order}


def supervise(children: dict[str, ProcessSupervisor], board: StatusBoard, run_dir: Path,
              stop: threading.Event, console: Console) -> str:
    """Show the status until the learner exits, a child fails or we are told to stop.
    -> why the run ended."""
    learner = children["learner"]
    live = Live(console=console, refresh_per_second=2) if console.is_terminal else None
    next_plain = 0.0
    reason = "interrupted"
    with open(run_dir / "run.jsonl", "a") as status_log, (live or nullcontext()):
        while not stop.wait(STATUS_EVERY_S):
            figures = board.figures({n: c.alive for n, c in children.items()})
            status_log.write(json.dumps({"time": time.time(), **figures}) + "\n")
            status_log.flush()
            if live is not None:
                live.update(render(figures))
            elif time.monotonic() >= next_plain:
                next_plain = time.monotonic() + PLAIN_STATUS_EVERY_S
                console.print(one_line(figures), soft_wrap=True)
            if not learner.alive:
                reason = "learner finished" if learner.returncode == 0 else "learner failed"
                break
            dead = [n for n, c in children.items() if not c.alive]
            if dead:
                reason = f"{dead[0]} exited with {children[dead[0]].returncode}"
                break
    return reason


def main(cfg: PushcutConfig, args: list[str]) -> int:
    """``pushcut run [key=value ...]``."""
    if args:
        print(f"pushcut run: unexpected argument(s) {args} (only key=value overrides)",
              file=sys.stderr)
        return 2
    if cfg.mode not in ("async", "sync"):
        print(f"pushcut run: mode must be async or sync, got {cfg.mode!r}", file=sys.stderr)
        return 2
    console = Console(stderr=True)
    run_dir = Path(cfg.run_dir).resolve()
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        checkpoint = prepare_policy(cfg, run_dir, log_dir, console, stop)
        cfg = start_temperature(cfg, checkpoint, run_dir, log_dir, console, stop)
    except (RuntimeError, FileNotFoundError) as exc:
        console.print(f"[red]pushcut run: {exc}")
        return 1
    console.print(f"[bold]pushcut run[/]: {cfg.mode} mode, {cfg.num_actors} actor(s), policy "
                  f"{checkpoint}, logs in {log_dir}")
    board = StatusBoard(run_dir, run_dir / "store", cfg.mode, status_heartbeats(cfg))
    children: dict[str, ProcessSupervisor] = {}
    try:
        start_children(cfg, run_dir, log_dir, checkpoint, board.heartbeats.address, children)
        reason = supervise(children, board, run_dir, stop, console)
    finally:
        exits = stop_children(children)
        figures = board.figures({n: False for n in children})
        board.close()
    console.print(one_line(figures), soft_wrap=True)
    learner_ok = exits.get("learner") == 0
    if not learner_ok:
        learner = children.get("learner")
        if learner is not None:
            console.print(f"[red]learner exited with {exits.get('learner')}[/]; last output:\n"
                          f"{learner.tail()}")
    print("run stopped: " + json.dumps({"reason": reason, "exits": exits,
                                        "policy_version": figures["policy_version"],
                                        "run_dir": str(run_dir)}), flush=True)
    return 0 if learner_ok else 1
