"""Rank helpers of ``pushcut learner``: the commands rank 0 broadcasts and the loop the
other ranks run to follow them, plus the algo settings a mode implies.

In: a :class:`~learner.trainer.Trainer` on every rank. Out: on ranks >= 1, the collective
half of each operation rank 0 announces (``train``, ``state``, ``checkpoint``, ``stop``).
Used by learner/learner_process.py (the process) and learner/learner.py (rank 0's loop).
"""
from __future__ import annotations

import dataclasses

import msgpack

from common.config.schema import PushcutConfig
from learner.trainer import Trainer, broadcast_bytes


def effective_algo(cfg: PushcutConfig):
    """mode=sync trains only on groups of the current version (staleness 0)."""
    return dataclasses.replace(cfg.algo, max_staleness=0) if cfg.mode == "sync" else cfg.algo


def send_command(op: str, device) -> None:
    broadcast_bytes(msgpack.packb({"op": op}), device)


def follow(trainer: Trainer) -> None:
    """Ranks >= 1: do the collective half of whatever rank 0 announces, until 'stop'."""
    while True:
        op = msgpack.unpackb(broadcast_bytes(None, trainer.device))["op"]
        if op == "train":
            trainer.train(None)
            trainer.full_state_dict()
        elif op == "state":
            trainer.full_state_dict()
        elif op == "checkpoint":
            trainer.optimizer_state_dict()
        elif op == "stop":
            return
        else:
            raise RuntimeError(f"rank {trainer.rank}: unknown command {op!r} from rank 0")
