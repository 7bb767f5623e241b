"""The command lines of pushcut's roles (``python -m deploy.cli <role> key=value ...``), built
once for every launcher: ``pushcut run`` (deploy/run.py), ``pushcut soak``
(deploy/soak.py) and ``pushcut deploy`` (deploy/ray_launch.py).

In: the composed config and the overrides every role shares. Out: per role the overrides
that only it gets (where the servers bind, what the actors dial, the run's paths), per actor
its identity (``actor.actor_id=actor-<i>``, ``actor.seed`` + i), and :class:`RoleCommand`
(role + overrides -> argv); :func:`role_process` puts one under a
:class:`~deploy.supervisor.ProcessSupervisor` with its output in ``<log_dir>/<name>.log``.

Overrides are ``++key=value`` with the value a Hydra literal (:func:`literal`), so any
string (paths with spaces or quotes, comma-separated addresses) reaches the role unchanged;
the last override of a key wins.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Optional

from common.config.endpoints import ENDPOINTS, tcp_address
from common.config.schema import PushcutConfig
from deploy.supervisor import ProcessSupervisor

ROLES = ("store", "learner", "actor")
# every role's environment: unbuffered output (logs appear as written), wide rich log lines
ROLE_ENV = {"PYTHONUNBUFFERED": "1", "COLUMNS": "240"}
# paths a local run keeps under its run_dir: (field, directory name)
RUN_DIR_PATHS = (("store.path", "store"), ("learner.checkpoint_dir", "checkpoints"))


# ---------------------------------------------------------------- key=value
def literal(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot pass {type(value).__name__} {value!r} as an override")


def override(key: str, value: Any) -> str:
    return f"++{key}={literal(value)}"


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dataclass -> {dotted field name: value} (dict-valued fields are leaves)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def config_overrides(cfg: PushcutConfig) -> list[str]:
    """``++key=value`` for every field of ``cfg`` that differs from the default config,
    after ``group=option`` for a section of another class than the default's (``env=libero``:
    its fields exist only once it is selected)."""
    from common.config import load_config
    from common.config.loading import GROUP_OPTIONS, group_option
    base = load_config([])
    select = [f"{group}={group_option(group, getattr(cfg, group))}" for group in GROUP_OPTIONS
              if type(getattr(cfg, group)) is not type(getattr(base, group))]
    mine, default = _leaves(cfg), _leaves(load_config(select) if select else base)
    return select + [override(k, v) for k, v in mine.items() if default.get(k, object()) != v]


def _field(cfg: PushcutConfig, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


# ---------------------------------------------------------------- per role
def dial(address: str) -> str:
    """A bound address (maybe 0.0.0.0 or *) -> one a local process can connect to."""
    return address.replace("://0.0.0.0:", "://127.0.0.1:").replace("://*:", "://127.0.0.1:")


def _by_role(binds: dict[str, str], dials: dict[str, str]) -> dict[str, list[str]]:
    """Store and learner get every server address (a learner with ``learner.host_store``
    binds the store's too), actors what they dial."""
    servers = [override(k, v) for k, v in binds.items()]
    return {"store": servers, "learner": servers,
            "actor": [override(k, v) for k, v in dials.items()]}


def local_addresses(cfg: PushcutConfig, status_heartbeats: Optional[str] = None
                    ) -> dict[str, list[str]]:
    """One machine: the servers bind the config's addresses, the actors dial them on
    127.0.0.1; ``status_heartbeats``: one more address each heartbeat goes to."""
    binds = {e.server: _field(cfg, e.server) for e in ENDPOINTS}
    dials = {e.client: dial(binds[e.server]) for e in ENDPOINTS}
    if status_heartbeats:
        dials["actor.heartbeat_address"] += "," + status_heartbeats
    return _by_role(binds, dials)


def cluster_addresses(cfg: PushcutConfig, dial_host: str, bind_host: str
                      ) -> dict[str, list[str]]:
    """A cluster: the servers bind ``bind_host`` at the ``deploy.ports``, the actors dial
    ``dial_host`` there."""
    ports = cfg.deploy.ports
    binds = {e.server: tcp_address(ports[e.name], bind_host) for e in ENDPOINTS}
    dials = {e.client: tcp_address(ports[e.name], dial_host) for e in ENDPOINTS}
    return _by_role(binds, dials)


def run_paths(run_dir: Path, checkpoint: str) -> dict[str, list[str]]:
    """``pushcut run``: every role works in ``run_dir`` from the policy ``checkpoint``."""
    paths = {key: str(run_dir / leaf) for key, leaf in RUN_DIR_PATHS}
    base = [override("run_dir", str(run_dir)), override("model.checkpoint", checkpoint),
            override("store.path", paths["store.path"])]
    return {"store": base, "actor": base,
            "learner": [*base, override("learner.checkpoint_dir",
                                        paths["learner.checkpoint_dir"])]}


def run_local_paths(cfg: PushcutConfig, overrides: list[str]) -> tuple[list[str], str]:
    """``pushcut soak`` (which passes the user's overrides on as given): ``overrides`` plus
    the RUN_DIR_PATHS under ``run_dir`` that they do not give, as ``pushcut run`` would
    place them. -> (overrides, the store path in effect)."""
    given = lambda key: any(o.lstrip("+").startswith(key + "=") for o in overrides)  # noqa: E731
    extra = [f"{key}={cfg.run_dir}/{leaf}" for key, leaf in RUN_DIR_PATHS if not given(key)]
    store_path = cfg.store.path if given("store.path") else f"{cfg.run_dir}/store"
    return [*overrides, *extra], store_path


def merge(*per_role: dict[str, list[str]]) -> dict[str, list[str]]:
    return {role: [o for d in per_role for o in d.get(role, [])] for role in ROLES}


def actor_name(index: int) -> str:
    return f"actor-{index}"


def actor_overrides(cfg: PushcutConfig, index: int) -> list[str]:
    """Actor ``index``'s identity: its id and a seed of its own."""
    return [override("actor.actor_id", actor_name(index)),
            override("actor.seed", cfg.actor.seed + index)]


# ---------------------------------------------------------------- command lines
def role_argv(role: str, overrides: list[str]) -> list[str]:
    """The command line of one pushcut role run by the current interpreter."""
    return [sys.executable, "-m", "deploy.cli", role, *overrides]


class RoleCommand(NamedTuple):
    role: str
    overrides: list[str]
    cpus: tuple[int, ...] = ()   # placement: cores the process may run on (empty = any)
    nice: int = 0                # placement: added to the process's nice value

    def argv(self) -> list[str]:
        """Evaluated where the process starts (a Ray node's interpreter)."""
        return role_argv(self.role, self.overrides)


def role_commands(cfg: PushcutConfig, common: list[str], per_role: dict[str, list[str]],
                  actors: Iterable[int], servers: bool = True) -> dict[str, RoleCommand]:
    """name -> command, in start order: the store (unless the learner hosts it), the learner,
    then ``actor-<i>`` for each index in ``actors``."""
    out = {}
    place = cfg.placement
    if servers and not cfg.learner.host_store:
        out["store"] = RoleCommand("store", [*common, *per_role.get("store", [])],
                                   tuple(place.store))
    if servers:
        # a learner hosting the store gives it its own cores too
        cores = place.learner + (place.store if cfg.learner.host_store else [])
        out["learner"] = RoleCommand("learner", [*common, *per_role.get("learner", [])],
                                     tuple(dict.fromkeys(cores)))
    for i in actors:
        out[actor_name(i)] = RoleCommand("actor", [*common, *per_role.get("actor", []),
                                                   *actor_overrides(cfg, i)], tuple(place.actors),
                                        place.actors_nice)
    return out


def placement_text(commands: dict[str, RoleCommand]) -> str:
    """'learner cpus 0, actor-0 cpus 1 nice 10, ...' (roles left on every core at the
    default priority are not named)."""
    def text(c: RoleCommand) -> str:
        return " ".join(([f"cpus {','.join(map(str, c.cpus))}"] if c.cpus else [])
                        + ([f"nice {c.nice}"] if c.nice else []))
    return ", ".join(f"{n} {text(c)}" for n, c in commands.items()
                     if c.cpus or c.nice) or "every role on every core"


def role_process(name: str, command: RoleCommand, log_dir: str | Path,
                 env: Optional[dict[str, str]] = None, **options: Any) -> ProcessSupervisor:
    """``command`` under a (not yet started) supervisor pinned to its cores, its output in
    ``<log_dir>/<name>.log``; ``options`` go to :class:`ProcessSupervisor`."""
    return ProcessSupervisor(name, command.argv(), env={**ROLE_ENV, **(env or {})},
                             log_path=str(Path(log_dir) / f"{name}.log"), cpus=command.cpus,
                             nice=command.nice,
                             **options)


def run_step(name: str, role: str, overrides: list[str], log_dir: Path, console: Any,
             signals: Any, launcher: str = "pushcut run") -> None:
    """Run one preparation command (``pushcut <role>``) to completion under ``launcher``, its
    output in ``<log_dir>/<name>.log``. The first stop signal (``signals``: a
    :class:`~common.process.StopSignals`) stops it and raises; a second one hurries it; a
    non-zero exit raises with the log's last lines."""
    child = role_process(name, RoleCommand(role, overrides), log_dir, max_restarts=0).start()
    console.print(f"[bold]{launcher}[/]: {name} (pid {child.pid}, log {child.log_path})")
    while child.alive:
        if signals.stop.wait(0.5):
            child.stop(timeout_s=30, hurry=signals.hurry)
            raise RuntimeError(f"interrupted during `pushcut {role}`")
    if child.returncode != 0:
        raise RuntimeError(f"`pushcut {role}` failed (exit {child.returncode}); "
                           f"see {child.log_path}:\n{child.tail()}")
