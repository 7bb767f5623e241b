"""The configuration, checked before a command starts anything (called by deploy/cli.py).

In: the composed :class:`~common.config.schema.PushcutConfig` and the command's name. Out:
:func:`problems` -> one line per bad setting, ``key=value: what is allowed`` (empty when the
config is fine); the CLI prints them and exits 2, having started nothing and written nothing.

What is checked, per command (:data:`CHECKS`): counts that must be at least 1
(``num_actors``, ``actor.num_envs``, ``algo.groups_per_batch``, ``learner.world_size``, ...),
``algo.group_size >= 2``, ``algo.temperature > 0``, ``0 <= success_lo <= success_hi <= 1``,
positive intervals, the known choices (``mode``, ``learner.backend``, ``actor.policy``,
``model.dtype``), the env (``env.name``, its ``suite``, ``layout`` and ``tasks``, the keys of
``actor.task_weights``: the lists of actors/envs), the model (``model.checkpoint`` a
``save_pretrained`` directory, else a registered ``model.name`` and one of its presets),
addresses (``tcp://host:port`` or ``ipc://path``), a writable ``run_dir``, and
``placement.*`` cores that exist here.

``pushcut run`` (and ``experiment``, which runs it) keeps its store and checkpoints under
``run_dir``: a ``store.path`` or ``learner.checkpoint_dir`` other than the default (or the
run's own) is refused there rather than silently ignored; its servers need fixed, distinct
ports, since the actors dial them. The model check imports torch and the model's config
module (a few seconds), so it runs only when every cheap check passed.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from common.config.schema import PushcutConfig

# (key, lowest allowed value, may be null)
COUNTS = {
    "run": [("num_actors", 1, False), ("run.eval_episodes", 0, False)],
    "algo": [("algo.group_size", 2, False), ("algo.groups_per_batch", 1, False),
             ("algo.micro_batch_size", 1, False), ("algo.mini_batches", 1, False),
             ("algo.epochs_per_batch", 1, False), ("algo.max_staleness", 0, False)],
    "actor": [("actor.num_envs", 1, False), ("actor.max_in_flight", 1, False),
              ("actor.max_groups", 1, True)],
    "learner": [("learner.world_size", 1, False), ("learner.checkpoint_every", 1, False),
                ("learner.keep_checkpoints", 1, False), ("learner.snapshot_every", 0, False),
                ("learner.max_versions", 1, True), ("learner.weight_chunk_mb", 1, False)],
    "store": [("store.capacity", 1, False), ("store.max_batch", 1, False),
              ("store.max_batch_mb", 1, False), ("store.max_message_mb", 1, False),
              ("store.map_size_mb", 1, False)],
    "env": [("env.image_size", 1, False), ("env.max_steps", 1, True),
            ("env.num_train_init_states", 1, False), ("env.num_heldout_init_states", 0, False)],
    "model": [("model.chunk_size", 1, False), ("model.action_dim", 1, False),
              ("model.num_bins", 2, False)],
    "eval": [("eval.num_envs", 1, False), ("eval.episodes_per_task", 1, False)],
    "demos": [("demos.per_task", 1, False), ("demos.obs_stride", 1, False)],
    "sft": [("sft.steps", 1, False), ("sft.batch_size", 1, False)],
}
# (key, may be null): must be > 0
POSITIVE = {
    "algo": [("algo.temperature", False), ("algo.lr", False), ("algo.is_cap", False),
             ("algo.grad_clip", False)],
    "actor": [("actor.resend_after_s", False), ("actor.heartbeat_s", False),
              ("actor.log_every_s", False)],
    "learner": [("learner.poll_s", False), ("learner.heartbeat_timeout_s", False),
                ("learner.stall_s", False), ("learner.max_wall_s", True)],
    "store": [("store.log_every_s", False)],
}
CHOICES = {
    "algo": [("mode", ("async", "sync"))],
    "learner": [("learner.backend", ("auto", "gloo", "nccl"))],
    "actor": [("actor.policy", ("model", "expert"))],
    "model": [("model.dtype", ("float32", "bfloat16", "float16"))],
}
SERVERS = ("store.ingest_address", "learner.weights_address", "learner.announce_address",
           "learner.heartbeat_address")
DIALS = ("actor.store_address", "actor.weights_address", "actor.announce_address")
ADDRESS = re.compile(r"^tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\s\[\]]+):(?P<port>\d+|\*)$")


def get(cfg: PushcutConfig, key: str) -> Any:
    """``cfg`` and a dotted key (``algo.group_size``) -> its value."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def check_numbers(cfg: PushcutConfig, section: str) -> list[str]:
    """The counts, positive values and choices of one section (a key of COUNTS etc.)."""
    found = []
    for key, low, nullable in COUNTS.get(section, []):
        value = get(cfg, key)
        if not (value is None and nullable) and not (
                isinstance(value, int) and not isinstance(value, bool) and value >= low):
            found.append(f"{key}={value!r}: must be an integer >= {low}"
                         + (" (or null)" if nullable else ""))
    for key, nullable in POSITIVE.get(section, []):
        value = get(cfg, key)
        if not (value is None and nullable) and not (_is_number(value) and value > 0):
            found.append(f"{key}={value!r}: must be a number > 0"
                         + (" (or null)" if nullable else ""))
    for key, allowed in CHOICES.get(section, []):
        if get(cfg, key) not in allowed:
            found.append(f"{key}={get(cfg, key)!r}: must be one of {', '.join(allowed)}")
    return found


def check_algo(cfg: PushcutConfig) -> list[str]:
    """GRPO's ranges: the success interval and the clip bounds."""
    a, found = cfg.algo, check_numbers(cfg, "algo")
    lo, hi = a.success_lo, a.success_hi
    if not (_is_number(lo) and _is_number(hi) and 0 <= lo <= hi <= 1):
        found.append(f"algo.success_lo={lo!r}, algo.success_hi={hi!r}: must satisfy "
                     "0 <= success_lo <= success_hi <= 1")
    if not (_is_number(a.clip_low) and 0 <= a.clip_low < 1):
        found.append(f"algo.clip_low={a.clip_low!r}: must be in [0, 1)")
    if not (_is_number(a.clip_high) and a.clip_high >= 0):
        found.append(f"algo.clip_high={a.clip_high!r}: must be >= 0")
    floor = cfg.actor.adaptive_floor
    if not (_is_number(floor) and 0 < floor <= 1):
        found.append(f"actor.adaptive_floor={floor!r}: must be in (0, 1]")
    return found


def address_problem(key: str, value: Any, bind: bool, any_port: bool) -> Optional[str]:
    """One address -> a problem line or None. tcp://host:port (port 1-65535, or * where
    ``any_port``: a server binding a free port; host * only where ``bind``) or ipc://path."""
    text = str(value)
    if text.startswith("ipc://") and len(text) > len("ipc://"):
        return None
    m = ADDRESS.match(text)
    port_ok = m is not None and (m["port"] == "*" and any_port or m["port"].isdigit()
                                 and 1 <= int(m["port"]) <= 65535)
    if port_ok and (bind or m["host"] != "*"):
        return None
    what = ("tcp://HOST:PORT (PORT 1-65535" + (" or *" if any_port else "")
            + (", HOST not *" if not bind else "") + ") or ipc://PATH")
    return f"{key}={value!r}: must be {what}"


def check_addresses(cfg: PushcutConfig, keys: Iterable[str], bind: bool,
                    any_port: bool = False) -> list[str]:
    """Each address field (a heartbeat address may list several, comma-separated); see
    :func:`address_problem`."""
    found = []
    for key in keys:
        value = get(cfg, key)
        parts = str(value).split(",") if key == "actor.heartbeat_address" else [value]
        found += [p for p in (address_problem(key, v, bind, any_port) for v in parts) if p]
    return found


def check_run_dir(cfg: PushcutConfig) -> list[str]:
    """``run_dir`` is a directory we may write, or can be made in one (nothing is made)."""
    path = Path(cfg.run_dir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        return [f"run_dir={cfg.run_dir!r}: must be a directory (it is a file)"]
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:    # an unnamed file, gone when closed: the real test, also for root
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return [f"run_dir={cfg.run_dir!r}: must be writable ({existing}: {exc.strerror})"]
    return []


def check_run(cfg: PushcutConfig) -> list[str]:
    """``pushcut run``'s own rules: its store and checkpoints live in run_dir, and its
    servers need fixed, distinct ports (the actors dial them)."""
    from common.config import load_config
    default, run_dir = load_config([]), Path(cfg.run_dir).expanduser().resolve()
    found = check_numbers(cfg, "run")
    for key, leaf in (("store.path", "store"), ("learner.checkpoint_dir", "checkpoints")):
        value = get(cfg, key)
        if value != get(default, key) and Path(value).expanduser().resolve() != run_dir / leaf:
            found.append(f"{key}={value!r}: pushcut run keeps it at <run_dir>/{leaf} "
                         f"({run_dir / leaf}); leave it unset or set run_dir instead")
    found += check_addresses(cfg, SERVERS, bind=True)
    seen: dict[str, str] = {}
    for key in SERVERS:
        value = str(get(cfg, key))
        m = ADDRESS.match(value)
        where = f"port {m['port']}" if m else value     # one machine: a port is taken once
        if where in seen:
            found.append(f"{key}={value!r}: must differ from {seen[where]} ({where}: each "
                         "server needs its own)")
        seen.setdefault(where, key)
    return found


def check_env(cfg: PushcutConfig) -> list[str]:
    """env.name, and for it the suite, layout and tasks; the keys of actor.task_weights."""
    from actors.envs import ENV_NAMES
    env, found = cfg.env, check_numbers(cfg, "env")
    if env.name not in ENV_NAMES:
        return [*found, f"env.name={env.name!r}: must be one of {', '.join(ENV_NAMES)}"]
    tasks, families, suites, layouts = _env_lists(env.name)
    if suites is not None and env.suite not in suites and not (env.name == "libero" and env.tasks):
        found.append(f"env.suite={env.suite!r}: must be one of {', '.join(suites)}")
    if layouts is not None and env.layout not in layouts:
        found.append(f"env.layout={env.layout!r}: must be one of {', '.join(layouts)}")
    known = ", ".join(tasks) if tasks is not None else "'<suite>/<index>'"
    for task in env.tasks:
        if not _task_known(task, tasks):
            found.append(f"env.tasks={list(env.tasks)!r}: {task!r} must be a {env.name} task "
                         f"({known})")
    for key, weight in cfg.actor.task_weights.items():
        if key not in families and not _task_known(key, tasks):
            found.append(f"actor.task_weights: key {key!r} must be a {env.name} family "
                         f"({', '.join(families)}) or task ({known})")
        elif not (_is_number(weight) and weight >= 0):
            found.append(f"actor.task_weights.{key}={weight!r}: must be a number >= 0")
    return found


def _env_lists(name: str) -> tuple[Optional[list[str]], list[str], Optional[list[str]],
                                   Optional[list[str]]]:
    """env.name -> (task ids or None when open-ended, families, suites, layouts)."""
    if name == "tabletop":
        from actors.envs.tabletop.tasks import FAMILIES, LAYOUTS, TASKS
        return list(TASKS), list(FAMILIES), ["all", *FAMILIES], list(LAYOUTS)
    if name == "libero":
        from actors.envs.libero import SUITES
        return None, list(SUITES), list(SUITES), None
    from actors.envs.probe import PROBES
    return list(PROBES), ["probe"], None, None


def _task_known(task: str, known: Optional[list[str]]) -> bool:
    """In the list, or (LIBERO, ``known`` None) a well-formed ``<suite>/<index>``."""
    if known is not None:
        return task in known
    from actors.envs.libero import parse_task_id
    try:
        parse_task_id(task)
    except ValueError:
        return False
    return True


def check_model(cfg: PushcutConfig) -> list[str]:
    """model.checkpoint a save_pretrained directory, else model.name and model.preset
    known (imports torch and the model's config module: run last)."""
    m = cfg.model
    if m.checkpoint:
        if not (Path(m.checkpoint) / "config.json").is_file():
            return [f"model.checkpoint={m.checkpoint!r}: must be a save_pretrained directory "
                    "(with config.json)"]
        return []
    from common.models import REGISTRY
    if m.name not in REGISTRY:
        return [f"model.name={m.name!r}: must be one of {', '.join(sorted(REGISTRY))}"]
    presets = model_presets(m.name)
    if presets is not None and m.preset not in presets:
        return [f"model.preset={m.preset!r}: must be one of {', '.join(presets)} for {m.name}"]
    return []


def model_presets(name: str) -> Optional[list[str]]:
    """The presets of a registered model (None: not known here)."""
    if name == "tiny_vla":
        from common.models.tiny_vla.configuration import PRESETS
        return list(PRESETS)
    if name == "openvla_oft":
        return ["tiny", "7b"]   # common/models/openvla_oft/configuration.py: preset_config
    return None


def check_placement(cfg: PushcutConfig) -> list[str]:
    """placement.* lists of cores that exist on this machine (the launcher pins roles
    here; on a Ray cluster each node's own cores)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    out = []
    for role in ("learner", "actors", "env_workers", "store", "evaluator"):
        value = get(cfg, f"placement.{role}")
        bad = [c for c in value if not isinstance(c, int) or c not in cores]
        if bad:
            out.append(f"placement.{role}={list(value)}: cores must be among {cores}")
    if not 0 <= cfg.placement.actors_nice <= 19:
        out.append(f"placement.actors_nice={cfg.placement.actors_nice}: must be 0-19 (a "
                   "lower priority for the actors; raising one needs no privilege)")
    subprocess_envs = cfg.actor.subprocess_envs or cfg.env.name == "libero"
    if cfg.placement.env_workers and not subprocess_envs:
        out.append(f"placement.env_workers={list(cfg.placement.env_workers)}: "
                   "actor.subprocess_envs must be true (in-process envs run on the actor's "
                   "cores)")
    from actors.env_workers import fifo_allowed
    if cfg.placement.env_workers_fifo and not (subprocess_envs and fifo_allowed()):
        out.append("placement.env_workers_fifo=true: actor.subprocess_envs must be true and "
                   "SCHED_FIFO allowed (root, or RLIMIT_RTPRIO >= 1)")
    return out


def _sections(*names: str) -> Callable[[PushcutConfig], list[str]]:
    return lambda cfg: [p for n in names for p in check_numbers(cfg, n)]


_ROLES = [check_algo, check_env, _sections("actor", "learner", "store")]
# command -> cheap checks; the model check follows when they pass (MODEL_CHECKED)
CHECKS: dict[str, list[Callable[[PushcutConfig], list[str]]]] = {
    "store": [_sections("store"),
              lambda c: check_addresses(c, SERVERS[:1], bind=True, any_port=True)],
    "actor": [check_algo, check_env, _sections("actor", "model"),
              lambda c: check_addresses(c, (*DIALS, "actor.heartbeat_address"), bind=False)],
    "learner": [check_algo, _sections("learner", "store", "model"), check_run_dir,
                lambda c: check_addresses(c, SERVERS, bind=True, any_port=True)],
    "run": [*_ROLES, _sections("model", "eval", "demos", "sft"), check_run, check_run_dir,
            check_placement],
    "experiment": [*_ROLES, _sections("model", "eval", "demos", "sft"), check_run,
                   check_run_dir],
    "soak": [*_ROLES, _sections("run", "model"), check_run_dir, check_placement,
             lambda c: check_addresses(c, SERVERS, bind=True)],
    "deploy": [*_ROLES, _sections("model"), check_run_dir],
    "demos": [check_env, _sections("demos", "model")],
    "sft": [_sections("sft", "model")],
    "eval": [check_env, _sections("eval", "model")],
    "evaluator": [check_env, _sections("eval", "model"), check_run_dir],
}
MODEL_CHECKED = ("actor", "learner", "run", "experiment", "soak", "deploy", "sft")


def problems(cfg: PushcutConfig, command: str) -> list[str]:
    """Every problem of ``cfg`` for ``command`` (commands not in CHECKS: none), one line
    each; the model is checked only when nothing else is wrong (it imports torch)."""
    found = [p for check in CHECKS.get(command, []) for p in check(cfg)]
    expert = command == "actor" and cfg.actor.policy == "expert"
    if not found and command in MODEL_CHECKED and not expert:
        found = check_model(cfg)
    return found
