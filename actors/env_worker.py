"""The child side of a subprocess env worker: one simulator in its own OS process.

Started by :class:`actors.env_workers.SubprocessWorker` (the parent side) as
``python -m actors.env_worker ADDRESS ENV_CONFIG_JSON SEED``: it connects a ZeroMQ PAIR socket
to ``ADDRESS``, builds the env from the ``EnvConfig`` JSON, says hello (``{"ok": True}``, or
``{"ok": False, "error": traceback}`` when the env cannot be built), then answers one request
at a time (msgpack maps, arrays as ``{dtype, shape, data}``) until ``close``, or until its
parent is gone. A request that fails is answered with its traceback, never by dying.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import asdict
from typing import Any

import zmq

from actors.env_workers import dumps, loads, pack_obs, run_chunk
from actors.envs.base import TaskEnv
from common.wire.codec import pack_array, unpack_array


def _handle(env: TaskEnv, msg: dict[str, Any]) -> dict[str, Any]:
    op = msg["op"]
    if op == "reset":
        t0 = time.perf_counter()
        obs = env.reset(msg["task_id"], msg["init_state_id"])
        return {"obs": pack_obs(obs), "env_s": time.perf_counter() - t0}
    if op == "chunk":
        r = run_chunk(env, unpack_array(msg["actions"], "actions"), msg["steps_left"],
                      msg["record_video"])
        return {"steps": r.steps, "success": r.success, "done": r.done, "obs": pack_obs(r.obs),
                "frames": [pack_array(f) for f in r.frames], "env_s": r.env_s, "info": r.info}
    if op == "step":
        r = env.step(unpack_array(msg["action"], "action"), render=msg["render"])
        return {"value": {"obs": pack_obs(r.obs), "success": bool(r.success),
                          "done": bool(r.done)}}
    if op == "tasks":
        return {"value": [asdict(t) for t in env.tasks()]}
    if op == "train_ids":
        return {"value": [int(i) for i in env.train_init_state_ids(msg["task_id"])]}
    if op == "heldout_ids":
        return {"value": [int(i) for i in env.heldout_init_state_ids(msg["task_id"])]}
    if op == "observe":
        return {"value": pack_obs(env.observe())}
    raise ValueError(f"unknown env worker op {op!r}")


def worker_main(address: str, env_cfg_json: str, seed: int) -> int:
    """Child process: build the env, then answer requests until ``close`` or orphaned."""
    from actors.envs import make_env
    from common.config.envs import env_config

    parent = os.getppid()
    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(address)
    try:
        env = make_env(env_config(json.loads(env_cfg_json)), seed)
    except Exception:
        sock.send(dumps({"ok": False, "error": traceback.format_exc()}))
        return 1
    sock.send(dumps({"ok": True}))
    while True:
        if not sock.poll(1000):
            if os.getppid() != parent:   # orphaned: the actor is gone
                break
            continue
        msg = loads(sock.recv())
        if msg.get("op") == "close":
            break
        try:
            reply = {"ok": True, **_handle(env, msg)}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        sock.send(dumps(reply))
    env.close()
    sock.close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(worker_main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
