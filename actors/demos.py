"""``pushcut demos``: record scripted-expert demonstrations for SFT, on a simulator whose
registry entry names an expert (the tabletop suite's scripted experts, ManiSkill's motion
planners; a simulator with its own interpreter records there).

In: the config's env (``env.suite`` / ``env.tasks`` pick the tasks), ``demos.obs_stride`` S,
``demos.per_task``, ``demos.noise`` (gaussian std on the expert's actions), ``demos.label``,
``demos.out``.
Out: a dataset directory (``common/dataset.py``) of Trajectory records, one per successful
demo: ``policy_version = -1`` (EXPERT_VERSION), images/proprio observed every S env steps,
``actions`` float32 [T, S, 7] (the S steps after each observation; T = ceil(length / S)),
no tokens ([T, 0]), ``valid_mask`` [T, S*7], ``length`` = env steps, each demo its own group
(group_size 1). So a record's chunk size is the observation stride, not the policy's chunk
size C: SFT (``learner/sft/data.py``) re-chunks the action sequence into the C actions after
every observation. S = 1 (default) observes every env step, which gives C times as many
training decisions as S = C (BC pipelines train on every timestep). Failed demos are not
kept: the recorder moves on to the next training init state (cycling) and counts them. On
the tabletop suite each demo's index line also holds its behaviour fingerprint
(``fingerprint``: actors/envs/tabletop/fingerprint.py), which ``pushcut analyze`` compares
RL's successes with.
With noise, ``demos.label = clean`` records what the expert meant at each visited state while
the env executes the noisy action (DART, Laskey et al. 2017): the demos then visit the states
a slightly wrong policy drifts into, labelled with the correction back.

Run: ``pushcut demos demos.per_task=50 demos.out=runs/demos``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from actors.envs import env_names, env_spec, make_env
from actors.envs.base import TaskSpec
from common.config.schema import PushcutConfig
from common.dataset import write_trajectory
from common.wire.trajectory import EXPERT_VERSION, Trajectory


def chunk_episode(actions: np.ndarray, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """actions float [L, D] -> (float32 [T, C, D] zero-padded, valid_mask bool [T, C*D]),
    T = ceil(L / C)."""
    length, dim = actions.shape
    T = math.ceil(length / chunk_size)
    padded = np.zeros((T * chunk_size, dim), np.float32)
    padded[:length] = actions
    valid = np.zeros((T * chunk_size, dim), bool)
    valid[:length] = True
    return padded.reshape(T, chunk_size, dim), valid.reshape(T, chunk_size * dim)


def record_demo(env, expert, spec: TaskSpec, init_state_id: int, obs_stride: int,
                trajectory_id: str, label: str = "executed", num_bins: int = 0
                ) -> Trajectory | None:
    """Run ``expert`` on its env from (task, init_state_id) to the end of the episode;
    None when the expert gives up (its ``act()`` returns None: a motion plan that failed).
    Observe (render) only before env steps 0, S, 2S, ... (S = ``obs_stride``). ``label``:
    record the executed (noisy) actions or the expert's ``clean_action``s. ``num_bins``: the
    record's declared action bins (the model's ``num_bins``; 0: not tokenised)."""
    start = time.perf_counter()
    obs = env.reset(spec.task_id, init_state_id)
    images, proprio, actions = [], [], []
    done, success = False, False
    while not done:
        action = expert.act()
        if action is None:      # the expert gave up (a motion plan that failed)
            return None
        if len(actions) % obs_stride == 0:
            images.append(obs["images"])
            proprio.append(obs["proprio"])
        result = env.step(action, render=(len(actions) + 1) % obs_stride == 0)
        actions.append(expert.clean_action if label == "clean" else action)
        obs, done, success = result.obs, result.done, result.success
    chunks, valid = chunk_episode(np.stack(actions), obs_stride)
    T = chunks.shape[0]
    return Trajectory(
        trajectory_id=trajectory_id, group_id=trajectory_id, actor_id="expert",
        task_id=spec.task_id, instruction=spec.instruction, init_state_id=int(init_state_id),
        policy_version=EXPERT_VERSION, group_size=1, success=bool(success),
        length=len(actions), temperature=0.0, num_bins=num_bins,
        images=np.stack(images), proprio=np.stack(proprio).astype(np.float32),
        actions=chunks, action_tokens=np.zeros((T, 0), np.int16),
        behaviour_log_probs=np.zeros((T, 0), np.float32), valid_mask=valid,
        created_at=time.time(), timings={"env_s": time.perf_counter() - start})


def main(cfg: PushcutConfig, args: list[str], overrides: Sequence[str] = ()) -> int:
    if args:
        print(f"pushcut demos: no positional arguments expected, got {args}")
        return 2
    expert_cls, problem = _expert_of(cfg.env.name)
    if problem:
        print(f"pushcut demos: {problem}")
        return 2
    try:
        there = env_spec(cfg.env.name).elsewhere()
    except RuntimeError as exc:     # its interpreter is not set up
        print(f"pushcut demos: {exc}")
        return 2
    if there:   # the expert drives the simulator in-process: record in its interpreter
        python, environ = there
        return subprocess.run([python, "-m", "deploy.cli", "demos", *overrides],
                              env={**os.environ, **environ}).returncode
    out = Path(cfg.demos.out)
    if (out / "index.jsonl").exists():
        print(f"pushcut demos: {out} already holds a dataset; choose another demos.out "
              "or delete it")
        return 2
    # each demo's behaviour fingerprint goes into its index line (simulators that keep one)
    env = make_env(dataclasses.replace(cfg.env, fingerprints=True), cfg.seed)
    if cfg.demos.per_task > cfg.env.num_train_init_states:
        # the tabletop suite draws layouts procedurally, so more training ids cost nothing
        print(f"pushcut demos: warning: demos.per_task={cfg.demos.per_task} > "
              f"env.num_train_init_states={cfg.env.num_train_init_states}, so some layouts get "
              "a second demo; set env.num_train_init_states >= demos.per_task for one layout "
              "per demo", file=sys.stderr)
    stats: dict[str, dict] = defaultdict(lambda: {"kept": 0, "failed": 0, "steps": 0})
    try:
        with Progress(console=Console(stderr=True)) as progress:
            bar = progress.add_task("expert demos", total=len(env.tasks()) * cfg.demos.per_task)
            for spec in env.tasks():
                _record_task(cfg, env, expert_cls, spec, stats[spec.task_id],
                             lambda: progress.advance(bar))
    finally:
        env.close()
    _print_summary(stats, out)
    return 0


def _expert_of(env_name: str) -> tuple[type | None, str]:
    """The simulator's scripted expert class, or why there is none."""
    try:
        expert_cls = env_spec(env_name).expert_class()
    except ValueError as exc:
        return None, str(exc)
    if expert_cls is None:
        with_one = [n for n in env_names() if env_spec(n).expert is not None]
        return None, (f"env.name={env_name!r} has no scripted expert; use a simulator that "
                      f"has one ({', '.join(with_one)}); LIBERO demonstrations come with the "
                      "benchmark")
    return expert_cls, ""


def _record_task(cfg: PushcutConfig, env, expert_cls, spec: TaskSpec, stat: dict,
                 advance) -> None:
    """Record ``cfg.demos.per_task`` successful demos of one task, cycling through the
    training init states; a failed attempt moves on to the next one."""
    ids = env.train_init_state_ids(spec.task_id)
    max_attempts = 3 * cfg.demos.per_task + 10
    for attempt in range(max_attempts):
        if stat["kept"] == cfg.demos.per_task:
            return
        init_state_id = ids[attempt % len(ids)]
        seed = [cfg.seed, zlib.crc32(spec.task_id.encode()), attempt]
        expert = expert_cls(env, noise=cfg.demos.noise, seed=np.random.SeedSequence(seed))
        tid = f"demo-{spec.task_id.replace('/', '-')}-s{init_state_id}-a{attempt}"
        traj = record_demo(env, expert, spec, init_state_id, cfg.demos.obs_stride, tid,
                           cfg.demos.label, num_bins=cfg.model.num_bins)
        if traj is None or not traj.success:
            stat["failed"] += 1
            continue
        info = env.episode_info() if hasattr(env, "episode_info") else None
        write_trajectory(cfg.demos.out, traj, {"fingerprint": info} if info else None)
        stat["kept"] += 1
        stat["steps"] += traj.length
        advance()
    if stat["kept"] < cfg.demos.per_task:
        raise RuntimeError(f"{spec.task_id}: only {stat['kept']} of {cfg.demos.per_task} "
                           f"expert demos succeeded in {max_attempts} attempts "
                           f"(demos.noise={cfg.demos.noise} too high?)")


def _print_summary(stats: dict[str, dict], out: Path) -> None:
    table = Table(title=f"expert demos in {out} (failed attempts are not kept)")
    for col in ("task_id", "kept", "failed", "mean length"):
        table.add_column(col, justify="left" if col == "task_id" else "right")
    for task_id, s in stats.items():
        table.add_row(task_id, str(s["kept"]), str(s["failed"]),
                      f"{s['steps'] / max(s['kept'], 1):.1f}")
    Console().print(table)
