"""The config of the commands: ``pushcut demos``, ``sft``, ``eval``, ``bench`` and ``run``
(with its children's restart intensities).

Part of the schema (:mod:`common.config.schema` holds the roles' configs and the root
``PushcutConfig``, and re-exports these); every field's rules (:mod:`common.config.rules`)
are beside it and its docstring under it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from common.config.rules import at_least, in_range, not_above, one_of, positive, setting


@dataclass
class DemosConfig:
    """``pushcut demos``: scripted-expert demonstrations of the tabletop tasks."""
    per_task: int = setting(50, at_least(1))
    """successful demos kept per task (failures are retried)"""
    noise: float = 0.0
    """std of gaussian noise on the expert's actions in [-1, 1]"""
    label: str = setting("executed", one_of("executed", "clean"))
    """executed: record the noisy actions; clean: the expert's noiseless action at each visited
    state (DART)"""
    out: str = "runs/demos"
    """dataset directory; must not hold a dataset yet"""
    obs_stride: int = setting(1, at_least(1))
    """observe every obs_stride env steps (1: every step, as BC pipelines train; the policy's
    chunk_size C: only where the policy decides, C times fewer training decisions)"""


@dataclass
class SftConfig:
    """``pushcut sft``: supervised fine-tuning on demonstrations, then a held-out evaluation."""
    demos: str = "runs/demos"
    """the demonstration dataset directory (``pushcut demos``' ``out``)"""
    out: str = "runs/sft"
    """output directory: checkpoints, the final policy, the evaluation"""
    demos_per_task: Optional[int] = None
    """use at most this many demos of each task (None = all)"""
    steps: int = setting(4000, at_least(1))
    """optimiser steps (4000 from 50 demos per task: 39 % held-out, docs/results.md)"""
    batch_size: int = setting(64, at_least(1))
    """examples (one per demonstrated decision) per optimiser step"""
    lr: float = 3e-4
    """peak learning rate of the cosine schedule"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    warmup_steps: int = 100
    """learning-rate warm-up steps (at most a tenth of ``steps``)"""
    grad_clip: float = 1.0
    """clip the gradient's global norm to this"""
    augment_shift: int = 4
    """random image shifts of up to this many pixels (0 = off)"""
    label_sigma: float = 0.0
    """gaussian target over neighbouring bins, in bins (0 = one-hot: sharp targets, so that
    sampling explores choices rather than blur around one action)"""
    eval_episodes_per_task: int = 10
    """closing held-out evaluation (0 = skip)"""
    checkpoint_every: int = setting(500, at_least(1))
    """save a checkpoint every this many steps"""
    threads: Optional[int] = setting(None, at_least(1, nullable=True))
    """torch CPU threads (None: one per core). SFT is compute-bound and, in ``pushcut run``
    and ``pushcut experiment``, runs alone, so it takes every core; set 1 when other
    processes keep the cores busy: torch's OpenMP threads then wait on each other (measured
    17x slower per step with 2 threads on 2 busy cores)"""


@dataclass
class EvalConfig:
    """``pushcut eval``: success rates of a policy on the held-out init states."""
    checkpoint: Optional[str] = None
    """the policy to evaluate (a save_pretrained directory)"""
    out: str = "runs/eval"
    """output directory: success rates and videos"""
    episodes_per_task: int = setting(10, at_least(1))
    """episodes per task and temperature, cycling over the held-out init states"""
    temperatures: list[float] = field(default_factory=lambda: [0.0])
    """sampling temperatures to evaluate at (0 = greedy)"""
    videos_per_task: int = 1
    """the first this many episodes of each task are recorded as video"""
    num_envs: int = setting(8, at_least(1))
    """env workers stepped in parallel"""
    subprocess_envs: bool = False
    """one OS process per env worker (in-process otherwise)"""


@dataclass
class BenchConfig:
    """``pushcut bench``: throughput measurements (env, policy, actor, ingest, update)."""
    seconds: float = 20.0
    """measuring time of a bench, split over its measurements (ingest-bad: each of its two
    phases)"""
    producers: int = 4
    """ingest: trajectory senders (processes)"""
    decisions: int = 64
    """ingest: decisions per synthetic trajectory"""
    image_size: int = 128
    """ingest: camera image side in pixels of the synthetic trajectories"""
    cameras: int = 2
    """ingest: cameras per decision of the synthetic trajectories"""
    processes: list[int] = field(default_factory=lambda: [1, 2])
    """env: the numbers of env processes measured side by side"""
    out: Optional[str] = None
    """write the figures as JSON to this file (None = print only)"""
    ingest_in_flight: int = 2
    """ingest: unacknowledged trajectories per producer"""
    ingest_store_mb: int = 256
    """ingest: bench store capacity in MB (it runs full, evicting)"""
    ingest_paced_load: float = 0.5
    """ingest: paced phase offers this share of the saturated rate"""
    ingest_bad_rate: float = setting(10.0, positive())
    """ingest-bad: trajectories per second the valid sender offers, evenly spaced"""
    ingest_bad_every_s: float = setting(5.0, positive())
    """ingest-bad: the second sender sends its 12 MB bad record this often"""
    compile: bool = False
    """update: also measure the update with the policy's forward under ``torch.compile``"""


@dataclass
class RestartIntensity:
    """How often a child of ``pushcut run`` may die before it is retired
    (deploy/supervisor.py): at most ``max_restarts`` restarts within any ``window_s``
    seconds, each after a wait that doubles from ``backoff_s`` with every restart in the
    window, up to ``max_backoff_s``. A crash loop exceeds it within minutes; occasional
    deaths, however many over a long run, never do."""
    max_restarts: int = setting(5, at_least(0))
    """restarts allowed within ``window_s``; the next death retires the child (0: the first
    death does)"""
    window_s: float = setting(300.0, positive())
    """the sliding window, in seconds, that restarts are counted in"""
    backoff_s: float = setting(1.0, positive())
    """the wait before a restart when none came in the window; doubled for each one that did"""
    max_backoff_s: float = setting(30.0, positive())
    """the longest wait before a restart"""

    def joint_problems(self, prefix: str) -> list[str]:
        return not_above(self, prefix, "backoff_s", "max_backoff_s")


@dataclass
class RestartsConfig:
    """The restart intensity of each role of ``pushcut run``, counted per child (each actor
    on its own). A retired child stays down; the run goes on while it can still learn (the
    store, the learner and at least one actor) and ends with exit status 1 when it cannot."""
    store: RestartIntensity = field(default_factory=RestartIntensity)
    """the store: retired, it ends the run (the actors have nowhere to send their groups)"""
    learner: RestartIntensity = field(default_factory=RestartIntensity)
    """the learner: retired, it ends the run"""
    actor: RestartIntensity = field(default_factory=RestartIntensity)
    """each actor: a retired actor leaves the others generating; the run ends once every
    actor is retired"""
    evaluator: RestartIntensity = field(default_factory=RestartIntensity)
    """the snapshot evaluator: retired, the run goes on without held-out figures"""


@dataclass
class RunConfig:
    """``pushcut run``: what it measures around RL (deploy/run.py)."""
    min_sampled_ratio: float = 0.5
    """sampled success must be at least this fraction of greedy success, else the
    sampling temperature is lowered (x0.6 per try)"""
    temperature_tries: int = 3
    """how many lower temperatures to try before taking the best one"""
    eval_episodes: int = setting(5, at_least(0))
    """held-out episodes per task: for the start policy, greedy and sampled, before RL; and
    for each policy snapshot while RL runs (a ``pushcut evaluator`` child, when
    learner.snapshot_every > 0). 0 = neither, and algo.temperature is kept as it is"""
    warm_start: str = setting("shipped", one_of("shipped", "train"))
    """where the start policy comes from when ``model.checkpoint`` is unset and
    ``<run_dir>/sft/final`` is missing: shipped (the warm-start policy shipped for the
    built-in suite, when it was made with this run's env, model, demos and SFT settings;
    else as train) | train (``pushcut demos`` and ``pushcut sft`` in the run directory);
    deploy/warmstart.py"""
    restarts: RestartsConfig = field(default_factory=RestartsConfig)
    """how often each child may die before it is retired (per role)"""
    stall_after: float = setting(5.0, in_range(1, open_low=True))
    """the status reports a stall, with its likely cause, when no new policy version came
    for this many times the usual time between versions (the median of the recent ones)"""
