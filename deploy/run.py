"""``pushcut run``: the whole system on this machine — store, learner and ``num_actors``
actors as separate OS processes — with a live status.

In: the composed config. Out, under ``run_dir``: ``store/`` (LMDB), ``checkpoints/``,
``learner.jsonl`` + ``wandb/`` (the learner's metrics), ``run.jsonl`` (status snapshots),
``logs/<process>.log`` (each child's output), ``calibration.json`` (this machine's cores and
one-thread GFLOPS, common/calibration.py), ``eval_start/`` (the start policy's held-out
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
their versions and env steps/s (deploy/run_status.py). The configuration is checked before
anything starts (deploy/checks.py, from deploy/cli.py); ``store.path`` and
``learner.checkpoint_dir`` are the run's own (``<run_dir>/store``, ``<run_dir>/checkpoints``),
so other values are refused there rather than silently ignored.

Supervision: each child runs under a :class:`~deploy.supervisor.ProcessSupervisor` in its own
process group with its role's restart intensity (``run.restarts.<role>``: at most
``max_restarts`` restarts within ``window_s`` seconds, after a backoff that doubles from
``backoff_s`` up to ``max_backoff_s``). A child that dies is restarted: an actor resumes
generating (the learner's current weights first), a store reopens its LMDB and the actors
resend what it had not acknowledged, a learner resumes from its newest checkpoint, an
evaluator picks up the snapshots not yet evaluated. A child that dies once more than its
intensity allows is retired: it stays down, and the status shows it. Every restart and
retirement is printed and counted in the status (``restarts`` in ``run.jsonl``). The run
goes on while it can still learn (the store, the learner, at least one actor); it ends when
the learner finishes (``learner.max_versions``, ``learner.max_wall_s``), when it can no
longer learn (the store or the learner retired, or every actor), when every actor that is
not retired finished (``actor.max_groups``) or on Ctrl-C / SIGTERM, which reach only this
process; it then stops the children in order: actors (SIGTERM: finished groups are flushed),
learner (SIGTERM: final checkpoint), store. A second Ctrl-C / SIGTERM drops the order and
the graceful waits: every child still running gets a second SIGTERM (it hurries too) and a
few seconds before it is killed. The final summary names the retired children; each one's
exit status and the last lines of its log are printed. Exit status 0 when the run could
still learn and the learner stopped cleanly, else 1, naming why; 2 for a bad configuration.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.live import Live

from common.calibration import calibrate
from common.config.schema import PushcutConfig
from common.process import USAGE_ERROR, StopSignals, unexpected_arguments
from deploy.roles import (
    RoleCommand, config_overrides, local_addresses, merge, override,
    role_commands, role_process, run_paths,
)
from deploy.start_policy import evaluate_alone, measure
from deploy.warmstart import prepare_policy
from deploy.run_status import StatusBoard, one_line, render, status_heartbeats
from deploy.supervisor import ProcessSupervisor

STATUS_EVERY_S = 1.0
PLAIN_STATUS_EVERY_S = 10.0


def start_temperature(cfg: PushcutConfig, checkpoint: str, run_dir: Path, log_dir: Path,
                      console: Console, signals: StopSignals) -> PushcutConfig:
    """The start policy's held-out success, greedy and sampled (deploy/start_policy.py);
    -> the config with the temperature RL samples at. Raises StartPolicyTooWeak."""
    if cfg.run.eval_episodes < 1:
        return cfg

    def evaluate(temperatures: list[float], out: Path) -> None:
        evaluate_alone(cfg, checkpoint, out, temperatures, cfg.run.eval_episodes, log_dir,
                       console, signals, "pushcut run")

    temperature, line = measure(cfg, run_dir / "eval_start", evaluate)
    console.print(f"[bold]pushcut run[/]: {line}")
    return dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, temperature=temperature))


# ---------------------------------------------------------------- the run
# services that never stop by themselves: restarted even when they exit 0
SERVICES = ("store", "evaluator")


def restart_options(cfg: PushcutConfig, role: str) -> dict[str, float | int]:
    """The supervisor's restart policy for a child of ``role`` (``run.restarts.<role>``)."""
    intensity = getattr(cfg.run.restarts, role)
    return dict(max_restarts=intensity.max_restarts, window_s=intensity.window_s,
                backoff_s=intensity.backoff_s, max_backoff_s=intensity.max_backoff_s)


def start_children(cfg: PushcutConfig, run_dir: Path, log_dir: Path, checkpoint: str,
                   status_heartbeats: str, children: dict[str, ProcessSupervisor]) -> None:
    """Into ``children`` (so that the caller can stop what started if this fails): store
    (unless the learner hosts it), learner, then the actors, which send their heartbeats to
    the learner and to ``status_heartbeats``; then the evaluator if there is one. Each runs
    under a supervisor with its role's restart intensity. With ``actor.ack_log=FILE`` actor-i
    appends to ``FILE.actor-i`` (one file per process: a SIGKILL never tears another's line)."""
    per_role = merge(local_addresses(cfg, status_heartbeats), run_paths(run_dir, checkpoint))
    commands = role_commands(cfg, config_overrides(cfg), per_role, range(cfg.num_actors))
    if cfg.run.eval_episodes > 0 and cfg.learner.snapshot_every > 0:
        commands["evaluator"] = RoleCommand("evaluator", [
            *config_overrides(cfg), override("run_dir", str(run_dir)),
            override("eval.episodes_per_task", cfg.run.eval_episodes),
            override("eval.videos_per_task", 0)], tuple(cfg.placement.evaluator),
            cfg.placement.actors_nice)   # it too takes what the learner leaves
    for name, command in commands.items():
        if command.role == "actor" and cfg.actor.ack_log:
            command.overrides.append(override("actor.ack_log", f"{cfg.actor.ack_log}.{name}"))
        child = children[name] = role_process(name, command, log_dir,
                                              **restart_options(cfg, command.role),
                                              restart_clean_exit=name in SERVICES).start()
        if name == "store":
            wait_for(lambda: (run_dir / "store" / "data.mdb").exists() or not child.alive,
                     120, "the store to create its LMDB")


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)   # polling interval of the condition above


def stop_children(children: dict[str, ProcessSupervisor], actor_timeout_s: float = 60.0,
                  hurry: threading.Event | None = None) -> dict[str, int | None]:
    """Actors and evaluator first, all at once (their finished groups still reach the
    store; SIGKILL after ``actor_timeout_s``), then learner, store. Once ``hurry`` is set
    (a second Ctrl-C) the order is dropped: what still runs is told to stop at once and
    hurried (see ProcessSupervisor.stop). -> name -> exit status."""
    servers = [n for n in ("learner", "store") if n in children]
    first = [n for n in children if n not in servers]
    for name in first:
        children[name].request_stop()
    exits = {n: children[n].stop(timeout_s=actor_timeout_s, hurry=hurry) for n in first}
    if hurry is not None and hurry.is_set():
        for name in servers:
            children[name].request_stop()
    return {**exits, **{n: children[n].stop(timeout_s=120 if n == "learner" else 60,
                                            hurry=hurry) for n in servers}}


def describe_exit(code: int | None) -> str:
    """An exit status as a person reads it: 1, -9 (SIGKILL), or 'none' (still running)."""
    if code is None:
        return "none"
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


def poll_children(children: dict[str, ProcessSupervisor], seen: dict[str, tuple[int, int]]
                  ) -> list[str]:
    """Let every supervisor restart its child when due. ``seen``: name -> (exits, restarts)
    already reported, updated here. -> one line per new death, restart or retirement."""
    notes = []
    for name, child in children.items():
        child.poll()
        exits, restarts = seen.get(name, (0, 0))
        for code in child.exits[exits:]:
            within = f"within {child.window_s:.0f}s"
            why = cannot_learn(children)
            then = (f"retired ({child.max_restarts} restart(s) {within} already); "
                    + (f"{why}: the run cannot learn any more" if why else
                       "the run goes on without it")
                    if child.gave_up else
                    f"restart {child.counted_restarts() + 1} of {child.max_restarts} {within} "
                    f"in {child.next_backoff_s():.3g}s")
            notes.append(f"{name} exited with {describe_exit(code)}; {then}")
        if child.restarts > restarts:
            notes.append(f"{name} restarted (pid {child.pid}, {child.restarts} restart(s))")
        seen[name] = (len(child.exits), child.restarts)
    return notes


def child_states(children: dict[str, ProcessSupervisor]) -> dict[str, str]:
    """name -> the supervisor's state, ``retired`` for a child that used up its restarts."""
    return {n: "retired" if c.gave_up else c.state for n, c in children.items()}


def fatal_retirements(children: dict[str, ProcessSupervisor]) -> list[str]:
    """The retired children the run cannot learn without: the store, the learner, or every
    actor (all of them, when none is left)."""
    retired = [n for n, c in children.items() if c.gave_up]
    fatal = [n for n in ("store", "learner") if n in retired]
    actors = [n for n in children if n.startswith("actor-")]
    if actors and all(n in retired for n in actors):
        fatal += actors
    return fatal


def cannot_learn(children: dict[str, ProcessSupervisor]) -> str | None:
    """Why the run can no longer learn (a retirement it cannot do without), or None."""
    fatal = fatal_retirements(children)
    if not fatal:
        return None
    return "every actor retired" if fatal[0].startswith("actor-") else f"{fatal[0]} retired"


def run_over(children: dict[str, ProcessSupervisor]) -> str | None:
    """Why the run is over, or None while it goes on: the learner finished (exited 0), the
    run can no longer learn (:func:`cannot_learn`), or every actor that is not retired
    finished (``actor.max_groups``)."""
    if children["learner"].state == "finished":
        return "learner finished"
    why = cannot_learn(children)
    if why:
        return why
    actors = [c for n, c in children.items() if n.startswith("actor-")]
    if actors and all(c.gave_up or c.state == "finished" for c in actors):
        return "actors finished"
    return None


def supervise(children: dict[str, ProcessSupervisor], board: StatusBoard, run_dir: Path,
              stop: threading.Event, console: Console) -> str:
    """Restart children that die, show the status (also into ``run.jsonl``) until
    :func:`run_over` says the run is over or we are told to stop. -> why the run ended."""
    live = Live(console=console, refresh_per_second=2) if console.is_terminal else None
    next_plain, seen = 0.0, {}
    with open(run_dir / "run.jsonl", "a") as status_log, (live or nullcontext()):
        while not stop.wait(STATUS_EVERY_S):
            for note in poll_children(children, seen):
                console.print(f"[bold]pushcut run[/]: {note}", soft_wrap=True)
            figures = board.figures(child_states(children),
                                    {n: c.restarts for n, c in children.items()})
            status_log.write(json.dumps({"time": time.time(), **figures}) + "\n")
            status_log.flush()
            if live is not None:
                live.update(render(figures))
            elif time.monotonic() >= next_plain:
                next_plain = time.monotonic() + PLAIN_STATUS_EVERY_S
                console.print(one_line(figures), soft_wrap=True)
            reason = run_over(children)
            if reason:
                return reason
    return "interrupted"


def report_failures(children: dict[str, ProcessSupervisor], exits: dict[str, int | None],
                    console: Console, lines: int = 20) -> list[str]:
    """Print, for every retired child and for a learner that did not stop cleanly, its
    name, exit status and the last ``lines`` lines of its log (in red where the run could
    not go on without it). -> the names of the retired children the run could not do
    without (:func:`fatal_retirements`)."""
    fatal = fatal_retirements(children)
    retired = [n for n, c in children.items() if c.gave_up]
    learner = "learner" if exits.get("learner") not in (0, None) else None
    for name in dict.fromkeys([*retired, *([learner] if learner else [])]):
        child = children[name]
        code = child.exits[-1] if child.gave_up and child.exits else exits.get(name)
        what = (f"retired: exit {describe_exit(code)} with {child.max_restarts} restart(s) "
                f"within {child.window_s:.0f}s already, {child.restarts} in all"
                if child.gave_up else f"did not stop cleanly: exit {describe_exit(code)}")
        tail = child.tail_lines(lines)
        colour = "red" if name in fatal or name == learner else "yellow"
        console.print(f"[{colour}]pushcut run: {name} {what}[/]; " + (
            f"last {len(tail)} line(s) of {child.log_path}:" if tail else
            f"{child.log_path} is empty"), soft_wrap=True)
        for line in tail:
            console.print(f"  {name}| {line}", markup=False, highlight=False, soft_wrap=True)
    return fatal


def main(cfg: PushcutConfig, args: list[str]) -> int:
    """``pushcut run [key=value ...]``."""
    if unexpected_arguments("run", args):
        return USAGE_ERROR
    console = Console(stderr=True)
    run_dir = Path(cfg.run_dir).resolve()
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    signals = StopSignals().install()
    try:
        checkpoint = prepare_policy(cfg, run_dir, log_dir, console, signals)
        cfg = start_temperature(cfg, checkpoint, run_dir, log_dir, console, signals)
    except (RuntimeError, FileNotFoundError) as exc:
        console.print(f"[red]pushcut run: {exc}")
        return 1
    machine = calibrate()   # before the children start, while the cores are quiet
    (run_dir / "calibration.json").write_text(json.dumps(machine.to_dict()) + "\n")
    console.print(f"[bold]pushcut run[/]: {cfg.mode} mode, {cfg.num_actors} actor(s), policy "
                  f"{checkpoint}, logs in {log_dir}; machine: {machine.line()}")
    board = StatusBoard(run_dir, run_dir / "store", cfg.mode, status_heartbeats(cfg),
                        cfg.run.stall_after)
    children: dict[str, ProcessSupervisor] = {}
    try:
        start_children(cfg, run_dir, log_dir, checkpoint, board.heartbeats.address, children)
        board.placement = {n: list(c.cpus) for n, c in children.items() if c.cpus}
        if cfg.placement.env_workers:
            board.placement["env workers"] = list(cfg.placement.env_workers)
        reason = supervise(children, board, run_dir, signals.stop, console)
    finally:
        # the actors flush for actor.flush_timeout_s; one stuck on a dead store is killed
        exits = stop_children(children, actor_timeout_s=cfg.actor.flush_timeout_s + 20,
                              hurry=signals.hurry)
        figures = board.figures(child_states(children),
                                {n: c.restarts for n, c in children.items()})
        board.close()
    return finish(children, exits, figures, reason, run_dir, console)


def finish(children: dict[str, ProcessSupervisor], exits: dict[str, int | None],
           figures: dict, reason: str, run_dir: Path, console: Console) -> int:
    """The last status line, the retired children and the final summary. -> exit status."""
    console.print(one_line(figures), soft_wrap=True)
    failed = report_failures(children, exits, console)
    if failed:
        console.print(f"[red]pushcut run: {cannot_learn(children)}: the run could not learn "
                      "any more", soft_wrap=True)
    ok = not failed and exits.get("learner") == 0
    print("run stopped: " + json.dumps({
        "reason": reason, "exits": exits, "failed": failed,
        "retired": [n for n, c in children.items() if c.gave_up],
        "restarts": {n: c.restarts for n, c in children.items()},
        "policy_version": figures["policy_version"], "run_dir": str(run_dir)}), flush=True)
    return 0 if ok else 1
