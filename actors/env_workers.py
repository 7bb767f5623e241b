"""Env workers: one simulator each, stepped one action chunk per request.

In: a :class:`~actors.envs.base.TaskEnv` (in-process) or an ``EnvConfig`` + seed (subprocess).
Out: :class:`ChunkResult` per chunk of C actions, and observations after resets.

A rollout drives every worker the same way: ``start_reset``/``start_chunk`` on all of them,
then ``result()`` on each, so subprocess workers step in parallel while in-process ones
simply compute at ``start_*``. A chunk renders only on its last step (the policy needs an
observation every C control steps), or on every step when a video is being recorded.

Subprocess workers (heavy simulators such as LIBERO) are separate OS processes started with
``python -m actors.env_worker ADDRESS ENV_CONFIG_JSON SEED`` (the child side, in
:mod:`actors.env_worker`; this module is the parent side). They talk over a ZeroMQ PAIR
socket on an ipc:// path, msgpack maps with arrays as ``{dtype, shape, data}``
(:mod:`common.wire.codec`, never pickle). A worker process exits when its parent goes away.
Every request has a deadline and the child's liveness is polled while waiting: a dead or hung
worker raises EnvWorkerError and ``restart()`` replaces it (VectorRollout re-runs the lost
episode). LIBERO workers (2-3 GB each) are capped at what fits in free memory
(:func:`libero_worker_count`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import msgpack
import numpy as np
import zmq

from actors.envs.base import StepResult, TaskEnv, TaskSpec
from actors.envs.registry import env_spec
from common.wire.codec import pack_array, unpack_array
from common.wire.errors import WireError

log = logging.getLogger(__name__)


class EnvWorkerError(RuntimeError):
    """An env worker failed (its exception text is included) or died."""


@dataclass
class ChunkResult:
    steps: int                          # control steps executed (<= C)
    success: bool
    done: bool                          # success, env step limit, or ``steps_left`` used up
    obs: dict[str, np.ndarray] | None   # observation after the last step; None when done
    frames: list[np.ndarray] = field(default_factory=list)  # agentview [H, W, 3] per step
    env_s: float = 0.0
    info: dict | None = None            # when done: the env's episode_info(), if it has one


def run_chunk(env: TaskEnv, actions: np.ndarray, steps_left: int,
              record_video: bool = False) -> ChunkResult:
    """Step ``env`` through ``actions`` float32 [C, D], stopping at done or after
    ``steps_left`` steps; render on the chunk's last step only (every step if recording)."""
    t0 = time.perf_counter()
    last = min(len(actions), steps_left) - 1
    frames, obs, success, done, steps = [], None, False, False, 0
    for i in range(last + 1):
        res = env.step(actions[i], render=record_video or i == last)
        steps += 1
        if record_video and res.obs is not None:
            frames.append(res.obs["images"][0])
        success, done = bool(res.success), bool(res.done)
        if done:
            break
        obs = res.obs
    done = done or steps >= steps_left
    info = env.episode_info() if done and hasattr(env, "episode_info") else None
    return ChunkResult(steps, success, done, None if done else obs, frames,
                       time.perf_counter() - t0, info)


class InProcessWorker:
    """A TaskEnv in this process; ``start_*`` compute at once, ``result()`` hands it over.
    The TaskEnv methods pass through, so a worker is a TaskEnv too."""
    steps_in_background = False     # start_* computes here, in the caller's process

    def __init__(self, env: TaskEnv):
        self.env = env
        self._result: Any = None

    def tasks(self) -> list[TaskSpec]:
        return self.env.tasks()

    def train_init_state_ids(self, task_id: str) -> list[int]:
        return self.env.train_init_state_ids(task_id)

    def heldout_init_state_ids(self, task_id: str) -> list[int]:
        return self.env.heldout_init_state_ids(task_id)

    def reset(self, task_id: str, init_state_id: int) -> dict[str, np.ndarray]:
        return self.env.reset(task_id, init_state_id)

    def step(self, action: np.ndarray, render: bool = True):
        return self.env.step(action, render)

    def observe(self) -> dict[str, np.ndarray]:
        return self.env.observe()

    def start_reset(self, task_id: str, init_state_id: int) -> None:
        t0 = time.perf_counter()
        obs = self.env.reset(task_id, init_state_id)
        self._result = (obs, time.perf_counter() - t0)

    def start_chunk(self, actions: np.ndarray, steps_left: int, record_video: bool) -> None:
        self._result = run_chunk(self.env, actions, steps_left, record_video)

    def result(self) -> Any:
        """(obs, env_s) after start_reset; ChunkResult after start_chunk."""
        out, self._result = self._result, None
        return out

    def close(self) -> None:
        self.env.close()


# -- wire helpers (both sides) ------------------------------------------------------------
def pack_obs(obs: dict[str, np.ndarray] | None) -> dict[str, Any] | None:
    return None if obs is None else {k: pack_array(v) for k, v in obs.items()}


def unpack_obs(d: dict[str, Any] | None) -> dict[str, np.ndarray] | None:
    return None if d is None else {k: unpack_array(v, k) for k, v in d.items()}


def dumps(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def loads(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


def decode_reply(op: str | None, reply: dict[str, Any]) -> Any:
    """The child's reply to ``op`` -> what the parent hands out; WireError on a bad array."""
    if op == "reset":
        return unpack_obs(reply["obs"]), reply["env_s"]
    if op == "chunk":
        return ChunkResult(reply["steps"], reply["success"], reply["done"],
                           unpack_obs(reply["obs"]),
                           [unpack_array(f, "frame") for f in reply["frames"]], reply["env_s"],
                           reply.get("info"))
    if op == "step":
        value = reply["value"]
        return StepResult(unpack_obs(value["obs"]), value["success"], value["done"])
    if op == "observe":
        return unpack_obs(reply["value"])
    return reply["value"]


# -- subprocess worker: parent side -------------------------------------------------------
class SubprocessWorker:
    """One env in its own OS process. Also a blocking :class:`TaskEnv`, so evaluation can use
    it like any env. Every request has a deadline and the process's liveness is checked while
    waiting, so a dead or hung worker raises :class:`EnvWorkerError` instead of blocking;
    :meth:`restart` then replaces the process."""
    steps_in_background = True      # start_* returns at once; the child steps meanwhile

    def __init__(self, env_cfg: Any, seed: int, *, start_timeout_s: float = 120.0,
                 reply_timeout_s: float = 600.0, send_timeout_s: float = 30.0,
                 wait: bool = True, context: zmq.Context | None = None,
                 cpus: Sequence[int] = (), fifo: bool = False,
                 interpreter: tuple[str, dict[str, str]] | None = None):
        self.cpus = tuple(cpus)   # cores of the child process; empty: the parent's
        self.fifo = fifo          # SCHED_FIFO: chunks on a shared core in arrival order
        self.interpreter = interpreter   # (python, environ) of the simulator's own; None: ours
        self._cfg_json = json.dumps(env_cfg if isinstance(env_cfg, dict) else asdict(env_cfg))
        self.seed = seed
        self._ctx = context or zmq.Context.instance()
        self.reply_timeout_s = reply_timeout_s
        self.send_timeout_s = send_timeout_s
        self._start_timeout_s = start_timeout_s
        self._tasks: list[TaskSpec] | None = None
        self.restarts = 0
        self._spawn()
        if wait:
            self.wait_ready()

    def _spawn(self) -> None:
        """A fresh socket on a fresh ipc path and a child process that connects to it."""
        self._dir = tempfile.mkdtemp(prefix="pushcut-env-")
        self.address = f"ipc://{self._dir}/w"
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.address)
        python, environ = self.interpreter or (sys.executable, {})
        self.proc = subprocess.Popen([python, "-m", "actors.env_worker", self.address,
                                      self._cfg_json, str(self.seed)],
                                     env={**os.environ, **environ} if environ else None)
        if self.cpus:   # set from here, before the child's imports start any thread
            os.sched_setaffinity(self.proc.pid, self.cpus)
        if self.fifo:
            os.sched_setscheduler(self.proc.pid, os.SCHED_FIFO, os.sched_param(1))
        self._pending: str | None = "hello"

    def wait_ready(self) -> None:
        """Wait for the child to have built its env (start several, then wait on each)."""
        if self._pending == "hello":
            self._await("hello", self._start_timeout_s)
        if self._tasks is None:
            self._tasks = [TaskSpec(**t) for t in self._call({"op": "tasks"})]

    def restart(self) -> None:
        """Kill this worker's process (dead, hung or healthy) and start a fresh one with the
        same env config and seed; returns once it is ready. Raises EnvWorkerError if the new
        one cannot start."""
        old = self.proc.pid
        self._discard_process()
        self._spawn()
        self.restarts += 1
        self.wait_ready()
        log.warning("env worker pid %d replaced by pid %d (restart %d of this slot)",
                    old, self.proc.pid, self.restarts)

    # async interface used by VectorRollout
    def start_reset(self, task_id: str, init_state_id: int) -> None:
        self._send({"op": "reset", "task_id": task_id, "init_state_id": int(init_state_id)})

    def start_chunk(self, actions: np.ndarray, steps_left: int, record_video: bool) -> None:
        self._send({"op": "chunk", "actions": pack_array(np.asarray(actions, np.float32)),
                    "steps_left": int(steps_left), "record_video": bool(record_video)})

    def result(self) -> Any:
        """(obs, env_s) after start_reset; ChunkResult after start_chunk (a malformed reply
        raises EnvWorkerError, like a dead worker)."""
        op = self._pending
        reply = self._await(op, self.reply_timeout_s)
        try:
            return decode_reply(op, reply)
        except WireError as exc:
            raise EnvWorkerError(f"env worker {self.proc.pid}: bad reply to {op}: "
                                 f"{exc}") from None

    # TaskEnv interface (blocking)
    def tasks(self) -> list[TaskSpec]:
        self.wait_ready()
        return list(self._tasks)

    def train_init_state_ids(self, task_id: str) -> list[int]:
        return self._call({"op": "train_ids", "task_id": task_id})

    def heldout_init_state_ids(self, task_id: str) -> list[int]:
        return self._call({"op": "heldout_ids", "task_id": task_id})

    def reset(self, task_id: str, init_state_id: int) -> dict[str, np.ndarray]:
        self.start_reset(task_id, init_state_id)
        return self.result()[0]

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        return self._call({"op": "step", "action": pack_array(np.asarray(action, np.float32)),
                           "render": bool(render)})

    def observe(self) -> dict[str, np.ndarray]:
        return self._call({"op": "observe"})

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._sock.send(dumps({"op": "close"}), zmq.NOBLOCK)
                self.proc.wait(timeout=10)
            except (zmq.ZMQError, subprocess.TimeoutExpired):
                self.proc.terminate()
                self.proc.wait(timeout=10)
        self._sock.close(0)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _discard_process(self) -> None:
        """SIGKILL (works on hung and stopped processes too), reap, drop socket and path."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._sock.close(0)
        shutil.rmtree(self._dir, ignore_errors=True)

    # plumbing
    def _send(self, msg: dict[str, Any]) -> None:
        if self._pending is not None:
            raise EnvWorkerError(f"env worker {self.proc.pid}: {msg['op']} sent before the "
                                 f"result of {self._pending} was read")
        code = self.proc.poll()
        if code is not None:
            raise EnvWorkerError(f"env worker {self.proc.pid} exited with code {code} "
                                 f"before {msg['op']}")
        # a PAIR socket blocks a send while its peer is gone: bound it
        if not self._sock.poll(int(self.send_timeout_s * 1000), zmq.POLLOUT):
            raise EnvWorkerError(f"env worker {self.proc.pid}: could not send {msg['op']} "
                                 f"in {self.send_timeout_s}s")
        self._sock.send(dumps(msg), zmq.NOBLOCK)
        self._pending = msg["op"]

    def _call(self, msg: dict[str, Any]) -> Any:
        self._send(msg)
        return self.result()

    def _await(self, op: str | None, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not self._sock.poll(500):
            code = self.proc.poll()
            if code is not None:
                raise EnvWorkerError(f"env worker {self.proc.pid} exited with code {code} "
                                     f"while doing {op}")
            if time.monotonic() > deadline:
                raise EnvWorkerError(f"env worker {self.proc.pid}: no reply to {op} in "
                                     f"{timeout_s}s")
        reply = loads(self._sock.recv())
        self._pending = None
        if not reply.get("ok"):
            raise EnvWorkerError(f"env worker {self.proc.pid} failed in {op}:\n"
                                 f"{reply.get('error')}")
        return reply


def libero_worker_count(requested: int, available_bytes: int | None = None,
                        force: bool = False) -> int:
    """How many LIBERO env workers to start: ``requested`` lowered to what fits in memory
    (``available_bytes``, default: psutil's figure now), with a warning when lowered. When not
    even one fits: EnvWorkerError, unless ``force`` (then 1, with a warning)."""
    import psutil

    from actors.envs.libero import (RESERVE_BYTES, WORKER_BYTES, libero_worker_capacity,
                                    libero_workers_that_fit)
    if available_bytes is None:
        available_bytes = psutil.virtual_memory().available
    gb = 1 << 30
    fit = libero_worker_capacity(available_bytes)
    figures = (f"{WORKER_BYTES / gb:.1f} GB per LIBERO env worker + {RESERVE_BYTES / gb:.1f} "
               f"GB reserve, {available_bytes / gb:.1f} GB available")
    if fit < 1 and not force:
        raise EnvWorkerError(f"not even one LIBERO env worker fits in memory ({figures}); "
                             "free memory, or force one worker with env.force_workers=true")
    count = libero_workers_that_fit(requested, available_bytes)
    if count < requested or fit < 1:
        log.warning("LIBERO: %d env workers requested, %d fit%s (%s); starting %d", requested,
                    max(fit, 0), "" if fit >= 1 else ", forced", figures, count)
    return count


def fifo_allowed() -> bool:
    """May this process give its children SCHED_FIFO priority 1 (root, or RLIMIT_RTPRIO)?"""
    import resource
    if not hasattr(os, "SCHED_FIFO"):
        return False
    soft = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= 1


def make_workers(env_cfg: Any, num_envs: int, seed: int, use_subprocess: bool, *,
                 available_bytes: int | None = None, force: bool = False,
                 cpus: Sequence[int] = (), fifo: bool = False
                 ) -> list[InProcessWorker | SubprocessWorker]:
    """``num_envs`` workers; a simulator whose spec asks for subprocess workers (LIBERO)
    always gets them, as many as its ``worker_count`` allows (LIBERO:
    :func:`libero_worker_count`, as many as fit in memory; ``available_bytes`` and ``force``
    or ``env_cfg.force_workers`` go to it). Subprocess workers run on ``cpus`` (empty: the
    caller's cores), under SCHED_FIFO if ``fifo``."""
    if num_envs < 1:
        raise ValueError(f"actor.num_envs must be >= 1, got {num_envs}")
    spec = env_spec(env_cfg.name)
    num_envs = spec.count_workers(num_envs, available_bytes,
                                  force or bool(getattr(env_cfg, "force_workers", False)))
    interpreter = spec.elsewhere()
    if use_subprocess or spec.subprocess_workers or interpreter:
        workers: list = []
        try:
            for i in range(num_envs):   # start all, then wait: the imports overlap
                # another interpreter imports its own torch and simulator first: minutes
                # on a busy machine, so its hello may take longer
                workers.append(SubprocessWorker(env_cfg, seed * 1000 + i, wait=False,
                                                  cpus=cpus, fifo=fifo, interpreter=interpreter,
                                                  start_timeout_s=600.0 if interpreter else 120.0))
            for w in workers:
                w.wait_ready()
        except BaseException:
            for w in workers:
                w.close()
            raise
        return workers
    from actors.envs import make_env
    return [InProcessWorker(make_env(env_cfg, seed * 1000 + i)) for i in range(num_envs)]

