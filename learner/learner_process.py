"""``pushcut learner``: the GRPO learner process — FSDP ranks, filter, weight broadcast,
checkpoints, metrics.

In: complete groups in the trajectory store at ``store.path`` (ingested by ``pushcut store``
or, with ``learner.host_store=true``, by an ingest thread in this process); actor heartbeats
on ``learner.heartbeat_address``. Out: a new ``policy_version`` per update, announced and
served on ``learner.announce_address`` / ``learner.weights_address``; checkpoints in
``learner.checkpoint_dir`` every ``learner.checkpoint_every`` versions and at shutdown; one
JSONL line per version in ``<run_dir>/learner.jsonl`` (and W&B, offline unless logged in).

    pushcut learner store.path=runs/x/store learner.checkpoint_dir=runs/x/checkpoints \\
        model.checkpoint=runs/x/sft learner.world_size=2 run_dir=runs/x

Ranks: this process is rank 0 and does all I/O; ``learner.world_size - 1`` more ranks are
spawned (one OS process each) and follow rank 0's commands over torch.distributed. On start
the newest checkpoint is resumed automatically (weights, optimiser, version, consumption
marks, RNG); versions published after that checkpoint are never published again with other
weights: the resumed weights get the next unused number (learner/lineage.py).
``learner.max_versions``: stop once policy_version reaches it (an absolute version, so a
resumed run stops at the same place). SIGINT/SIGTERM: finish the update in progress, write a
checkpoint, stop the other ranks, exit 0; a second signal leaves at once (no final
checkpoint: a restart resumes from the last one).
"""
from __future__ import annotations

import copy
import ctypes
import json
import logging
import signal
import sys
import threading

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from common.config.schema import PushcutConfig
from common.process import USAGE_ERROR, StopSignals, setup_logging, unexpected_arguments
from learner.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, restore_rng
from learner.learner import Learner
from learner.lineage import Lineage, LineageError
from learner.ranks import effective_algo, follow
from learner.trainer import Trainer, broadcast_bytes, free_port, init_process_group

log = logging.getLogger("pushcut.learner")


def cfg_to_yaml(cfg: PushcutConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def cfg_from_yaml(text: str) -> PushcutConfig:
    merged = OmegaConf.merge(OmegaConf.structured(PushcutConfig), OmegaConf.create(text))
    return OmegaConf.to_object(merged)


def initial_policy(cfg: PushcutConfig, checkpoint: Checkpoint | None):
    """The checkpoint's exported policy when resuming, else model.checkpoint / fresh."""
    from common.models import build_policy, load_policy
    if checkpoint is not None:
        return load_policy(checkpoint.policy_dir)
    return build_policy(cfg.model)


def _die_with_parent() -> None:
    """A follower rank must not outlive rank 0 (e.g. rank 0 SIGKILLed): Linux only."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_rank(rank: int, world_size: int, init_method: str, cfg_yaml: str,
             stop: threading.Event | None = None) -> dict:
    """One learner rank from start to stop. Rank 0 returns its final summary."""
    cfg = cfg_from_yaml(cfg_yaml)
    if rank > 0:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # rank 0 decides when to stop
    if cfg.learner.torch_threads:
        torch.set_num_threads(cfg.learner.torch_threads)
    device = init_process_group(rank, world_size, init_method, cfg.learner)
    try:
        found = latest_checkpoint(cfg.learner.checkpoint_dir) if rank == 0 else None
        path = broadcast_bytes(str(found).encode() if found else b"", device).decode()
        ckpt = load_checkpoint(path) if path else None
        # every rank counts from the version the resumed weights are published as
        lineage = Lineage.load(cfg.learner.checkpoint_dir) if rank == 0 else None
        start = lineage.resume(ckpt.policy_version if ckpt else None) if lineage else None
        start = int(broadcast_bytes(str(start).encode() if lineage else None, device))
        policy = initial_policy(cfg, ckpt)
        template = copy.deepcopy(policy) if rank == 0 else None
        reference = None
        if cfg.algo.kl_coef != 0:
            from common.models import build_policy
            reference = build_policy(cfg.model)
        trainer = Trainer(policy, effective_algo(cfg), cfg.learner, device,
                          policy_version=start, reference=reference)
        if ckpt is not None:
            trainer.load_state(None, ckpt.optimizer if rank == 0 else None)
            restore_rng(ckpt.rng["tensors"], ckpt.rng["states"])
        if rank > 0:
            follow(trainer)
            return {}
        with Learner(cfg, trainer, template, stop or threading.Event(), ckpt,
                     lineage) as learner:
            return learner.run()
    finally:
        dist.destroy_process_group()


def _follower_entry(rank: int, world_size: int, init_method: str, cfg_yaml: str) -> None:
    run_rank(rank, world_size, init_method, cfg_yaml)


# how long rank 0 waits for each follower rank to exit: a clean stop, or a hurried one
FOLLOWER_JOIN_S = 60.0
HURRIED_FOLLOWER_JOIN_S = 5.0


def main(cfg: PushcutConfig, args: list[str]) -> int:
    """``pushcut learner [key=value ...]``."""
    if unexpected_arguments("learner", args):
        return USAGE_ERROR
    setup_logging()
    effective_algo(cfg)   # reject a bad mode before starting anything
    try:
        Lineage.load(cfg.learner.checkpoint_dir)   # and an unreadable record of versions
    except LineageError as err:
        print(f"pushcut learner: {err}", file=sys.stderr)
        return 1
    world_size = max(1, cfg.learner.world_size)
    init_method = f"tcp://127.0.0.1:{free_port()}"
    cfg_yaml = cfg_to_yaml(cfg)
    # an update cannot be cut short from outside: a second signal leaves at once instead
    signals = StopSignals(log, stopping="stopping after the update in progress",
                          exit_on_hurry=True).install()
    ctx = mp.get_context("spawn")
    followers = [ctx.Process(target=_follower_entry, name=f"learner-rank{r}", daemon=True,
                             args=(r, world_size, init_method, cfg_yaml))
                 for r in range(1, world_size)]
    for p in followers:
        p.start()
    try:
        summary = run_rank(0, world_size, init_method, cfg_yaml, signals.stop)
    finally:
        for p in followers:
            p.join(timeout=HURRIED_FOLLOWER_JOIN_S if signals.hurry.is_set()
                   else FOLLOWER_JOIN_S)
            if p.is_alive():
                log.warning("rank %s did not stop; terminating it", p.name)
                p.terminate()
    print("learner stopped: " + json.dumps(summary, default=str), flush=True)
    return 0
