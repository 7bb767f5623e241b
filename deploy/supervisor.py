"""Keeps one pushcut role (``pushcut store|learner|actor|demos|sft``) running as an OS process.

In: the role's command line (``python -m deploy.cli <role> key=value ...``, built by
:mod:`deploy.roles`), its environment and log file. Out: a running child process with its
output appended to the log, restarted with a backoff when it dies unexpectedly (unless
``max_restarts=0``), and a status dict (pid, restarts, last exit code). A restarted actor
resyncs by itself: on start it fetches the learner's current policy_version before generating.

Restart policy: ``max_restarts`` restarts (None: unlimited), counted either within a sliding
window of ``window_s`` seconds (the restart intensity ``pushcut run`` gives each child) or in
a row, where with ``healthy_after_s`` a child that ran at least that long before dying starts
a new row. Either way a long run survives occasional deaths while a crash loop gives up
(:attr:`ProcessSupervisor.gave_up`). The wait before a restart is ``backoff_s``, doubled for
every restart that counts, up to ``max_backoff_s`` (None: always ``backoff_s``). Once a
death is seen, whatever is left of the dead child's process group (env workers, FSDP ranks)
is killed, so two copies never run at once.

The one launcher of child processes: ``pushcut run`` (:mod:`deploy.run`), ``pushcut
soak``, the Ray launcher (:mod:`deploy.ray_launch`, one supervisor per role inside a Ray
actor) and the chaos tests, which SIGKILL children at random. Nothing here imports Ray.

:meth:`ProcessSupervisor.stop` sends SIGTERM to the child alone (each role shuts its own
workers down: an actor flushes its finished groups, the learner saves a final checkpoint),
then SIGKILLs its whole process group: after the timeout, or at once for whatever of the group
outlives a child that exited. A child leads a process group of its own (setsid, so a signal
reaches its grandchildren) and therefore outlives a supervisor that is SIGKILLed. Two options
close that gap when the supervisor itself can die (a Ray worker): ``die_with_parent``
(Linux: the kernel sends the child SIGTERM when the supervising thread dies) and
``pid_file`` (the next supervisor of the same name on that node kills a child left over
from its predecessor before it starts one).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import psutil

log = logging.getLogger("pushcut.supervisor")
_PR_SET_PDEATHSIG = 1
# a hurried child (see ProcessSupervisor.stop) gets this long before its group is SIGKILLed
HURRY_S = 10.0


def _parent_death_signal(sig: int) -> Optional[Callable[[], None]]:
    """A preexec_fn asking the kernel to send ``sig`` to the child when its parent dies
    (None off Linux). The libc lookup happens here, before fork, not in the child."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, sig)


def _child_setup(death_signal: Optional[Callable[[], None]], cpus: tuple[int, ...],
                 nice: int = 0) -> Optional[Callable[[], None]]:
    """The preexec_fn of a child: the parent-death signal, the CPU affinity and the nice
    value (set before exec, so every thread and process the child starts inherits them)."""
    if death_signal is None and not cpus and not nice:
        return None

    def setup() -> None:
        if death_signal is not None:
            death_signal()
        if cpus:
            os.sched_setaffinity(0, cpus)
        if nice:
            _autogroup_nice(os.nice(nice))
    return setup


def _autogroup_nice(nice: int) -> None:
    """Under Linux's autogroup scheduling CPU time is shared between autogroups first, and
    each child starts its own (setsid), so a nice value alone would only rank the child
    against itself: its autogroup gets the same value (raising it needs no privilege).
    Without autogroup the file is absent or inert."""
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass


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

    ``max_restarts``: restarts within ``window_s`` seconds, or in a row without it; None =
    unlimited. A child that exits 0 (it finished,
    e.g. an actor with ``actor.max_groups``) is not restarted unless ``restart_clean_exit``
    (a service that should never stop by itself). ``healthy_after_s``, ``max_backoff_s``:
    see the module docstring. ``die_with_parent``/``pid_file``: see the module docstring;
    use them when the supervisor may be killed without running :meth:`stop`. ``cpus``: the
    cores the child (and all it starts) may run on; empty = any. ``nice``: added to the
    child's nice value (lower CPU priority for it and all it starts).
    """

    def __init__(self, name: str, argv: list[str], env: Optional[dict[str, str]] = None,
                 log_path: Optional[str] = None, max_restarts: Optional[int] = None,
                 backoff_s: float = 1.0, cwd: Optional[str] = None,
                 die_with_parent: bool = False, pid_file: Optional[str] = None,
                 max_backoff_s: Optional[float] = None,
                 healthy_after_s: Optional[float] = None, restart_clean_exit: bool = False,
                 cpus: Sequence[int] = (), nice: int = 0, window_s: Optional[float] = None):
        self.name, self.argv, self.cwd = name, list(argv), cwd
        self.pid_file = pid_file
        self.cpus = tuple(cpus)
        self._preexec = _child_setup(
            _parent_death_signal(signal.SIGTERM) if die_with_parent else None, self.cpus, nice)
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.max_restarts, self.backoff_s = max_restarts, backoff_s
        self.max_backoff_s, self.healthy_after_s = max_backoff_s, healthy_after_s
        self.window_s = window_s
        self._restart_times: deque[float] = deque()   # monotonic, within window_s
        self.restart_clean_exit = restart_clean_exit
        self.restarts = 0          # all restarts so far
        self.in_a_row = 0          # restarts since the child last ran healthy_after_s
        self.gave_up = False       # died with no restart left
        self.exits: list[int] = []
        self.proc: Optional[subprocess.Popen] = None
        self.started_at = 0.0
        self._stopping = self._death_seen = self._term_sent = False
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
        self._stopping = self._death_seen = self.gave_up = self._term_sent = False
        return self

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        """The exit code of the current child (None while it runs or before it started)."""
        return self.proc.poll() if self.proc else None

    def tail(self, chars: int = 2000) -> str:
        """The last ``chars`` characters of the log ("" without one)."""
        if not self.log_path or not Path(self.log_path).exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4 * chars))
            return f.read().decode(errors="replace")[-chars:]

    def poll(self) -> bool:
        """Restart the child if it died unexpectedly (after the backoff). -> alive now."""
        if self.proc is None or self._stopping or self.alive:
            return self.alive
        if not self._death_seen:
            self._on_death(self.proc.returncode)
        if self._restart_due is None or time.monotonic() < self._restart_due:
            return False
        self._restart_due = None
        self.restarts += 1
        self.in_a_row += 1
        self._restart_times.append(time.monotonic())
        self.start()
        return True

    def _on_death(self, code: int) -> None:
        """Once per death, as soon as it is seen: kill what is left of the child's process
        group (its id is still its own), record the exit, give up or schedule the restart."""
        self._death_seen = True
        self._kill_group()
        if code == 0 and not self.restart_clean_exit:
            return                                   # it finished
        self.exits.append(code)
        if self.healthy_after_s is not None and \
                time.time() - self.started_at >= self.healthy_after_s:
            self.in_a_row = 0
        if self.max_restarts is not None and self.counted_restarts() >= self.max_restarts:
            self.gave_up = True
            return
        self._restart_due = time.monotonic() + self.next_backoff_s()

    def counted_restarts(self) -> int:
        """The restarts that count against ``max_restarts`` now: those of the last
        ``window_s`` seconds, or those in a row without a window."""
        if self.window_s is None:
            return self.in_a_row
        horizon = time.monotonic() - self.window_s
        while self._restart_times and self._restart_times[0] < horizon:
            self._restart_times.popleft()
        return len(self._restart_times)

    def next_backoff_s(self) -> float:
        """The wait before the next restart: ``backoff_s`` doubled per restart that counts,
        up to ``max_backoff_s`` (constant without it)."""
        if self.max_backoff_s is None:
            return self.backoff_s
        return min(self.backoff_s * 2 ** self.counted_restarts(), self.max_backoff_s)

    @property
    def restarting(self) -> bool:
        """Dead, with a restart scheduled (waiting out the backoff)."""
        return self._restart_due is not None and not self.alive and not self._stopping

    @property
    def state(self) -> str:
        """running | restarting | finished (exited 0) | failed (no restart left) | stopped |
        exited (dead, not yet polled) | new."""
        if self.proc is None:
            return "new"
        if self.alive:
            return "running"
        if self.gave_up:
            return "failed"
        if self._stopping:
            return "stopped"
        if self._restart_due is not None:
            return "restarting"
        if self._death_seen and self.proc.returncode == 0:
            return "finished"
        return "exited"

    def tail_lines(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of the log ([] without one)."""
        return self.tail(max(2000, 200 * lines)).splitlines()[-lines:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the child only (chaos tests); the supervisor will restart it."""
        if self.alive:
            os.kill(self.proc.pid, sig)

    def request_stop(self) -> None:
        """No more restarts, and SIGTERM the child (once: a role takes a second signal as
        "hurry"); returns at once, so that several children stop at the same time.
        :meth:`stop` then waits."""
        self._stopping = True
        if self.alive and not self._term_sent:
            self.proc.send_signal(signal.SIGTERM)
            self._term_sent = True

    def stop(self, timeout_s: float = 30.0,
             hurry: Optional[threading.Event] = None) -> Optional[int]:
        """SIGTERM the child (unless :meth:`request_stop` did), SIGKILL its process group
        after ``timeout_s`` (and whatever of the group is left once the child exited). Once
        ``hurry`` is set (the launcher got a second signal), the child gets a second SIGTERM,
        its own "hurry", and at most :data:`HURRY_S` more. -> exit code."""
        self.request_stop()
        if not self.alive:
            return self.proc.returncode if self.proc else None
        if not self._wait_exit(timeout_s, hurry):
            log.warning("%s did not stop in time; killing it", self.name)
        self._kill_group()
        return self.proc.wait(10)

    def _wait_exit(self, timeout_s: float, hurry: Optional[threading.Event]) -> bool:
        """Wait for the child to exit (-> True) until ``timeout_s``, cut short by ``hurry``."""
        deadline, hurried = time.monotonic() + timeout_s, False
        while True:
            if hurry is not None and hurry.is_set() and not hurried:
                hurried = True
                if self.alive:
                    self.proc.send_signal(signal.SIGTERM)
                deadline = min(deadline, time.monotonic() + HURRY_S)
            left = deadline - time.monotonic()
            try:
                # in slices while hurry may still come: a signal handler cannot end a wait
                self.proc.wait(max(0.0, min(left, 0.2) if hurry is not None else left))
                return True
            except subprocess.TimeoutExpired:
                if left <= 0:
                    return False

    def _kill_group(self) -> None:
        """Right after the child exited (or while it still runs): its pid, the group's id, is
        not yet anyone else's."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass   # nothing of the group is left

    def status(self) -> SupervisorStatus:
        return SupervisorStatus(self.name, self.pid, self.alive, self.restarts,
                                self.proc.returncode if self.proc else None,
                                self.started_at, list(self.exits))
