"""The config schema: dataclasses mirrored by the YAML groups in ``configs/``.

Defaults follow SimpleVLA-RL (group size 8, temperature 1.6, clip 0.2/0.28, ...). One
spelling per concept: ``policy_version``, ``group_id``, ``task_id``, ``init_state_id``. Each
field's docstring is the string under it. The one-shot commands' configs (demos, sft, eval,
bench) are in :mod:`common.config.commands` and importable from here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from common.config.commands import BenchConfig, DemosConfig, EvalConfig, RunConfig, SftConfig

__all__ = [
    "EnvConfig", "ModelConfig", "AlgoConfig", "StoreConfig", "ActorConfig", "LearnerConfig",
    "DemosConfig", "SftConfig", "EvalConfig", "BenchConfig", "RunConfig", "DeployConfig",
    "PlacementConfig",
    "PushcutConfig",
    "LOCAL_HOST", "STORE_PORT", "WEIGHTS_PORT", "ANNOUNCE_PORT", "HEARTBEAT_PORT",
    "tcp_address", "STORE_ADDRESS", "WEIGHTS_ADDRESS", "ANNOUNCE_ADDRESS", "HEARTBEAT_ADDRESS",
]

# -- the four network endpoints, defined once ------------------------------------------------
LOCAL_HOST = "127.0.0.1"
STORE_PORT = 5555       # the store's trajectory ingest (ROUTER)
WEIGHTS_PORT = 5556     # the learner's weight server (ROUTER; actors fetch with DEALER)
ANNOUNCE_PORT = 5557    # the learner's version announcements (PUB)
HEARTBEAT_PORT = 5558   # the learner's heartbeat PULL socket


def tcp_address(port: int, host: str = LOCAL_HOST) -> str:
    return f"tcp://{host}:{port}"


STORE_ADDRESS = tcp_address(STORE_PORT)
WEIGHTS_ADDRESS = tcp_address(WEIGHTS_PORT)
ANNOUNCE_ADDRESS = tcp_address(ANNOUNCE_PORT)
HEARTBEAT_ADDRESS = tcp_address(HEARTBEAT_PORT)


@dataclass
class EnvConfig:
    """Which simulator and which tasks."""
    name: str = "tabletop"
    """tabletop (built-in MuJoCo suite) | libero | probe (tasks with a known answer)"""
    suite: str = "all"
    """tabletop: spatial|object|goal|long|all; libero: libero_spatial, ..."""
    layout: str = "nominal"
    """tabletop initial states: nominal (each task one scene, jittered by a few cm, like
    LIBERO) | uniform (objects anywhere on the table: a generalisation suite)"""
    tasks: list[str] = field(default_factory=list)
    """explicit task_ids; empty = every task of the suite"""
    image_size: int = 64
    """agentview side in pixels"""
    wrist_camera: bool = False
    """a second camera on the wrist (V = 2 views)"""
    max_steps: Optional[int] = None
    """None = the family's / suite's own step limit"""
    num_train_init_states: int = 40
    """training init_state_ids are [0, num_train)"""
    num_heldout_init_states: int = 10
    """held-out ids follow, disjoint from training (the tabletop config sets 50: enough
    distinct states for +-3 points; a LIBERO task has 50 init states in all)"""
    settle_steps: int = 10
    """LIBERO: no-op steps after reset while objects settle"""
    center_crop: bool = False
    """LIBERO: OpenVLA-style centre crop"""
    center_crop_scale: float = 0.9
    """LIBERO: area fraction kept by the centre crop (OpenVLA: 0.9)"""
    render_size: Optional[int] = None
    """LIBERO: pixels rendered before the resize to image_size (OpenVLA-OFT: 256);
    None = render at image_size"""
    force_workers: bool = False
    """LIBERO: start one env worker even when none fits in free memory"""


@dataclass
class ModelConfig:
    """Which policy. ``kwargs`` go to the model's own config class."""
    name: str = "tiny_vla"
    """tiny_vla | openvla_oft"""
    preset: str = "default"
    """tiny_vla: default; openvla_oft: tiny | 7b"""
    checkpoint: Optional[str] = None
    """a save_pretrained directory to start from"""
    chunk_size: int = 8
    """C: control steps per model call"""
    action_dim: int = 7
    """D: action dimensions per control step"""
    num_bins: int = 256
    """action bins per dimension (the token vocabulary of one action dimension)"""
    dtype: str = "float32"
    """float32 | bfloat16"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass (less memory, more compute)"""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """overrides of the preset's fields of the model's config class"""


@dataclass
class AlgoConfig:
    """Importance-corrected GRPO (see docs/design.md, 'The loss')."""
    group_size: int = 8
    """episodes per group (one task and init state)"""
    temperature: float = 1.6
    """the actors' sampling temperature (0 = greedy)"""
    clip_low: float = 0.2
    """the policy ratio is clipped below at 1 - clip_low"""
    clip_high: float = 0.28
    """... and above at 1 + clip_high"""
    is_cap: float = 2.0
    """cap on the importance weight exp(proximal - behaviour log-prob) that corrects for the
    actors' stale policies"""
    adv_eps: float = 1e-6
    """added to a group's reward std when normalising advantages"""
    kl_coef: float = 0.0
    """KL penalty to a reference policy (0 = none)"""
    entropy_coef: float = 0.0
    """entropy bonus (0 = none)"""
    lr: float = 1e-4
    """learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """clip the gradient's global norm to this"""
    groups_per_batch: int = 8
    """GRPO groups per optimiser step"""
    micro_batch_size: int = 16
    """trajectories per forward/backward"""
    epochs_per_batch: int = 1
    """gradient passes over each batch"""
    mini_batches: int = 1
    """optimiser steps per epoch: the batch is cut into this many mini-batches (with more
    than one step per batch the PPO clip bounds each step)"""
    success_lo: float = 0.1
    """keep a group only if lo <= success rate <= hi"""
    success_hi: float = 0.9
    """see success_lo"""
    max_staleness: int = 4
    """drop trajectories more than this many versions behind"""


@dataclass
class StoreConfig:
    """The LMDB trajectory store and its ZeroMQ ingest."""
    path: str = "runs/store"
    """the LMDB directory"""
    ingest_address: str = STORE_ADDRESS
    """where the store binds its ingest (ROUTER)"""
    capacity: int = 20000
    """trajectories kept; beyond it evict consumed, then stalest"""
    accept_expert: bool = False
    """hold expert records (policy_version -1, demonstrations); an RL store refuses them
    (rejection reason expert_record)"""
    map_size_mb: int = 256
    """initial LMDB map; grows on MapFullError"""
    max_message_mb: int = 64
    """larger trajectory messages are rejected (too_large)"""
    max_batch: int = 64
    """received messages committed in one LMDB transaction"""
    max_batch_mb: int = 4
    """... and about this many MB (big transactions are slower)"""
    log_every_s: float = 5.0
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
    num_envs: int = 8
    """E env workers"""
    double_buffer: bool = True
    """with subprocess env workers, overlap one half of the envs' stepping with the
    policy's forward pass for the other half (two forward passes of half the batch per
    decision step); no effect with in-process workers"""
    device: str = "cpu"
    """where the policy runs"""
    seed: int = 0
    """scheduling and sampling seed (mixed with actor_id)"""
    store_address: str = STORE_ADDRESS
    """the store's ingest, where trajectories go"""
    weights_address: str = WEIGHTS_ADDRESS
    """learner's weight server (chunked fetches)"""
    announce_address: str = ANNOUNCE_ADDRESS
    """learner's version announcements (SUB)"""
    task_weights: dict[str, float] = field(default_factory=dict)
    """sampling weight per task_id; empty = uniform"""
    adaptive_tasks: bool = False
    """also weight each task by the chance its groups land inside the filter window
    (algo.success_lo..hi), from its recent success in this actor's groups"""
    adaptive_floor: float = 0.1
    """least weight factor of a task under adaptive_tasks (0-1], so none is abandoned"""
    max_in_flight: int = 64
    """unacknowledged trajectories before send() blocks"""
    resend_after_s: float = 5.0
    """resend a trajectory not acknowledged after this long"""
    max_groups: Optional[int] = None
    """stop after this many groups (None = until SIGTERM)"""
    subprocess_envs: bool = False
    """one subprocess per env worker (LIBERO always)"""
    log_every_s: float = 5.0
    """a log line every this many seconds"""
    heartbeat_s: float = 2.0
    """a heartbeat to the learner every this many seconds"""
    heartbeat_address: str = HEARTBEAT_ADDRESS
    """learner's heartbeat PULL socket"""
    curve_server_key: Optional[str] = None
    """path to the servers' public key file (CURVE; needed with curve_secret_key)"""
    curve_secret_key: Optional[str] = None
    """path to this actor's secret key file (CURVE; None = no encryption)"""
    policy: str = "model"
    """model (cfg.model) | expert (tabletop scripted expert)"""
    torch_threads: Optional[int] = 1
    """intra-op threads for CPU inference (None: torch's default)"""
    weights_wait_s: float = 5.0
    """at start, wait this long for a learner's weights"""
    flush_timeout_s: float = 10.0
    """at exit, wait this long for the store's acks"""
    sync_wait_s: float = 600.0
    """mode=sync: longest wait for the learner between rounds"""
    ack_log: Optional[str] = None
    """append each acknowledged trajectory_id to this file"""


@dataclass
class LearnerConfig:
    """The learner process: trainer, filter, broadcast, checkpoints."""
    device: str = "cpu"
    """where the policy trains (cuda: one GPU per rank)"""
    world_size: int = 1
    """FSDP ranks started by `pushcut learner`"""
    backend: str = "auto"
    """auto: nccl on cuda, gloo on cpu"""
    bf16: bool = False
    """on GPU: parameters compute in bf16, gradients reduce in fp32"""
    torch_threads: Optional[int] = None
    """intra-op CPU threads per rank (None: torch's default, one per core). 1 when actors share
    the cores: measured 15 s per update with 2 threads against 2 busy actors on 2 cores"""
    max_versions: Optional[int] = None
    """stop after this many optimiser steps"""
    max_wall_s: Optional[float] = None
    """... or after this many seconds since the learner started (carried over a resume by the
    checkpoint)"""
    snapshot_every: int = 10
    """policy snapshot to <run_dir>/snapshots every this many versions and at the end, never
    pruned (0 = none)"""
    checkpoint_dir: str = "runs/checkpoints"
    """where training checkpoints go"""
    checkpoint_every: int = 10
    """a checkpoint every this many versions (and at shutdown)"""
    keep_checkpoints: int = 2
    """the newest this many checkpoints are kept"""
    weights_address: str = WEIGHTS_ADDRESS
    """where the weight server binds (ROUTER)"""
    announce_address: str = ANNOUNCE_ADDRESS
    """where version announcements are published (PUB)"""
    weight_chunk_mb: int = 4
    """weights are served in chunks of this many MB"""
    host_store: bool = False
    """run the store ingest inside the learner process"""
    poll_s: float = 0.2
    """the learner's wait between polls of the store while no batch is ready"""
    heartbeat_timeout_s: float = 10.0
    """an actor with no heartbeat for this long counts as dead"""
    heartbeat_address: str = HEARTBEAT_ADDRESS
    """where actor heartbeats arrive (PULL)"""
    stall_s: float = 30.0
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
    store_port: int = STORE_PORT
    """the store's ingest port"""
    weights_port: int = WEIGHTS_PORT
    """the learner's weight server port"""
    announce_port: int = ANNOUNCE_PORT
    """the learner's announcement port"""
    heartbeat_port: int = HEARTBEAT_PORT
    """the learner's heartbeat port"""
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
    actors_nice: int = 0
    """CPU priority of every actor and its env workers (Linux nice, 0-19; raising it needs
    no privilege): above 0, a learner sharing the actors' cores runs its update as soon as
    it has a batch, while the actors take the cycles left over"""
    store: list[int] = field(default_factory=list)
    """cores of the store"""
    evaluator: list[int] = field(default_factory=list)
    """cores of ``pushcut run``'s snapshot evaluator"""


@dataclass
class PushcutConfig:
    """Root config. ``mode``: async (default) or sync (the paper's lock-step schedule)."""
    run_dir: str = "runs/default"
    """where a run's files go"""
    seed: int = 0
    """the run's seed"""
    mode: str = "async"
    """async | sync"""
    num_actors: int = 2
    """rollout actors started by the launchers"""
    wandb: bool = True
    """also log metrics to Weights & Biases"""
    env: EnvConfig = field(default_factory=EnvConfig)
    """the simulator and its tasks"""
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
