"""The config schema: one dataclass per concern, each field with its default, its rules
(:mod:`common.config.rules`) and its docstring under it.

The defaults are the tuned ones that ``pushcut`` runs with: ``PushcutConfig()`` is what
``load_config([])`` composes (the ``env``/``model``/... group options are these dataclasses,
registered in :mod:`common.config.loading`). The GRPO settings follow SimpleVLA-RL (group
size 8, clip 0.2/0.28, dynamic sampling 0.1..0.9) with the step sized for the tiny VLA on the
built-in suite (see AlgoConfig). One spelling per concept: ``policy_version``, ``group_id``,
``task_id``, ``init_state_id``. The env section is in :mod:`common.config.envs`, the
one-shot commands' configs (demos, sft, eval, bench, run) in :mod:`common.config.commands`;
both importable from here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from common.config.commands import BenchConfig, DemosConfig, EvalConfig, RunConfig, SftConfig
from common.config.endpoints import client_address, default_ports, port_table, server_address
from common.config.envs import EnvConfig, LiberoEnvConfig, TabletopEnvConfig
from common.config.rules import (
    ConfigError, at_least, in_range, not_above, one_of, positive, problems, setting,
)

__all__ = [
    "EnvConfig", "TabletopEnvConfig", "LiberoEnvConfig", "ModelConfig", "AlgoConfig",
    "StoreConfig", "ActorConfig", "LearnerConfig", "DemosConfig", "SftConfig", "EvalConfig",
    "BenchConfig", "RunConfig", "DeployConfig", "PlacementConfig", "PushcutConfig",
    "ConfigError", "DTYPE_NAMES",
]

# torch dtypes a policy may compute in (common/models maps each to its torch.dtype)
DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    """Which policy. ``kwargs`` go to the model's own config class."""
    name: str = "tiny_vla"
    """tiny_vla | openvla_oft"""
    preset: str = "default"
    """tiny_vla: default; openvla_oft: tiny | 7b"""
    checkpoint: Optional[str] = None
    """a save_pretrained directory to start from"""
    chunk_size: int = setting(8, at_least(1))
    """C: control steps per model call"""
    action_dim: int = setting(7, at_least(1))
    """D: action dimensions per control step"""
    num_bins: int = setting(7, at_least(2))
    """action bins per dimension (the token vocabulary of one action dimension). 7 for the
    tiny VLA: the built-in suite's expert acts in about 3 values per dimension, 5+ bins keep
    it at 100 % (docs/models.md), and fewer bins make RL's choices coarse; OpenVLA-OFT: 256"""
    dtype: str = setting("float32", one_of(*DTYPE_NAMES))
    """what the policy computes in: float32 | bfloat16 | float16"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass (less memory, more compute)"""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """overrides of the preset's fields of the model's config class"""


@dataclass
class AlgoConfig:
    """Importance-corrected GRPO (see docs/design.md, 'The loss'): SimpleVLA-RL's clip-higher
    (0.2/0.28) and dynamic sampling (0.1..0.9), with the step sized for the tiny VLA on the
    built-in suite (the 7B model uses lr 5e-6)."""
    group_size: int = setting(8, at_least(2))
    """episodes per group (one task and init state)"""
    temperature: float = setting(1.0, positive())
    """the actors' sampling temperature (> 0: RL needs samples that differ; greedy evaluation
    is ``eval.temperatures``' 0), and the one the learner trains at: records sampled at
    another are refused by the store or set aside. 1.0: the 7-bin tiny VLA samples as well
    as it acts greedily on the built-in suite (T 1.6 blurred the 256-bin policy to 0
    successes)"""
    clip_low: float = setting(0.2, in_range(0, 1, open_high=True))
    """the policy ratio is clipped below at 1 - clip_low"""
    clip_high: float = setting(0.28, in_range(0))
    """... and above at 1 + clip_high"""
    is_cap: float = setting(2.0, positive())
    """cap on the importance weight exp(proximal - behaviour log-prob) that corrects for the
    actors' stale policies"""
    adv_eps: float = 1e-6
    """added to a group's reward std when normalising advantages"""
    kl_coef: float = 0.0
    """KL penalty to a reference policy (0 = none)"""
    entropy_coef: float = 0.0
    """entropy bonus (0 = none)"""
    lr: float = setting(3e-5, positive())
    """learning rate. 3e-5 in 4 mini-batches of 16 groups, so that the clip bounds every
    step: lr 1e-4 in one step per batch drove training success from 0.11 to 0.01 in 10
    versions (docs/results.md)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    grad_clip: float = setting(1.0, positive())
    """clip the gradient's global norm to this"""
    groups_per_batch: int = setting(16, at_least(1))
    """GRPO groups per optimiser step"""
    micro_batch_size: int = setting(16, at_least(1))
    """trajectories per forward/backward"""
    epochs_per_batch: int = setting(1, at_least(1))
    """gradient passes over each batch"""
    mini_batches: int = setting(4, at_least(1))
    """optimiser steps per epoch: the batch is cut into this many mini-batches (with more
    than one step per batch the PPO clip bounds each step)"""
    success_lo: float = setting(0.1, in_range(0, 1))
    """keep a group only if lo <= success rate <= hi"""
    success_hi: float = setting(0.9, in_range(0, 1))
    """see success_lo"""
    max_staleness: int = setting(4, at_least(0))
    """drop trajectories more than this many versions behind"""
    replay_trajectories: int = setting(0, at_least(0))
    """success replay (self-imitation): successful trajectories from earlier batches, drawn
    round-robin over tasks from learner.replay's buffer, whose log-likelihood is added to
    every update (0 = off). It keeps what RL learned on one task while updates for the
    tasks beside it move the shared weights (docs/results.md, "Success replay")"""
    replay_coef: float = setting(1.0, positive())
    """the weight of one replayed success, relative to a fresh trajectory of advantage 1 in
    the batch: its token-mean log-likelihood is divided by the batch's trajectory count"""
    replay_per_task: int = setting(16, at_least(1))
    """the newest this many successes of each task stay in the replay buffer"""
    max_backlog_batches: Optional[int] = setting(None, at_least(1, nullable=True))
    """mode=async: the learner tells the actors to hold their next round while the store
    holds at least this many batches of groups it would train on, so that they do not
    generate groups that go stale before the learner reaches them and leave the cores to
    the learner meanwhile (None: never hold)"""

    def joint_problems(self, prefix: str) -> list[str]:
        found = not_above(self, prefix, "success_lo", "success_hi")
        # the replayed successes take one micro-batch in each optimiser step
        room = self.micro_batch_size * self.mini_batches
        if self.replay_trajectories > room:
            found.append(f"{prefix}replay_trajectories={self.replay_trajectories}: must be "
                         f"<= micro_batch_size x mini_batches = {room}")
        return found


@dataclass
class StoreConfig:
    """The LMDB trajectory store and its ZeroMQ ingest."""
    path: str = "runs/store"
    """the LMDB directory"""
    ingest_address: str = server_address("store")
    """where the store binds its ingest (ROUTER)"""
    capacity: int = setting(20000, at_least(1))
    """trajectories kept; beyond it evict consumed, then stalest"""
    accept_expert: bool = False
    """hold expert records (policy_version -1, demonstrations); an RL store refuses them
    (rejection reason expert_record)"""
    map_size_mb: int = setting(256, at_least(1))
    """initial LMDB map; grows on MapFullError"""
    max_message_mb: int = setting(64, at_least(1))
    """larger trajectory messages are rejected (too_large)"""
    max_batch: int = setting(64, at_least(1))
    """received messages committed in one LMDB transaction"""
    max_batch_mb: int = setting(4, at_least(1))
    """... and about this many MB (big transactions are slower)"""
    log_every_s: float = setting(5.0, positive())
    """a throughput log line every this many seconds"""
    curve_secret_key: Optional[str] = None
    """path to this server's secret key file (CURVE; None = no encryption)"""
    curve_authorized_dir: Optional[str] = None
    """directory of accepted client public keys"""


@dataclass
class ActorConfig:
    """A rollout actor."""
    actor_id: Optional[str] = None
    """default: host-pid"""
    num_envs: int = setting(8, at_least(1))
    """E env workers"""
    double_buffer: bool = True
    """with subprocess env workers, overlap one half of the envs' stepping with the
    policy's forward pass for the other half (two forward passes of half the batch per
    decision step); no effect with in-process workers"""
    device: str = "cpu"
    """where the policy runs"""
    seed: int = 0
    """scheduling and sampling seed (mixed with actor_id)"""
    store_address: str = client_address("store")
    """the store's ingest, where trajectories go"""
    weights_address: str = client_address("weights")
    """learner's weight server (chunked fetches)"""
    announce_address: str = client_address("announce")
    """learner's version announcements (SUB)"""
    task_weights: dict[str, float] = field(default_factory=dict)
    """sampling weight per task_id or family; unnamed tasks weigh 1.0 (empty = uniform)"""
    adaptive_tasks: bool = False
    """also weight each task by the chance its groups land inside the filter window
    (algo.success_lo..hi), from its recent success in this actor's groups"""
    adaptive_floor: float = setting(0.1, in_range(0, 1, open_low=True))
    """least weight factor of a task under adaptive_tasks (0-1], so none is abandoned"""
    max_in_flight: int = setting(64, at_least(1))
    """unacknowledged trajectories before send() blocks"""
    resend_after_s: float = setting(5.0, positive())
    """resend a trajectory not acknowledged after this long"""
    max_groups: Optional[int] = setting(None, at_least(1, nullable=True))
    """stop after this many groups (None = until SIGTERM)"""
    subprocess_envs: bool = False
    """one subprocess per env worker (LIBERO always)"""
    log_every_s: float = setting(5.0, positive())
    """a log line every this many seconds"""
    heartbeat_s: float = setting(2.0, positive())
    """a heartbeat to the learner every this many seconds"""
    heartbeat_address: str = client_address("heartbeat")
    """learner's heartbeat PULL socket (and any other listener, comma-separated)"""
    curve_server_key: Optional[str] = None
    """path to the servers' public key file (CURVE; needed with curve_secret_key)"""
    curve_secret_key: Optional[str] = None
    """path to this actor's secret key file (CURVE; None = no encryption)"""
    policy: str = setting("model", one_of("model", "expert"))
    """model (cfg.model) | expert (tabletop scripted expert, for smoke tests)"""
    torch_threads: Optional[int] = 1
    """intra-op threads for CPU inference (None: torch's default)"""
    weights_wait_s: float = 5.0
    """at start, wait this long for a learner's weights"""
    flush_timeout_s: float = 10.0
    """at exit, wait this long for the store's acks"""
    sync_wait_s: float = 600.0
    """longest wait for the learner between rounds, in mode=sync or while it holds the
    actors on its backlog (algo.max_backlog_batches)"""
    ack_log: Optional[str] = None
    """append each acknowledged trajectory_id to this file"""


@dataclass
class LearnerConfig:
    """The learner process: trainer, filter, broadcast, checkpoints."""
    device: str = "cpu"
    """where the policy trains (cuda: one GPU per rank)"""
    world_size: int = setting(1, at_least(1))
    """FSDP ranks started by `pushcut learner`"""
    backend: str = setting("auto", one_of("auto", "gloo", "nccl"))
    """auto: nccl on cuda, gloo on cpu"""
    bf16: bool = False
    """on GPU: parameters compute in bf16, gradients reduce in fp32"""
    torch_threads: Optional[int] = 1
    """intra-op CPU threads per rank (None: torch's default, one per core). 1: actors share
    the machine, and the learner's OpenMP threads would wait on them (measured 15 s per
    update with 2 threads against 2 busy actors on 2 cores)"""
    max_versions: Optional[int] = setting(None, at_least(1, nullable=True))
    """stop after this many optimiser steps"""
    max_wall_s: Optional[float] = setting(None, positive(nullable=True))
    """... or after this many seconds since the learner started (carried over a resume by the
    checkpoint)"""
    snapshot_every: int = setting(10, at_least(0))
    """policy snapshot to <run_dir>/snapshots every this many versions and at the end, never
    pruned (0 = none)"""
    checkpoint_dir: str = "runs/checkpoints"
    """where training checkpoints go"""
    checkpoint_every: int = setting(10, at_least(1))
    """a checkpoint every this many versions (and at shutdown)"""
    keep_checkpoints: int = setting(2, at_least(1))
    """the newest this many checkpoints are kept"""
    weights_address: str = server_address("weights")
    """where the weight server binds (ROUTER)"""
    announce_address: str = server_address("announce")
    """where version announcements are published (PUB)"""
    weight_chunk_mb: int = setting(4, at_least(1))
    """weights are served in chunks of this many MB"""
    host_store: bool = False
    """run the store ingest inside the learner process"""
    poll_s: float = setting(0.2, positive())
    """the learner's wait between polls of the store while no batch is ready"""
    heartbeat_timeout_s: float = setting(10.0, positive())
    """an actor with no heartbeat for this long counts as dead"""
    heartbeat_address: str = server_address("heartbeat")
    """where actor heartbeats arrive (PULL)"""
    stall_s: float = setting(30.0, positive())
    """heartbeats but no env-step progress this long: stalled"""
    curve_secret_key: Optional[str] = None
    """path to this server's secret key file (CURVE; None = no encryption)"""
    curve_authorized_dir: Optional[str] = None
    """directory of accepted client public keys"""


@dataclass
class DeployConfig:
    """Placement on a Ray cluster (``pushcut deploy``); Ray is used only in ``deploy/``."""
    address: str = "auto"
    """Ray cluster address (``ray start --head`` first)"""
    namespace: str = "pushcut"
    """Ray namespace of the named actors"""
    advertise_host: Optional[str] = None
    """host actors dial for store/learner; None = its node IP"""
    bind_host: str = "0.0.0.0"
    """where the store and learner bind their sockets"""
    ports: dict[str, int] = setting(default_ports(), port_table())
    """the port of each endpoint (common/config/endpoints.py): store, weights, announce,
    heartbeat"""
    actor_cpus: float = 1.0
    """Ray CPUs per rollout actor"""
    actor_gpus: float = 0.0
    """Ray GPUs per rollout actor"""
    learner_cpus: float = 1.0
    """Ray CPUs for the learner"""
    learner_gpus: float = 0.0
    """Ray GPUs for the learner"""
    head_resource: Optional[str] = None
    """custom resource that pins store + learner to a node"""
    max_restarts: int = -1
    """Ray actor restarts (-1 = unlimited)"""
    status_every_s: float = 5.0
    """status refresh period"""
    duration_s: Optional[float] = None
    """stop everything after this long (None = until Ctrl-C)"""


@dataclass
class PlacementConfig:
    """Which CPU cores each role's processes may run on (Linux affinity, applied by the
    launchers' supervisor to the role's process and inherited by its threads and children:
    env workers, learner ranks); an empty list leaves the role on every core. On a Ray
    cluster the ids are the cores of the node the role lands on. GPUs: ``actor.device``,
    ``learner.device``."""
    learner: list[int] = field(default_factory=list)
    """cores of the learner (all its ranks)"""
    actors: list[int] = field(default_factory=list)
    """cores of every actor (its inference) and, unless ``env_workers`` is set, its env
    workers"""
    env_workers: list[int] = field(default_factory=list)
    """cores of the actors' subprocess env workers (the simulators), apart from the
    actor's inference as CPU simulators are from a GPU policy; empty: the actor's cores"""
    env_workers_fifo: bool = False
    """schedule the subprocess env workers first-in first-out (Linux SCHED_FIFO; needs root
    or RLIMIT_RTPRIO >= 1): simulators sharing a core then step their chunks in the order
    the policy sent them, so the half of the envs it waits for comes back first"""
    actors_nice: int = setting(10, in_range(0, 19, integer=True))
    """CPU priority of every actor, its env workers and ``pushcut run``'s snapshot evaluator
    (Linux nice, 0-19; raising it needs no privilege): above 0, a learner sharing their
    cores runs its update as soon as it has a batch, while they take the cycles left over
    (10 on 2 shared cores: 8.4 s per version against 11.8 s at 0, and 23.5 k env steps
    generated per version against 41.8 k, docs/results.md)"""
    store: list[int] = field(default_factory=list)
    """cores of the store"""
    evaluator: list[int] = field(default_factory=list)
    """cores of ``pushcut run``'s snapshot evaluator"""


MODES = ("async", "sync")
"""the schedules a run can use; the experiment, the report and the pipeline benchmark
compare them in this order"""


@dataclass
class PushcutConfig:
    """Root config. ``mode``: async (default) or sync (the paper's lock-step schedule).
    Construction checks every value against its field's rules: :class:`ConfigError` lists
    the bad ones."""
    run_dir: str = "runs/default"
    """where a run's files go"""
    seed: int = 0
    """the run's seed"""
    mode: str = setting("async", one_of(*MODES))
    """async | sync (the paper's lock-step schedule, for comparison)"""
    num_actors: int = setting(2, at_least(1))
    """rollout actors started by the launchers"""
    wandb: bool = True
    """also log metrics to Weights & Biases"""
    env: EnvConfig = field(default_factory=TabletopEnvConfig)
    """the simulator and its tasks (a subclass per simulator: common/config/envs.py)"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """the policy"""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """the RL algorithm"""
    store: StoreConfig = field(default_factory=StoreConfig)
    """the trajectory store"""
    actor: ActorConfig = field(default_factory=ActorConfig)
    """each rollout actor"""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """the learner"""
    demos: DemosConfig = field(default_factory=DemosConfig)
    """``pushcut demos``"""
    sft: SftConfig = field(default_factory=SftConfig)
    """``pushcut sft``"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """``pushcut eval``"""
    bench: BenchConfig = field(default_factory=BenchConfig)
    """``pushcut bench``"""
    run: RunConfig = field(default_factory=RunConfig)
    """``pushcut run``"""
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    """which cores each role runs on"""
    deploy: DeployConfig = field(default_factory=DeployConfig)
    """``pushcut deploy``"""

    def __post_init__(self) -> None:
        # a bad value is refused where the config is made, so a Python caller hears of it
        # as the command line does: every bad value, one line each
        found = problems(self)
        if found:
            raise ConfigError(found)
