"""Keeps one pushcut role (``pushcut store|learner|actor``) alive as an OS process.

In: the role's command line (``python -m deploy.cli <role> key=value ...``) and environment.
Out: a running child process, restarted with a backoff when it dies unexpectedly, and a
status dict (pid, restarts, last exit code). A restarted actor resyncs by itself: on start
it fetches the learner's current policy_version before generating.

Used by the Ray launcher (:mod:`deploy.ray_launch`, one supervisor inside each Ray actor) and
by the chaos tests, which SIGKILL children at random. Nothing here imports Ray.

A child leads a process group of its own (setsid, so :meth:`ProcessSupervisor.stop` reaches its grandchildren)
and therefore outlives a supervisor that is SIGKILLed. Two options close that gap when the
supervisor itself can die (a Ray worker): ``die_with_parent`` (Linux: the kernel sends the
child SIGTERM when the supervising thread dies) and ``pid_file`` (the next supervisor of the
same name on that node kills a child left over from its predecessor before it starts one).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import psutil

_PR_SET_PDEATHSIG = 1


def _parent_death_signal(sig: int) -> Optional[Callable[[], None]]:
    """A preexec_fn asking the kernel to send ``sig`` to the child when its parent dies
    (None off Linux). The libc lookup happens here, before fork, not in the child."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, sig)


def reap_stale(pid_file: str, timeout_s: float = 30.0) -> Optional[int]:
    """Kill the process group recorded in ``pid_file`` if that very process (same pid and
    start time) still runs: a child orphaned by a supervisor that was SIGKILLed. -> its pid."""
    try:
        pid_text, created_text = Path(pid_file).read_text().split()
        proc = psutil.Process(int(pid_text))
        if abs(proc.create_time() - float(created_text)) > 0.01:
            return None   # the pid was reused by an unrelated process
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
        return None
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait_s)
            break
        except psutil.TimeoutExpired:
            continue
    return proc.pid


def role_argv(role: str, overrides: list[str]) -> list[str]:
    """The command line of one pushcut role run by the current interpreter."""
    return [sys.executable, "-m", "deploy.cli", role, *overrides]


@dataclass
class SupervisorStatus:
    name: str
    pid: Optional[int]
    alive: bool
    restarts: int
    last_exit: Optional[int]
    started_at: float
    exits: list[int] = field(default_factory=list)


class ProcessSupervisor:
    """One child process; :meth:`poll` restarts it if it died while it should be running.

    ``max_restarts``: None = unlimited. A child that exits 0 (it finished, e.g. an actor with
    ``actor.max_groups``) is not restarted. ``die_with_parent``/``pid_file``: see the module
    docstring; use them when the supervisor may be killed without running :meth:`stop`.
    """

    def __init__(self, name: str, argv: list[str], env: Optional[dict[str, str]] = None,
                 log_path: Optional[str] = None, max_restarts: Optional[int] = None,
                 backoff_s: float = 1.0, cwd: Optional[str] = None,
                 die_with_parent: bool = False, pid_file: Optional[str] = None):
        self.name, self.argv, self.cwd = name, list(argv), cwd
        self.pid_file = pid_file
        self._preexec = _parent_death_signal(signal.SIGTERM) if die_with_parent else None
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.max_restarts, self.backoff_s = max_restarts, backoff_s
        self.restarts = 0
        self.exits: list[int] = []
        self.proc: Optional[subprocess.Popen] = None
        self.started_at = 0.0
        self._stopping = False
        self._restart_due: Optional[float] = None

    def start(self) -> "ProcessSupervisor":
        if self.pid_file:
            reap_stale(self.pid_file)
        out = subprocess.DEVNULL
        if self.log_path:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")
        # own process group, so stop() reaches grandchildren (env workers, FSDP ranks)
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=self._preexec)
        if out is not subprocess.DEVNULL:
            out.close()
        if self.pid_file:
            Path(self.pid_file).parent.mkdir(parents=True, exist_ok=True)
            created = psutil.Process(self.proc.pid).create_time()
            Path(self.pid_file).write_text(f"{self.proc.pid} {created}\n")
        self.started_at = time.time()
        self._stopping = False
        return self

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll(self) -> bool:
        """Restart the child if it died unexpectedly (after the backoff). -> alive now."""
        if self.proc is None or self._stopping or self.alive():
            return self.alive()
        code = self.proc.returncode
        if code == 0:
            return False
        if self._restart_due is None:
            self.exits.append(code)
            self._restart_due = time.monotonic() + self.backoff_s
        if time.monotonic() < self._restart_due:
            return False
        if self.max_restarts is not None and self.restarts >= self.max_restarts:
            return False
        self._restart_due = None
        self.restarts += 1
        self.start()
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the child only (chaos tests); the supervisor will restart it."""
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout_s: float = 30.0) -> Optional[int]:
        """SIGTERM the child's process group, SIGKILL it after ``timeout_s``. -> exit code."""
        self._stopping = True
        if not self.alive():
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def status(self) -> SupervisorStatus:
        return SupervisorStatus(self.name, self.pid, self.alive(), self.restarts,
                                self.proc.returncode if self.proc else None,
                                self.started_at, list(self.exits))
