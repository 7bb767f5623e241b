"""Shared by the actor tests: a real ``pushcut store`` OS process, free ports, waiting on a
condition with a deadline, reading what the store holds, and one ``pushcut actor`` group
streamed into a store (the real simulators' end-to-end tests)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
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


def actor_group_into_store(tmp_path: Path, name: str, *settings: str,
                           timeout_s: float = 600) -> list[Trajectory]:
    """One ``pushcut actor`` process (one env worker, a fresh micro policy) sends one group of
    two episodes into a ``pushcut store`` process; -> that group as the store holds it.
    ``settings``: the env's and the model's overrides."""
    store = StoreProcess(tmp_path / "store").start()
    try:
        actor = pushcut(
            "actor", *settings, "model.preset=micro", "actor.num_envs=1", "algo.group_size=2",
            "actor.max_groups=1", "actor.weights_wait_s=0",
            f"actor.actor_id={name}-{uuid.uuid4().hex[:6]}",
            f"actor.store_address={store.address}",
            f"actor.weights_address=tcp://127.0.0.1:{free_port()}",
            f"actor.announce_address=tcp://127.0.0.1:{free_port()}",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = actor.communicate(timeout=timeout_s)
        assert actor.returncode == 0, err[-3000:]
        summary = json.loads(out.split("actor stopped: ", 1)[1])
        assert summary["groups"] == 1 and summary["episodes"] == 2 and summary["flushed"]
        return wait_for(lambda: list(store.groups().values()), 60, "the group in the store")[0]
    finally:
        store.stop()
