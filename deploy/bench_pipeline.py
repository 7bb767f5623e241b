"""``pushcut bench pipeline``: the whole system (store, learner, actors as OS processes, started
the way ``pushcut run`` starts them) in async and in sync mode with the same settings, against
each stage's standalone rate measured in the same run.

In: the run config (env, model, actor, algo, learner, ``num_actors``; fresh weights unless
``model.checkpoint``) and ``bench.seconds``: 2/5 of it is each mode's measuring window, 1/5 is
split over the three standalone stages. Start-up (processes, imports, the first update) is
not counted: a mode's window opens at the learner's first update. Out: printed tables and a
dict (``bench.out`` writes it as JSON):

- per mode: policy versions/s; trained env steps/s (env steps of the groups in updates);
  generated env steps/s (records stored by the actors); learner busy fraction (the updates'
  ``update_s`` / window); actor busy fraction (1 - the actors' time blocked on the store or
  the learner, the records' ``wait_s``, / actors x window); staleness (mean and max of the
  updates'); consumed fraction = trained env steps/s / the slowest stage;
- async / sync ratios of versions/s and trained env steps/s;
- stages, each in env steps/s: bare env stepping and bare inference of one actor's envs and
  policy (actors/bench/stages.py) x ``num_actors`` (this assumes a core for each actor's
  work: on a small machine the actors share cores and the product overstates the stage),
  and one learner update as configured (``GRPO.update`` on a batch of
  ``algo.groups_per_batch`` groups, with no store, filter or broadcast around it;
  learner/bench/update.py), with the bare training step beside it for reference.

    pushcut bench pipeline bench.seconds=60 num_actors=2 actor.num_envs=8
"""
from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.config.schema import MODES, PushcutConfig
from common.metrics import read_jsonl
from deploy.run import start_children, stop_children
from deploy.run_status import LearnerLog

FIRST_UPDATE_TIMEOUT_S = 600.0


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def mode_config(cfg: PushcutConfig, mode: str, run_dir: Path) -> PushcutConfig:
    """``cfg`` in ``mode`` under ``run_dir``: fresh local ports, no W&B, no evaluator of
    snapshots (not part of the training pipeline), no learner budget (the bench stops the
    processes itself)."""
    learner = replace(cfg.learner, max_versions=None, max_wall_s=None,
                      weights_address=free_address(), announce_address=free_address(),
                      heartbeat_address=free_address())
    return replace(cfg, mode=mode, run_dir=str(run_dir), wandb=False, learner=learner,
                   store=replace(cfg.store, ingest_address=free_address()),
                   run=replace(cfg.run, eval_episodes=0))


def starting_policy(cfg: PushcutConfig, root: Path) -> str:
    """``model.checkpoint``, else fresh weights (seeded by ``seed``) saved under ``root``."""
    if cfg.model.checkpoint:
        return cfg.model.checkpoint
    import torch

    from common.models import build_policy
    torch.manual_seed(cfg.seed)
    path = root / "policy"
    build_policy(cfg.model).save_pretrained(str(path))
    return str(path)


def _check_alive(children: dict) -> None:
    for name, child in children.items():
        if not child.alive:
            raise RuntimeError(f"{name} exited with {child.returncode} during the bench:\n"
                               f"{child.tail()}")


def first_update_time(run_dir: Path, children: dict) -> float:
    """Wait for the learner's first update (the pipeline is flowing). -> its time.time()."""
    log, pause = LearnerLog(run_dir / "learner.jsonl"), threading.Event()
    deadline = time.monotonic() + FIRST_UPDATE_TIMEOUT_S
    while True:
        log.refresh()
        if log.last_update is not None:
            return float(log.last_update["time"])
        _check_alive(children)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no learner update in {FIRST_UPDATE_TIMEOUT_S:.0f}s; "
                               f"see {run_dir / 'logs'}")
        pause.wait(0.2)       # polling interval


def hold(children: dict, until: float) -> float:
    """Let the processes run until time.time() >= ``until`` (failing if one exits)."""
    pause = threading.Event()
    while time.time() < until:
        _check_alive(children)
        pause.wait(min(0.5, max(0.0, until - time.time())))
    return time.time()


def learner_figures(run_dir: Path, t0: float, t1: float) -> dict:
    """From the updates logged in (t0, t1]: versions, trained steps, busy time, staleness."""
    rows = [r for r in read_jsonl(run_dir / "learner.jsonl")
            if r.get("event") == "update" and t0 < r["time"] <= t1]
    window = t1 - t0
    trained = sum(r["batch_env_steps"] for r in rows if r.get("group_ids"))
    return {"versions": len(rows), "versions_per_s": len(rows) / window,
            "trained_env_steps_per_s": trained / window,
            "learner_busy": sum(r["update_s"] for r in rows) / window,
            "staleness_mean": (sum(r["staleness_mean"] for r in rows) / len(rows)
                               if rows else None),
            "staleness_max": max((r["staleness_max"] for r in rows), default=None)}


def actor_figures(store_path: Path, t0: float, t1: float, num_actors: int) -> dict:
    """From the complete groups the actors stored in (t0, t1]: generated env steps and the
    actors' time blocked (records' ``wait_s``)."""
    from learner.store import TrajectoryStore
    steps, wait_s, records = 0, 0.0, 0
    with TrajectoryStore(str(store_path), readonly=True) as store:
        for info in store.complete_groups(include_consumed=True):
            if not t0 < info.created_at <= t1:
                continue
            for traj in store.read_group(info.group_id):
                steps, records = steps + traj.length, records + 1
                wait_s += traj.timings.get("wait_s", 0.0)
    window = t1 - t0
    return {"generated_env_steps_per_s": steps / window, "records": records,
            "actor_busy": min(1.0, max(0.0, 1.0 - wait_s / (num_actors * window)))}


def run_mode(cfg: PushcutConfig, mode: str, checkpoint: str, run_dir: Path,
             seconds: float) -> dict:
    """Store, learner and actors in ``mode`` until ``seconds`` after the first update, then
    stopped as ``pushcut run`` stops them. -> the mode's figures."""
    mcfg = mode_config(cfg, mode, run_dir)
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children: dict = {}
    try:
        start_children(mcfg, run_dir, log_dir, checkpoint, None, children)
        t0 = first_update_time(run_dir, children)
        t1 = hold(children, t0 + seconds)
    finally:
        exits = stop_children(children)
    return {"window_s": t1 - t0, **learner_figures(run_dir, t0, t1),
            **actor_figures(run_dir / "store", t0, t1, cfg.num_actors),
            "exits": exits}


def stage_rates(cfg: PushcutConfig, seconds: float) -> dict:
    """Each stage alone, in env steps/s (see the module docstring), ``seconds`` each."""
    from actors.bench.actor import pinned
    from actors.bench.stages import actor_stage_rates
    from learner.bench.update import stage_rate
    actor = actor_stage_rates(cfg, seconds)        # on placement.actors / env_workers
    with pinned(cfg.placement.learner):            # the learner's cores, as in the run
        learner = stage_rate(cfg, seconds, max(1, round(actor["episode_length"])))
    rates = {"env": actor["env_steps_per_s"] * cfg.num_actors,
             "inference": actor["inference_steps_per_s"] * cfg.num_actors,
             "learner": learner["env_steps_per_s"]}
    slowest = min(rates, key=rates.get)
    return {"env_steps_per_s": rates, "slowest": slowest, "slowest_env_steps_per_s":
            rates[slowest], "per_actor": actor, "learner": learner}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


MIN_UPDATES = 10   # per mode: below it a window's count is too coarse to compare


def versions_ratio_range(a: dict, b: dict) -> list[float | None]:
    """The async/sync versions/s ratio if each window's count were one update off (a window
    cuts the update in progress): [low, high], high None when sync made at most one."""
    (na, ta), (nb, tb) = ((m["versions"], m["window_s"]) for m in (a, b))
    low = max(na - 1, 0) / ta / ((nb + 1) / tb)
    return [low, (na + 1) / ta / ((nb - 1) / tb) if nb > 1 else None]


def run(cfg: PushcutConfig) -> dict:
    """``pushcut bench pipeline``. -> the figures (printed too)."""
    console = Console()
    mode_s, stage_s = 0.4 * cfg.bench.seconds, 0.2 * cfg.bench.seconds / 3
    with tempfile.TemporaryDirectory(prefix="pushcut-bench-pipeline-") as tmp:
        checkpoint = starting_policy(cfg, Path(tmp))
        console.print(f"pushcut bench pipeline: stages alone, {stage_s:.1f}s each")
        stages = stage_rates(cfg, stage_s)
        modes = {}
        for mode in MODES:
            console.print(f"pushcut bench pipeline: {mode} mode, {mode_s:.0f}s after the "
                          f"first update (logs: {tmp}/{mode}/logs)")
            modes[mode] = run_mode(cfg, mode, checkpoint, Path(tmp) / mode, mode_s)
    slowest = stages["slowest_env_steps_per_s"]
    for m in modes.values():
        m["consumed_fraction"] = m["trained_env_steps_per_s"] / slowest
    figures = {
        "settings": settings(cfg, mode_s, stage_s), "stages": stages, **modes,
        "async_over_sync": {k: _ratio(modes["async"][k], modes["sync"][k])
                            for k in ("versions_per_s", "trained_env_steps_per_s")},
        "versions_ratio_range": versions_ratio_range(modes["async"], modes["sync"])}
    print_figures(figures, console)
    return figures


def settings(cfg: PushcutConfig, mode_s: float, stage_s: float) -> dict:
    return {"env": cfg.env.name, "model": f"{cfg.model.name}/{cfg.model.preset}",
            "num_actors": cfg.num_actors, "num_envs": cfg.actor.num_envs,
            "subprocess_envs": bool(cfg.actor.subprocess_envs),
            "group_size": cfg.algo.group_size, "groups_per_batch": cfg.algo.groups_per_batch,
            "actor_device": cfg.actor.device, "learner_device": cfg.learner.device,
            "seconds_per_mode": mode_s, "seconds_per_stage": stage_s,
            "cpu_count": os.cpu_count()}


def _fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_figures(f: dict, console: Console) -> None:
    s = f["settings"]
    console.print(f"pushcut bench pipeline: {s['num_actors']} actor(s) x {s['num_envs']} envs "
                  f"({s['env']}), {s['model']}, {s['seconds_per_mode']:.0f}s per mode, "
                  f"{s['cpu_count']} cores", soft_wrap=True)
    table = Table(title="async against sync")
    table.add_column("")
    for col in ("async", "sync", "async / sync"):
        table.add_column(col, justify="right")
    ratio = f["async_over_sync"]
    rows = [("policy versions in the window", "versions", "d"),
            ("policy versions/s", "versions_per_s", ".3f"),
            ("trained env steps/s", "trained_env_steps_per_s", ".0f"),
            ("generated env steps/s", "generated_env_steps_per_s", ".0f"),
            ("learner busy (update time / wall)", "learner_busy", ".0%"),
            ("actor busy (not blocked)", "actor_busy", ".0%"),
            ("staleness mean", "staleness_mean", ".2f"), ("staleness max", "staleness_max", "g"),
            ("trained / slowest stage", "consumed_fraction", ".2f")]
    for label, key, spec in rows:
        table.add_row(label, _fmt(f["async"][key], spec), _fmt(f["sync"][key], spec),
                      _fmt(ratio.get(key)))
    console.print(table)
    low, high = f["versions_ratio_range"]
    few = min(f["async"]["versions"], f["sync"]["versions"]) < MIN_UPDATES
    console.print(f"async / sync versions/s with each count one update off: {_fmt(low)} to "
                  f"{_fmt(high)}" + (f"; fewer than {MIN_UPDATES} updates in a window: raise "
                                     "bench.seconds for a ratio that means something"
                                     if few else ""), soft_wrap=True)
    st = f["stages"]
    stages = Table(title="each stage alone (env steps/s)")
    stages.add_column("stage")
    stages.add_column("env steps/s", justify="right")
    stages.add_column("")
    notes = {"env": f"{s['num_actors']} x one actor's envs",
             "inference": f"{s['num_actors']} x batches of {st['per_actor']['batch']}",
             "learner": f"one update as configured, {st['learner']['trajectories']} "
                        f"trajectories (bare step: "
                        f"{st['learner']['bare_env_steps_per_s']:,.0f})"}
    for name, rate in st["env_steps_per_s"].items():
        mark = " (slowest)" if name == st["slowest"] else ""
        stages.add_row(name + mark, f"{rate:,.0f}", notes[name])
    console.print(stages)
