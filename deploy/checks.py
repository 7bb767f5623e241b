"""The configuration, checked before a command starts anything (called by deploy/cli.py).

In: the composed :class:`~common.config.schema.PushcutConfig` and the command's name. Out:
:func:`problems` -> one line per bad setting, ``key=value: what is allowed`` (empty when the
config is fine); the CLI prints them and exits 2, having started nothing and written nothing.

A value that is wrong anywhere (a count below 1, an unknown choice, a malformed address) is
refused by its field's rule when the config is made (common/config/rules.py). What is
checked here needs more than one field's value, per command (:data:`CHECKS`): the run's
paths and its servers' fixed, distinct ports; the env against the simulators of actors/envs
(``env.name`` and the settings of its ``env`` option, ``suite``, ``layout`` and ``tasks``,
the keys of ``actor.task_weights``); the model (``model.checkpoint`` a ``save_pretrained``
directory, else a registered ``model.name`` and one of its presets); a writable
``run_dir`` and ``store.path``; a store that holds at least one batch; the CurveZMQ key
files and directories the roles will read (present, readable, holding the keys they need);
and the machine (``placement.*`` cores that exist here, SCHED_FIFO allowed, the servers'
ports free).

The policy a command starts from (``model.checkpoint``, or for ``pushcut run`` the warm
start ``<run_dir>/sft/final`` when it is there) fixes what the settings must agree with:
its ``config.json`` gives the image size, the camera views (``env.wrist_camera``), the
proprio length of the env, and ``model.num_bins``, ``model.chunk_size`` and
``model.action_dim`` (which a loaded policy would otherwise silently ignore); each
mismatch is one line (:data:`CHECKPOINT_KEYS`).

``pushcut run`` (and ``soak``, which starts the same roles) keeps its store and checkpoints
under ``run_dir``: a ``store.path`` or ``learner.checkpoint_dir`` other than the default (or
the run's own) is refused there rather than silently ignored. The model check imports torch
and the model's config module (a few seconds), so it runs only when every cheap check passed.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from common.config.endpoints import ENDPOINTS
from common.config.rules import tcp_parts, tcp_port
from common.config.schema import PushcutConfig


def get(cfg: PushcutConfig, key: str) -> Any:
    """``cfg`` and a dotted key (``algo.group_size``) -> its value."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_servers(cfg: PushcutConfig) -> list[str]:
    """The servers of one machine's run bind fixed ports (the actors dial them), each its
    own."""
    found, seen = [], {}
    for e in ENDPOINTS:
        value = str(get(cfg, e.server))
        port = tcp_port(value)
        if port == "*":
            found.append(f"{e.server}={value!r}: must name a port (the actors dial it)")
            continue
        where = f"port {port}" if port else value
        if where in seen:
            found.append(f"{e.server}={value!r}: must differ from {seen[where]} ({where}: "
                         "each server needs its own)")
        seen.setdefault(where, e.server)
    return found


def writable_dir_problem(key: str, value: str) -> list[str]:
    """``value`` is a directory we may write, or can be made in one (nothing is made)."""
    path = Path(value).expanduser().absolute()
    if path.exists() and not path.is_dir():
        return [f"{key}={value!r}: must be a directory (it is a file)"]
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:    # an unnamed file, gone when closed: the real test, also for root
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return [f"{key}={value!r}: must be writable ({existing}: {exc.strerror})"]
    return []


def check_run_dir(cfg: PushcutConfig) -> list[str]:
    return writable_dir_problem("run_dir", cfg.run_dir)


def check_store_path(cfg: PushcutConfig) -> list[str]:
    return writable_dir_problem("store.path", cfg.store.path)


def check_capacity(cfg: PushcutConfig) -> list[str]:
    """The store holds at least one batch, else the learner never gets one."""
    batch = cfg.algo.groups_per_batch * cfg.algo.group_size
    if cfg.store.capacity >= batch:
        return []
    return [f"store.capacity={cfg.store.capacity}: must hold at least one batch "
            f"(algo.groups_per_batch x algo.group_size = {batch} trajectories)"]


def _port_taken(address: str) -> bool:
    """Would binding this tcp address fail because something holds its port?"""
    parts = tcp_parts(address)
    if parts is None or parts[1] == "*":      # ipc://, or a free port: nothing to test
        return False
    host, port = parts
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    host = "" if host in ("*", "0.0.0.0") else host.strip("[]")
    try:      # a machine without IPv6 cannot make the socket: nothing holds the port then
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as ZeroMQ binds
            probe.bind((host, int(port)))
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    return False


def ports_free(*names: str) -> Callable[[PushcutConfig], list[str]]:
    """A check that the ports of these endpoints (all when none is named) are free here."""
    def check(cfg: PushcutConfig) -> list[str]:
        keys = [e.server for e in ENDPOINTS if not names or e.name in names]
        if names and "store" not in names and cfg.learner.host_store:
            keys.append(next(e.server for e in ENDPOINTS if e.name == "store"))
        return [f"{key}={get(cfg, key)!r}: its port is in use on this machine (another run "
                "still going? stop it or choose another port)"
                for key in keys if _port_taken(str(get(cfg, key)))]
    return check


def check_run(cfg: PushcutConfig) -> list[str]:
    """``pushcut run``'s own rules: its store and checkpoints live in run_dir, and its
    servers need fixed, distinct ports."""
    default, run_dir = PushcutConfig(), Path(cfg.run_dir).expanduser().resolve()
    found = []
    for key, leaf in (("store.path", "store"), ("learner.checkpoint_dir", "checkpoints")):
        value = get(cfg, key)
        if value != get(default, key) and Path(value).expanduser().resolve() != run_dir / leaf:
            found.append(f"{key}={value!r}: pushcut run keeps it at <run_dir>/{leaf} "
                         f"({run_dir / leaf}); leave it unset or set run_dir instead")
    return found + check_servers(cfg)


def check_env(cfg: PushcutConfig) -> list[str]:
    """env.name a registered simulator whose settings ``cfg.env`` carries, and for it the
    suite, layout and tasks; the keys of actor.task_weights."""
    from actors.envs import env_names, env_spec
    env, found = cfg.env, []
    if env.name not in env_names():
        return [f"env.name={env.name!r}: must be one of {', '.join(env_names())}"]
    spec = env_spec(env.name)
    if not isinstance(env, spec.config_class):
        return [f"env.name={env.name!r}: must be chosen with env={env.name}, which brings "
                "that simulator's settings"]
    # an open-ended task list (LIBERO's <suite>/<index>) names its suites itself
    if spec.suites is not None and env.suite not in spec.suites \
            and not (spec.tasks is None and env.tasks):
        found.append(f"env.suite={env.suite!r}: must be one of {', '.join(spec.suites)}")
    if spec.layouts is not None and env.layout not in spec.layouts:
        found.append(f"env.layout={env.layout!r}: must be one of {', '.join(spec.layouts)}")
    try:
        spec.elsewhere()        # a simulator in its own interpreter: is it set up?
    except RuntimeError as exc:
        found.append(f"env.name={env.name!r}: {exc}")
    known = spec.known_tasks_text()
    for task in env.tasks:
        if not spec.task_known(task):
            found.append(f"env.tasks={list(env.tasks)!r}: {task!r} must be a {env.name} task "
                         f"({known})")
    for key, weight in cfg.actor.task_weights.items():
        if key not in spec.families and not spec.task_known(key):
            found.append(f"actor.task_weights: key {key!r} must be a {env.name} family "
                         f"({', '.join(spec.families)}) or task ({known})")
        elif not (isinstance(weight, (int, float)) and weight >= 0):
            found.append(f"actor.task_weights.{key}={weight!r}: must be a number >= 0")
    return found


def check_model(cfg: PushcutConfig) -> list[str]:
    """model.checkpoint a save_pretrained directory, else model.name and model.preset
    known (imports torch and the model's config module: run last)."""
    m = cfg.model
    if m.checkpoint:
        if not (Path(m.checkpoint) / "config.json").is_file():
            return [f"model.checkpoint={m.checkpoint!r}: must be a save_pretrained directory "
                    "(with config.json)"]
        return []
    from common.models import REGISTRY, model_presets
    if m.name not in REGISTRY:
        return [f"model.name={m.name!r}: must be one of {', '.join(sorted(REGISTRY))}"]
    presets = model_presets(m.name)
    if m.preset not in presets:
        return [f"model.preset={m.preset!r}: must be one of {', '.join(presets)} for {m.name}"]
    return []


# the CurveZMQ settings of each role: its secret key file, then its other setting and what
# that names (a directory of accepted client public keys, or the servers' public key file)
CURVE_KEYS = {
    "store": ("store.curve_secret_key", "store.curve_authorized_dir", "dir"),
    "learner": ("learner.curve_secret_key", "learner.curve_authorized_dir", "dir"),
    "actor": ("actor.curve_secret_key", "actor.curve_server_key", "public"),
}


def key_file_problem(key: str, path: str, secret: bool) -> list[str]:
    """``path`` a readable ZeroMQ certificate holding a public key (and a secret one)."""
    import zmq.auth
    from zmq.utils import z85
    what = "secret key file (NAME.key_secret)" if secret else "public key file (NAME.key)"
    if not Path(path).is_file():
        return [f"{key}={path!r}: must be a CurveZMQ {what}; there is no such file "
                "(pushcut keys DIR NAME makes them)"]
    try:
        public, secret_key = zmq.auth.load_certificate(path)
        for k in (public, secret_key) if secret else (public,):
            if k is None or len(z85.decode(k)) != 32:
                raise ValueError("it holds no such key")
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        return [f"{key}={path!r}: must be a readable CurveZMQ {what}; {why} "
                "(pushcut keys DIR NAME makes them)"]
    return []


def curve_role_problems(cfg: PushcutConfig, role: str) -> list[str]:
    secret_key, other_key, kind = CURVE_KEYS[role]
    secret, other = get(cfg, secret_key), get(cfg, other_key)
    found = [] if secret is None else key_file_problem(secret_key, secret, secret=True)
    if other is None:
        if secret is not None and kind == "public":
            found.append(f"{other_key}=None: must be set with {secret_key} (the servers' "
                         "public key file)")
        return found
    if secret is None:
        return found + [f"{other_key}={other!r}: must come with {secret_key} (without it "
                        "the socket is plain TCP)"]
    if kind == "public":
        return found + key_file_problem(other_key, other, secret=False)
    if not os.access(other, os.R_OK | os.X_OK) or not Path(other).is_dir():
        found.append(f"{other_key}={other!r}: must be a readable directory of accepted "
                     "client public keys")
    return found


def curve_keys(*roles: str) -> Callable[[PushcutConfig], list[str]]:
    """A check that the CurveZMQ settings of these roles (all when none is named) name key
    files and directories that can be read, each with the keys it must hold."""
    def check(cfg: PushcutConfig) -> list[str]:
        wanted = list(roles or CURVE_KEYS)
        if "learner" in wanted and cfg.learner.host_store:
            wanted.append("store")
        return [p for role in dict.fromkeys(wanted) for p in curve_role_problems(cfg, role)]
    return check


# what a policy's config.json fixes, by its model_type: fact -> its key there (OpenVLA-OFT
# resizes its images to its own size and takes no proprio)
_OPENVLA = {"views": "num_images_in_input", "num_bins": "n_action_bins",
            "chunk_size": "chunk_size", "action_dim": "action_dim"}
CHECKPOINT_KEYS: dict[str, dict[str, str]] = {
    "pushcut_tiny_vla": {"image_size": "image_size", "views": "num_views",
                         "proprio_dim": "proprio_dim", "num_bins": "num_bins",
                         "chunk_size": "chunk_size", "action_dim": "action_dim"},
    "openvla": _OPENVLA, "openvla_oft": _OPENVLA,
}


def start_policy(cfg: PushcutConfig, command: str) -> Optional[tuple[str, Path]]:
    """(the setting that names it, the directory) of the policy ``command`` starts from,
    when there is one already: ``model.checkpoint``, else for ``pushcut run`` its warm start
    ``<run_dir>/sft/final``."""
    if cfg.model.checkpoint:
        return "model.checkpoint", Path(cfg.model.checkpoint)
    final = Path(cfg.run_dir).expanduser().resolve() / "sft" / "final"
    if command == "run" and (final / "config.json").is_file():
        return "run_dir", final
    return None


def env_facts(cfg: PushcutConfig) -> dict[str, tuple[str, Any, Any]]:
    """fact -> (the setting that decides it, its value, what the env gives), for the env
    facts a policy fixes; empty for an unregistered env (check_env names that)."""
    from actors.envs import env_names, env_spec
    if cfg.env.name not in env_names():
        return {}
    spec, env = env_spec(cfg.env.name), cfg.env
    return {"image_size": ("env.image_size", env.image_size, spec.image_size(env)),
            "views": ("env.wrist_camera", env.wrist_camera, spec.views(env)),
            "proprio_dim": ("env.name", env.name, spec.proprio_dim)}


def mismatch(fact: str, key: str, value: Any, gives: Any, wants: Any, where: str) -> str:
    """One line: the setting ``key=value`` against what the policy ``where`` fixes."""
    if fact == "views" and wants in (1, 2):
        return (f"{key}={value!r}: must be {str(wants == 2).lower()}, as the policy {where} "
                f"takes {wants} camera view(s)")
    if fact == "views":
        return f"{key}={value!r}: must give {wants} camera views ({where}); it gives {gives}"
    if fact == "proprio_dim":
        return (f"{key}={value!r}: must give proprio of {wants} values, as the policy "
                f"{where} takes; it gives {gives}")
    what = {"image_size": "image size", "num_bins": "action bins",
            "chunk_size": "chunk size", "action_dim": "action dimensions"}[fact]
    return f"{key}={value!r}: must be {wants}, the {what} of the policy {where}"


def check_start_policy(cfg: PushcutConfig, command: str) -> list[str]:
    """The settings against the policy the command starts from (:func:`start_policy`):
    one line per fact of :data:`CHECKPOINT_KEYS` they disagree on."""
    found = start_policy(cfg, command)
    if found is None:
        return []
    source, path = found
    where = f"in {path}" + (" (the run's warm start)" if source == "run_dir" else "")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"{source}={str(get(cfg, source))!r}: the policy's {path / 'config.json'} "
                f"must be readable JSON ({exc})"]
    keys = CHECKPOINT_KEYS.get(config.get("model_type"), {})
    m = cfg.model
    settings = {"num_bins": ("model.num_bins", m.num_bins, m.num_bins),
                "chunk_size": ("model.chunk_size", m.chunk_size, m.chunk_size),
                "action_dim": ("model.action_dim", m.action_dim, m.action_dim),
                **env_facts(cfg)}
    return [mismatch(fact, key, value, gives, config[keys[fact]], where)
            for fact, (key, value, gives) in settings.items()
            if fact in keys and keys[fact] in config and config[keys[fact]] != gives]


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
    from actors.envs import env_names, env_spec
    # a simulator whose spec asks for subprocess workers gets them whatever the setting says
    subprocess_envs = cfg.actor.subprocess_envs or (
        cfg.env.name in env_names() and env_spec(cfg.env.name).subprocess_workers)
    if cfg.placement.env_workers and not subprocess_envs:
        out.append(f"placement.env_workers={list(cfg.placement.env_workers)}: "
                   "actor.subprocess_envs must be true (in-process envs run on the actor's "
                   "cores)")
    from actors.env_workers import fifo_allowed
    if cfg.placement.env_workers_fifo and not (subprocess_envs and fifo_allowed()):
        out.append("placement.env_workers_fifo=true: actor.subprocess_envs must be true and "
                   "SCHED_FIFO allowed (root, or RLIMIT_RTPRIO >= 1)")
    return out


# command -> cheap checks; the model check follows when they pass (MODEL_CHECKED)
CHECKS: dict[str, list[Callable[[PushcutConfig], list[str]]]] = {
    "store": [check_store_path, curve_keys("store"), ports_free("store")],
    "actor": [check_env, curve_keys("actor")],
    "learner": [check_run_dir, check_store_path, check_capacity, curve_keys("learner"),
                ports_free("weights", "announce", "heartbeat")],
    "run": [check_env, check_run, check_run_dir, check_capacity, check_placement,
            curve_keys(), ports_free()],
    "experiment": [check_env, check_run, check_run_dir, check_capacity, curve_keys()],
    "soak": [check_env, check_servers, check_run_dir, check_capacity, check_placement,
             curve_keys(), ports_free()],
    "deploy": [check_env, check_run_dir, check_capacity],
    "demos": [check_env],
    "eval": [check_env],
    "evaluator": [check_env, check_run_dir],
}
MODEL_CHECKED = ("actor", "learner", "run", "experiment", "soak", "deploy", "sft")


def problems(cfg: PushcutConfig, command: str) -> list[str]:
    """Every problem of ``cfg`` for ``command`` (commands not in CHECKS: none), one line
    each; the model, then the settings against the policy it starts from, are checked only
    when nothing else is wrong (the model check imports torch)."""
    found = [p for check in CHECKS.get(command, []) for p in check(cfg)]
    expert = command == "actor" and cfg.actor.policy == "expert"
    if not found and command in MODEL_CHECKED and not expert:
        found = check_model(cfg) or check_start_policy(cfg, command)
    return found
