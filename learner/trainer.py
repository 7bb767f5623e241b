"""The FSDP2 shell around GRPO: process group, sharding, optimiser, state gathering.

In: a policy (the same fresh or loaded weights on every rank), the algo and learner
configs, and on rank 0 the groups of each batch. Out: the sharded policy trained one
version per :meth:`Trainer.train`, full (unsharded, CPU) state dicts on rank 0 for the
weight broadcast and checkpoints. Started by ``pushcut learner`` (learner/learner_process.py),
one OS process per rank; rank 0 does all I/O and sends each batch to the other ranks over
torch.distributed as msgpack wire records (no pickle).

Sharding: every submodule whose class is listed in the model's ``_no_split_modules``
(the transformers convention, e.g. the transformer blocks) is one FSDP unit, then the root.
A single rank without bf16 is not wrapped at all (plain module, same optimiser and state
dict calls): FSDP would only add overhead there.
On GPU with ``learner.bf16`` parameters compute in bf16 and gradients reduce in fp32
(``MixedPrecisionPolicy``). Gradients are *summed* over ranks (divide factor 1): the loss
weights already divide by the trajectory count of the whole batch (learner/loss.py), so the
2-rank gradient equals the 1-rank one.
"""
from __future__ import annotations

import os
import socket
import warnings
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from common.config.schema import AlgoConfig, LearnerConfig
from common.wire.trajectory import Trajectory
from learner.batch import collate, pack_groups, rank_trajectories, stack, unpack_groups
from learner.grpo import GRPO, make_optimizer

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
# broadcast_from_rank0 with flatten_optimizer_state_dict=True fails in torch 2.13 (KeyError
# 'state'), so optimiser state travels nested; learner/checkpoint.py flattens it for disk.
FROM_RANK0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_backend(cfg: LearnerConfig) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    return "nccl" if cfg.device.startswith("cuda") else "gloo"


def init_process_group(rank: int, world_size: int, init_method: str, cfg: LearnerConfig,
                       timeout_s: float = 1800.0) -> torch.device:
    """Join the learner's process group -> this rank's device (``cuda:rank`` on GPU)."""
    device = torch.device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group(resolve_backend(cfg), init_method=init_method, rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout_s))
    return device


def shard_policy(policy: torch.nn.Module, mp_policy: MixedPrecisionPolicy | None = None
                 ) -> torch.nn.Module:
    """fully_shard the ``_no_split_modules`` blocks, then the root; gradients sum over ranks."""
    # FSDP2 warns that a module returning a view could lose its pre-backward hook to an
    # in-place op on that view; GRPO only applies out-of-place ops to policy outputs.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    kwargs = {"mp_policy": mp_policy} if mp_policy is not None else {}
    names = set(getattr(policy, "_no_split_modules", None) or ())
    for module in list(policy.modules()):
        if module is not policy and type(module).__name__ in names:
            fully_shard(module, **kwargs)
    fully_shard(policy, **kwargs)
    for module in policy.modules():
        if isinstance(module, FSDPModule):
            # a plain SUM (gloo has no PREMUL_SUM for a custom factor)
            module.set_force_sum_reduction_for_comms(True)
            module.set_gradient_divide_factor(1.0)
    return policy


def broadcast_bytes(data: bytes | None, device: torch.device, src: int = 0) -> bytes:
    """Rank ``src`` sends ``data``; every rank returns it."""
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    if int(size.item()) == 0:
        return b""
    if dist.get_rank() == src:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buf = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buf, src)
    return bytes(buf.cpu().numpy().tobytes())


class Trainer:
    """The sharded policy, its AdamW and the GRPO logic on one rank.

    Every method is collective: all ranks call it in the same order (rank 0 with the data).
    """

    def __init__(self, policy: torch.nn.Module, algo_cfg: AlgoConfig, learner_cfg: LearnerConfig,
                 device: torch.device, policy_version: int = 0, reference: Any | None = None):
        self.device = device
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        policy = policy.to(device)
        bf16 = learner_cfg.bf16 and device.type == "cuda"
        # one rank without bf16 has nothing to shard or cast: FSDP would only add overhead
        self.sharded = self.world_size > 1 or bf16
        if self.sharded:
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
                if bf16 else None
            policy = shard_policy(policy, mp)
        self.policy = policy
        self.optimizer = make_optimizer(self.policy.parameters(), algo_cfg)
        if reference is not None:
            reference = reference.to(device).eval().requires_grad_(False)
        self.grpo = GRPO(self.policy, self.optimizer, algo_cfg, policy_version, reference)

    @property
    def policy_version(self) -> int:
        return self.grpo.policy_version

    @policy_version.setter
    def policy_version(self, value: int) -> None:
        self.grpo.policy_version = value

    def train(self, groups: list[list[Trajectory]] | None,
              replay: list[Trajectory] | None = None) -> dict[str, float]:
        """One GRPO update on the groups rank 0 passes (others pass None), with rank 0's
        replayed successes (learner/replay.py; sent as one more group) -> stats."""
        sent = [*groups, replay or []] if self.rank == 0 else None
        raw = broadcast_bytes(pack_groups(sent) if self.rank == 0 else None, self.device)
        *groups, replay = sent if self.rank == 0 else unpack_groups(raw)
        batch = collate(groups, self.grpo.cfg.adv_eps)
        mine = batch.select(rank_trajectories(batch.num_trajectories, self.rank,
                                              self.world_size))
        replayed = None
        if replay:
            share = rank_trajectories(len(replay), self.rank, self.world_size, allow_empty=True)
            if len(share):
                # advantage 1: imitation_loss weighs by the replay weights, not advantages
                replayed = stack([replay[i] for i in share], torch.ones(len(share)))
        return self.grpo.update(mine, total_trajectories=batch.num_trajectories,
                                replay=replayed, total_replay=len(replay))

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unsharded CPU weights on rank 0 ({} on the other ranks)."""
        return get_model_state_dict(self.policy, options=FULL)

    def optimizer_state_dict(self) -> dict[str, Any]:
        """Full optimiser state on rank 0: {'state': {param: {key: tensor}},
        'param_groups': [{..., 'params': [param names]}]} ({} elsewhere)."""
        return get_optimizer_state_dict(self.policy, self.optimizer, options=FULL)

    def load_state(self, model_sd: dict[str, torch.Tensor] | None,
                   optim_sd: dict[str, Any] | None) -> None:
        """Rank 0 passes full state dicts (None: keep that part as it is; rank 0's dicts are
        left unchanged); they are broadcast into every rank's shards. Other ranks pass None."""
        flags = broadcast_bytes(bytes([model_sd is not None, optim_sd is not None])
                                if self.rank == 0 else None, self.device)
        if flags[0]:
            # set_*_state_dict replace the values of the dicts they get by local shards: copy
            model_sd = dict(model_sd) if self.rank == 0 else {}
            set_model_state_dict(self.policy, model_sd, options=FROM_RANK0)
        if flags[1]:
            optim_sd = {"state": {k: dict(v) for k, v in optim_sd["state"].items()},
                        "param_groups": [dict(g) for g in optim_sd["param_groups"]]
                        } if self.rank == 0 else {}
            set_optimizer_state_dict(self.policy, self.optimizer, optim_sd, options=FROM_RANK0)


def seed_everything(seed: int) -> None:
    """The same initial weights on every rank (they are built before sharding)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
