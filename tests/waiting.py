"""Shared by every test that waits on something another thread or process does: a
deadline-bounded poll of a condition (never a bare sleep) and free local ports."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float = 60.0, what: str = "condition",
               proc: subprocess.Popen | None = None, every_s: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail with an
    AssertionError at the deadline, or as soon as ``proc`` (if given) has exited."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        pause.wait(every_s)   # the polling interval of a deadline wait


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_addresses() -> dict[str, str]:
    """A local run's server address fields, each on its own port free now (the sockets are
    held until all are bound: a port picked after another was closed can be the same)."""
    from common.config.endpoints import ENDPOINTS
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in ENDPOINTS]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return {e.server: f"tcp://127.0.0.1:{s.getsockname()[1]}"
                for e, s in zip(ENDPOINTS, socks)}


def free_tcp_address() -> str:
    return f"tcp://127.0.0.1:{free_port()}"
