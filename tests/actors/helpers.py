"""Shared by the actor tests: a real ``pushcut store`` OS process, free ports, waiting on a
condition with a deadline, and reading what the store holds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.wire.trajectory import Trajectory
from learner.store import TrajectoryStore

from tests.waiting import free_port, wait_until as wait_for  # noqa: F401  (re-exported)

REPO = Path(__file__).resolve().parents[2]


def pushcut(*args: str, **popen) -> subprocess.Popen:
    """``pushcut ARGS`` as a separate OS process (the console script's module)."""
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "egl")}
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", *args], cwd=REPO, env=env,
                            **popen)


class StoreProcess:
    """``pushcut store`` on a fixed path and port; can be killed and started again."""

    def __init__(self, path: Path, port: int | None = None):
        self.path = str(path)
        self.port = port or free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StoreProcess":
        """Start and wait until the ingest socket is bound (the store logs it)."""
        self.starts = getattr(self, "starts", 0) + 1
        log = Path(f"{self.path}.{self.starts}.log")
        with open(log, "w") as f:
            self.proc = pushcut("store", f"store.path={self.path}",
                                f"store.ingest_address={self.address}", "store.log_every_s=2",
                                stdout=f, stderr=subprocess.STDOUT)   # logs are on stderr
        try:
            wait_for(lambda: "store ingest on" in log.read_text() or self.proc.poll() is not None,
                     120, "the store to bind its ingest socket", every_s=0.2)
        except BaseException:
            self.stop()        # never leave a store process behind
            raise
        assert self.proc.poll() is None, f"store exited with {self.proc.returncode}"
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def groups(self) -> dict[str, list[Trajectory]]:
        """Every complete group in the store: group_id -> its trajectories."""
        with TrajectoryStore(self.path, readonly=True) as store:
            return {g.group_id: store.read_group(g.group_id) for g in store.complete_groups()}

    def by_actor(self) -> dict[str, int]:
        """actor_id -> complete groups."""
        out: dict[str, int] = {}
        for group in self.groups().values():
            out[group[0].actor_id] = out.get(group[0].actor_id, 0) + 1
        return out

    def stats(self) -> dict:
        with TrajectoryStore(self.path, readonly=True) as store:
            return store.stats()

    def missing(self, trajectory_ids) -> set[str]:
        """The ids among ``trajectory_ids`` that the store does not hold."""
        with TrajectoryStore(self.path, readonly=True) as store:
            return {t for t in trajectory_ids if t not in store}
