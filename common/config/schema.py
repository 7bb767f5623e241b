"""The config schema: dataclasses mirrored by the YAML groups in ``configs/``.

Defaults follow SimpleVLA-RL (group size 8, temperature 1.6, clip 0.2/0.28, ...). One
spelling per concept: ``policy_version``, ``group_id``, ``task_id``, ``init_state_id``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class EnvConfig:
    """Which simulator and which tasks."""
    name: str = "tabletop"            # tabletop (built-in MuJoCo suite) | libero
    suite: str = "all"                # tabletop: spatial|object|goal|long|all; libero: libero_spatial, ...
    tasks: list[str] = field(default_factory=list)   # explicit task_ids; empty = every task of the suite
    image_size: int = 64              # agentview side in pixels
    wrist_camera: bool = False
    max_steps: Optional[int] = None   # None = the family's / suite's own step limit
    num_train_init_states: int = 40   # training init_state_ids are [0, num_train)
    num_heldout_init_states: int = 10 # held-out ids follow, disjoint from training
    settle_steps: int = 10            # LIBERO: no-op steps after reset while objects settle
    center_crop: bool = False         # LIBERO: OpenVLA-style centre crop
    center_crop_scale: float = 0.9    # LIBERO: area fraction kept by the centre crop (OpenVLA: 0.9)
    render_size: Optional[int] = None # LIBERO: pixels rendered before the resize to image_size
    force_workers: bool = False       # LIBERO: start one env worker even when none fits in free memory
                                      # (OpenVLA-OFT: 256); None = render at image_size


@dataclass
class ModelConfig:
    """Which policy. ``kwargs`` go to the model's own config class."""
    name: str = "tiny_vla"            # tiny_vla | openvla_oft
    preset: str = "default"           # tiny_vla: default; openvla_oft: tiny | 7b
    checkpoint: Optional[str] = None  # a save_pretrained directory to start from
    chunk_size: int = 8               # C: control steps per model call
    action_dim: int = 7               # D
    num_bins: int = 256
    dtype: str = "float32"            # float32 | bfloat16
    gradient_checkpointing: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlgoConfig:
    """Importance-corrected GRPO (see DESIGN.md, 'The algorithm')."""
    group_size: int = 8
    temperature: float = 1.6
    clip_low: float = 0.2
    clip_high: float = 0.28
    is_cap: float = 2.0
    adv_eps: float = 1e-6
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    groups_per_batch: int = 8         # GRPO groups per optimiser step
    micro_batch_size: int = 16        # trajectories per forward/backward
    epochs_per_batch: int = 1
    success_lo: float = 0.1           # keep a group only if lo <= success rate <= hi
    success_hi: float = 0.9
    max_staleness: int = 4            # drop trajectories more than this many versions behind


@dataclass
class StoreConfig:
    """The LMDB trajectory store and its ZeroMQ ingest."""
    path: str = "runs/store"
    ingest_address: str = "tcp://127.0.0.1:5555"
    capacity: int = 20000             # trajectories kept; beyond it evict consumed, then stalest
    map_size_mb: int = 256            # initial LMDB map; grows on MapFullError
    max_message_mb: int = 64
    max_batch: int = 64               # received messages committed in one LMDB transaction
    max_batch_mb: int = 4             # ... and about this many MB (big transactions are slower)
    log_every_s: float = 5.0
    curve_secret_key: Optional[str] = None     # path to this server's secret key file
    curve_authorized_dir: Optional[str] = None # directory of accepted client public keys


@dataclass
class ActorConfig:
    """A rollout actor."""
    actor_id: Optional[str] = None    # default: host-pid
    num_envs: int = 8                 # E env workers
    device: str = "cpu"
    seed: int = 0
    store_address: str = "tcp://127.0.0.1:5555"
    weights_address: str = "tcp://127.0.0.1:5556"   # learner's weight server (REQ/REP fetch)
    announce_address: str = "tcp://127.0.0.1:5557"  # learner's version announcements (SUB)
    task_weights: dict[str, float] = field(default_factory=dict)  # empty = uniform
    max_in_flight: int = 64           # unacknowledged trajectories before send() blocks
    resend_after_s: float = 5.0
    max_groups: Optional[int] = None  # stop after this many groups (None = until SIGTERM)
    subprocess_envs: bool = False     # one subprocess per env worker (LIBERO always)
    log_every_s: float = 5.0
    heartbeat_s: float = 2.0
    heartbeat_address: str = "tcp://127.0.0.1:5558"  # learner's heartbeat PULL socket
    curve_server_key: Optional[str] = None
    curve_secret_key: Optional[str] = None
    policy: str = "model"             # model (cfg.model) | expert (tabletop scripted expert)
    torch_threads: Optional[int] = 1  # intra-op threads for CPU inference (None: torch's default)
    weights_wait_s: float = 5.0       # at start, wait this long for a learner's weights
    flush_timeout_s: float = 10.0     # at exit, wait this long for the store's acks
    sync_wait_s: float = 600.0        # mode=sync: longest wait for the learner between rounds
    ack_log: Optional[str] = None     # append each acknowledged trajectory_id to this file


@dataclass
class LearnerConfig:
    """The learner process: trainer, filter, broadcast, checkpoints."""
    device: str = "cpu"
    world_size: int = 1               # FSDP ranks started by `pushcut learner`
    backend: str = "auto"             # auto: nccl on cuda, gloo on cpu
    bf16: bool = False
    # intra-op CPU threads per rank (None: torch's default, one per core). 1 when actors share
    # the cores: measured 15 s per update with 2 threads against 2 busy actors on 2 cores
    torch_threads: Optional[int] = None
    max_versions: Optional[int] = None  # stop after this many optimiser steps
    max_wall_s: Optional[float] = None  # ... or after this many seconds since the learner started
                                        # (carried over a resume by the checkpoint)
    snapshot_every: int = 0           # policy snapshot to <run_dir>/snapshots every this many
                                      # versions and at the end, never pruned (0 = none)
    checkpoint_dir: str = "runs/checkpoints"
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    weights_address: str = "tcp://127.0.0.1:5556"
    announce_address: str = "tcp://127.0.0.1:5557"
    weight_chunk_mb: int = 4
    host_store: bool = False          # run the store ingest inside the learner process
    poll_s: float = 0.2
    heartbeat_timeout_s: float = 10.0
    heartbeat_address: str = "tcp://127.0.0.1:5558"
    stall_s: float = 30.0             # heartbeats but no env-step progress this long: stalled
    curve_secret_key: Optional[str] = None
    curve_authorized_dir: Optional[str] = None


@dataclass
class DemosConfig:
    """``pushcut demos``: scripted-expert demonstrations of the tabletop tasks."""
    per_task: int = 50                # successful demos kept per task (failures are retried)
    noise: float = 0.0                # std of gaussian noise on the expert's actions in [-1, 1]
    label: str = "executed"           # executed: record the noisy actions; clean: the expert's
                                      # noiseless action at each visited state (DART)
    out: str = "runs/demos"           # dataset directory; must not hold a dataset yet
    # observe every obs_stride env steps (1: every step, as BC pipelines train; the policy's
    # chunk_size C: only where the policy decides, C times fewer training decisions)
    obs_stride: int = 1


@dataclass
class SftConfig:
    demos: str = "runs/demos"
    out: str = "runs/sft"
    demos_per_task: Optional[int] = None   # use at most this many demos of each task
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    augment_shift: int = 4            # random image shifts of up to this many pixels (0 = off)
    label_sigma: float = 3.0          # gaussian target over neighbouring bins, in bins (0 = one-hot)
    eval_episodes_per_task: int = 10  # closing held-out evaluation (0 = skip)
    checkpoint_every: int = 500
    # torch CPU threads. 1: with other processes busy on a small machine, torch's OpenMP
    # threads wait on each other (measured 17x slower per step with 2 threads on 2 cores).
    threads: Optional[int] = 1


@dataclass
class EvalConfig:
    checkpoint: Optional[str] = None
    out: str = "runs/eval"
    episodes_per_task: int = 10
    temperatures: list[float] = field(default_factory=lambda: [0.0])  # 0 = greedy
    videos_per_task: int = 1
    num_envs: int = 8
    subprocess_envs: bool = False     # one OS process per env worker (in-process otherwise)


@dataclass
class BenchConfig:
    seconds: float = 20.0
    producers: int = 4
    decisions: int = 64
    image_size: int = 128
    cameras: int = 2
    processes: list[int] = field(default_factory=lambda: [1, 2])
    out: Optional[str] = None
    ingest_in_flight: int = 2         # ingest: unacknowledged trajectories per producer
    ingest_store_mb: int = 256        # ingest: bench store capacity in MB (it runs full, evicting)
    ingest_paced_load: float = 0.5    # ingest: paced phase offers this share of the saturated rate


@dataclass
class DeployConfig:
    """Placement on a Ray cluster (``pushcut deploy``); Ray is used only in ``deploy/``."""
    address: str = "auto"             # Ray cluster address (``ray start --head`` first)
    namespace: str = "pushcut"
    advertise_host: Optional[str] = None  # host actors dial for store/learner; None = its node IP
    bind_host: str = "0.0.0.0"        # where the store and learner bind their sockets
    store_port: int = 5555
    weights_port: int = 5556
    announce_port: int = 5557
    heartbeat_port: int = 5558
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    learner_cpus: float = 1.0
    learner_gpus: float = 0.0
    head_resource: Optional[str] = None   # custom resource that pins store + learner to a node
    max_restarts: int = -1            # Ray actor restarts (-1 = unlimited)
    status_every_s: float = 5.0
    duration_s: Optional[float] = None    # stop everything after this long (None = until Ctrl-C)


@dataclass
class PushcutConfig:
    """Root config. ``mode``: async (default) or sync (the paper's lock-step schedule)."""
    run_dir: str = "runs/default"
    seed: int = 0
    mode: str = "async"
    num_actors: int = 2
    wandb: bool = True
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    demos: DemosConfig = field(default_factory=DemosConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
