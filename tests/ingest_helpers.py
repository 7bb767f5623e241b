"""Shared by the store/transport tests: waiting on conditions, free addresses, a real
``pushcut store`` process, and a sender process body (top level, so spawn can import it)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.waiting import free_tcp_address, wait_until  # noqa: F401  (re-exported)

REPO = Path(__file__).resolve().parents[1]


class StoreProcess:
    """``pushcut store`` as a real OS process, its output in ``log_path``."""

    def __init__(self, path: Path, address: str, log_path: Path, *overrides: str):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "store", f"store.path={path}",
             f"store.ingest_address={address}", "store.log_every_s=0.5", *overrides],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout_s)
        self._log.close()
        return rc


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def sender_worker(address: str, worker: int, count: int, out_queue, progress,
                  resend_after_s: float = 0.5, send_first_again: bool = False,
                  hold=None) -> None:
    """Send ``count`` small trajectories (groups of 4) and report
    (worker, acked ids, {id: sha256 of payload}, sender stats, flushed). ``hold``: an Event
    awaited after the first half, once that half is acknowledged (so a test can act
    mid-stream however fast the machine is)."""
    from common.synthetic import make_trajectory
    from common.wire.trajectory import encode
    from common.transport.trajectories import TrajectorySender

    rng = np.random.default_rng(worker)
    digests = {}
    with TrajectorySender(address, max_in_flight=4, resend_after_s=resend_after_s,
                          keep_acked=None) as sender:
        for i in range(count):
            traj = make_trajectory(rng, trajectory_id=f"w{worker}-{i:04d}",
                                   group_id=f"w{worker}-g{i // 4}", group_size=4,
                                   image_size=16, length=24, task_id=f"task/{worker}")
            raw = encode(traj)
            digests[traj.trajectory_id] = digest(raw)
            sender.send(raw, traj.trajectory_id, timeout_s=120)
            progress.value = sender.counters["acked"]
            if hold is not None and i == count // 2 - 1:
                sender.flush(120)
                progress.value = sender.counters["acked"]
                hold.wait(120)
        if send_first_again:
            first = f"w{worker}-0000"
            sender.send(make_trajectory(np.random.default_rng(worker), trajectory_id=first,
                                        group_id=f"w{worker}-g0", group_size=4, image_size=16,
                                        length=24, task_id=f"task/{worker}"), timeout_s=120)
        flushed = sender.flush(120)
        progress.value = sender.counters["acked"]
        out_queue.put((worker, list(sender.acked_ids), digests, dict(sender.stats()), flushed))
