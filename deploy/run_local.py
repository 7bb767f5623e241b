"""``pushcut run``: the whole system on this machine — store, learner and ``num_actors``
actors as separate OS processes — with a live status.

In: the composed config. Out, under ``run_dir``: ``store/`` (LMDB), ``checkpoints/``,
``learner.jsonl`` + ``wandb/`` (the learner's metrics), ``run.jsonl`` (status snapshots),
``logs/<process>.log`` (each child's output), and, when there is no policy to start from,
``demos/`` and ``sft/`` made first with ``pushcut demos`` and ``pushcut sft``.

    pushcut run                                    # built-in suite, tiny VLA, CPU
    pushcut run run_dir=runs/r1 num_actors=4 learner.max_versions=200
    pushcut run mode=sync                          # the lock-step schedule, for comparison

The starting policy: ``model.checkpoint`` if set, else ``<run_dir>/sft/final`` (made if
missing). Every child gets the same settings: the fields of this config that differ from the
defaults are passed on as overrides, plus the run's paths and the actors' addresses (derived
from ``store.ingest_address`` and the ``learner.*_address`` fields). Children run in their
own process groups, so Ctrl-C reaches only this process, which then stops them in order:
actors (SIGTERM: finished groups are flushed), learner (SIGTERM: final checkpoint), store.
The run ends when the learner stops (``learner.max_versions``) or a child fails.
"""
from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from common.config.schema import PushcutConfig
from deploy.run_status import StatusBoard, one_line, render

log = logging.getLogger("pushcut.run")
STATUS_EVERY_S = 1.0
PLAIN_STATUS_EVERY_S = 10.0


# ---------------------------------------------------------------- config -> child argv
def _literal(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot pass {type(value).__name__} {value!r} as an override")


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dataclass -> {dotted field name: value} (dict-valued fields are leaves)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def config_overrides(cfg: PushcutConfig) -> list[str]:
    """``++key=value`` for every field of ``cfg`` that differs from the default config."""
    from common.config import load_config
    mine, default = _leaves(cfg), _leaves(load_config([]))
    return [f"++{k}={_literal(v)}" for k, v in mine.items() if default.get(k, object()) != v]


def _dial(address: str) -> str:
    """A bound address (maybe 0.0.0.0 or *) -> one a local process can connect to."""
    return address.replace("://0.0.0.0:", "://127.0.0.1:").replace("://*:", "://127.0.0.1:")


def role_overrides(cfg: PushcutConfig, run_dir: Path, checkpoint: str) -> dict[str, list[str]]:
    base = [f"++run_dir={_literal(str(run_dir))}", f"++model.checkpoint={_literal(checkpoint)}",
            f"++store.path={_literal(str(run_dir / 'store'))}"]
    lc = cfg.learner
    learner = [f"++learner.checkpoint_dir={_literal(str(run_dir / 'checkpoints'))}"]
    actor = [f"++actor.store_address={_literal(_dial(cfg.store.ingest_address))}",
             f"++actor.weights_address={_literal(_dial(lc.weights_address))}",
             f"++actor.announce_address={_literal(_dial(lc.announce_address))}",
             f"++actor.heartbeat_address={_literal(_dial(lc.heartbeat_address))}"]
    return {"store": base, "learner": base + learner, "actor": base + actor}


# ---------------------------------------------------------------- children
class Child:
    """One ``python -m deploy.cli <role> ...`` process, its output in ``logs/<name>.log``."""

    def __init__(self, name: str, role: str, overrides: list[str], log_dir: Path):
        self.name, self.role = name, role
        self.argv = [sys.executable, "-m", "deploy.cli", role, *overrides]
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Child":
        # wide rich output: one log line per record, which the status board parses
        env = {**os.environ, "COLUMNS": "240", "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL. -> exit code."""
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", self.name, timeout_s)
                self.proc.kill()
        return self.proc.wait()

    def tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() \
            else ""


def run_step(name: str, role: str, overrides: list[str], log_dir: Path, console: Console,
             stop: threading.Event) -> None:
    """Run a preparation command to completion (output in its log); Ctrl-C stops it."""
    child = Child(name, role, overrides, log_dir).start()
    console.print(f"[bold]pushcut run[/]: {name} (pid {child.proc.pid}, log {child.log_path})")
    while child.alive:
        if stop.wait(0.5):
            child.stop(timeout_s=30)
            raise RuntimeError(f"interrupted during `pushcut {role}`")
    if child.proc.returncode != 0:
        raise RuntimeError(f"`pushcut {role}` failed (exit {child.proc.returncode}); "
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
        run_step("demos", "demos", [*common, f"++demos.out={_literal(str(demos))}",
                                    "++env.max_steps=null"], log_dir, console, stop)
    run_step("sft", "sft", [*common, f"++sft.demos={_literal(str(demos))}",
                            f"++sft.out={_literal(str(run_dir / 'sft'))}"], log_dir, console,
             stop)
    return str(sft_final)


# ---------------------------------------------------------------- the run
def start_children(cfg: PushcutConfig, run_dir: Path, log_dir: Path, checkpoint: str
                   ) -> list[Child]:
    """Store (unless the learner hosts it), then learner, then the actors."""
    common = config_overrides(cfg)
    roles = role_overrides(cfg, run_dir, checkpoint)
    children = []
    if not cfg.learner.host_store:
        store = Child("store", "store", [*common, *roles["store"]], log_dir).start()
        children.append(store)
        wait_for(lambda: (run_dir / "store" / "data.mdb").exists() or not store.alive, 120,
                 "the store to create its LMDB")
    children.append(Child("learner", "learner", [*common, *roles["learner"]], log_dir).start())
    for i in range(cfg.num_actors):
        children.append(Child(f"actor-{i}", "actor", [
            *common, *roles["actor"], f"++actor.actor_id='actor-{i}'",
            f"++actor.seed={cfg.actor.seed + i}"], log_dir).start())
    return children


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)   # polling interval of the condition above


def stop_children(children: list[Child]) -> dict[str, int | None]:
    """Actors first (their finished groups still reach the store), then learner, store."""
    order = ([c for c in children if c.role == "actor"] +
             [c for c in children if c.role == "learner"] +
             [c for c in children if c.role == "store"])
    return {c.name: c.stop(timeout_s=120 if c.role == "learner" else 60) for c in order}


def supervise(children: list[Child], board: StatusBoard, run_dir: Path, stop: threading.Event,
              console: Console) -> str:
    """Show the status until the learner exits, a child fails or we are told to stop.
    -> why the run ended."""
    learner = next(c for c in children if c.role == "learner")
    live = Live(console=console, refresh_per_second=2) if console.is_terminal else None
    next_plain = 0.0
    reason = "interrupted"
    with open(run_dir / "run.jsonl", "a") as status_log, (live or nullcontext()):
        while not stop.wait(STATUS_EVERY_S):
            figures = board.figures({c.name: c.alive for c in children})
            status_log.write(json.dumps({"time": time.time(), **figures}) + "\n")
            status_log.flush()
            if live is not None:
                live.update(render(figures))
            elif time.monotonic() >= next_plain:
                next_plain = time.monotonic() + PLAIN_STATUS_EVERY_S
                console.print(one_line(figures), soft_wrap=True)
            if not learner.alive:
                reason = "learner finished" if learner.proc.returncode == 0 else "learner failed"
                break
            dead = [c for c in children if not c.alive]
            if dead:
                reason = f"{dead[0].name} exited with {dead[0].proc.returncode}"
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
    except (RuntimeError, FileNotFoundError) as exc:
        console.print(f"[red]pushcut run: {exc}")
        return 1
    console.print(f"[bold]pushcut run[/]: {cfg.mode} mode, {cfg.num_actors} actor(s), policy "
                  f"{checkpoint}, logs in {log_dir}")
    board = StatusBoard(run_dir, run_dir / "store", cfg.mode,
                        [log_dir / f"actor-{i}.log" for i in range(cfg.num_actors)])
    children: list[Child] = []
    try:
        children = start_children(cfg, run_dir, log_dir, checkpoint)
        reason = supervise(children, board, run_dir, stop, console)
    finally:
        exits = stop_children(children)
        figures = board.figures({c.name: False for c in children})
        board.close()
    console.print(one_line(figures), soft_wrap=True)
    learner_ok = exits.get("learner") == 0
    if not learner_ok:
        learner = next((c for c in children if c.role == "learner"), None)
        if learner is not None:
            console.print(f"[red]learner exited with {exits.get('learner')}[/]; last output:\n"
                          f"{learner.tail()}")
    print("run stopped: " + json.dumps({"reason": reason, "exits": exits,
                                        "policy_version": figures["policy_version"],
                                        "run_dir": str(run_dir)}), flush=True)
    return 0 if learner_ok else 1
