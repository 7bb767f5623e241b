"""What every ``pushcut`` role process does before its own work: refuse positional arguments
it does not take, set up logging, and turn SIGINT/SIGTERM into Events its loops can watch.

In: the role's name and positional arguments (what follows ``pushcut <role>`` that is not a
``key=value`` override), what it accepts, and the signals the process receives. Out:

- :func:`unexpected_arguments`: True, after one line on stderr
  (``pushcut <role>: unexpected argument(s) [...] (what it takes)``), when an argument is not
  one the role takes; the role then returns :data:`USAGE_ERROR` (exit status 2).
- :func:`setup_logging`: INFO logs through rich on stderr, so that stdout carries only the
  role's final ``<role> stopped: {json}`` line (nothing is changed if logging is already set
  up, e.g. by a launcher that runs the role in its own process).
- :class:`StopSignals`: the first SIGINT/SIGTERM sets ``stop`` (finish what is in hand, then
  stop gracefully); a second one sets ``hurry`` as well (skip the graceful draining: the
  wait for acknowledgements, the ordered shutdown of children). A role with no such wait to
  cut short asks for ``exit_on_hurry``: the second signal then raises :class:`SystemExit`
  (status 128 + signal number, the shell's convention) in the main thread, out of whatever
  it is doing, and ``finally`` blocks still close sockets and files on the way out.

    signals = StopSignals(log, stopping="stopping after the update in progress").install()
    while not signals.stop.is_set(): ...
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Optional, Sequence

USAGE_ERROR = 2
OVERRIDES_ONLY = "only key=value overrides"


def unexpected_arguments(role: str, args: Sequence[str], allowed: Sequence[str] = (),
                         expected: str = OVERRIDES_ONLY) -> bool:
    """True (having said so on stderr, in one line) when ``args`` holds anything that is not
    in ``allowed``; ``expected`` says in words what the role takes."""
    if all(a in allowed for a in args):
        return False
    print(f"pushcut {role}: unexpected argument(s) {list(args)} ({expected})", file=sys.stderr)
    return True


def setup_logging(level: int = logging.INFO) -> None:
    """Rich log lines on stderr, unless the root logger already has a handler."""
    if logging.getLogger().handlers:
        return
    from rich.console import Console   # imported here: a role that logs nothing never pays
    from rich.logging import RichHandler
    # a log file (not a terminal) gets long lines rather than rich's default 80 columns
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=False)])


class StopSignals:
    """SIGINT/SIGTERM -> :attr:`stop`; a second signal -> :attr:`hurry` too.

    ``log``/``stopping``: the first signal is logged as ``signal SIGTERM: <stopping>`` (the
    role says what it finishes before it stops). ``exit_on_hurry``: see the module docstring.
    Install from the main thread (Python runs signal handlers only there).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log: Optional[logging.Logger] = None, stopping: str = "stopping",
                 exit_on_hurry: bool = False):
        self.stop = threading.Event()
        self.hurry = threading.Event()
        self.received: list[int] = []      # signal numbers, in the order they came
        self._log, self._stopping = log, stopping
        self._exit_on_hurry = exit_on_hurry

    def install(self) -> "StopSignals":
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        # counted, not read off ``stop``: a role may set stop itself (its budget is spent)
        if len(self.received) == 1:
            if self._log is not None:
                self._log.info("signal %s: %s", name, self._stopping)
            self.stop.set()
            return
        self.hurry.set()
        if self._log is not None:
            self._log.warning("signal %s again: hurrying (no graceful draining)", name)
        if self._exit_on_hurry:
            raise SystemExit(128 + signum)
