"""The simulators pushcut knows, by ``env.name``: one :class:`EnvSpec` each.

A spec says what a simulator is without importing it: its factory, task ids, families,
suites and layouts are ``"module:attr"`` references resolved at first use, so importing this
module (and ``actors.envs``) costs no MuJoCo or robosuite import, while a config check can
still list a simulator's tasks. Whatever depends on the simulator (the env factory, the
env workers, the config checks, demos, benches) asks its spec instead of comparing names.

Add a simulator: its own module or folder under ``actors/envs/`` (a class with the TaskEnv
methods, built as ``Class(env_cfg, seed)``), its config class in ``common/config/envs.py``,
and one ``register_env(EnvSpec(...))`` entry at the end of this file (docs/envs.md).
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

from common.config.envs import EnvConfig, LiberoEnvConfig, ManiSkillEnvConfig, TabletopEnvConfig

Ref = Union[str, Callable[..., Any]]   # "module:attr", or the object itself


def resolve(ref: Ref) -> Any:
    """``"module:attr"`` -> the attribute (imports the module); anything else as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    if not attr:
        raise ValueError(f"{ref!r}: expected 'module:attr'")
    return getattr(importlib.import_module(module), attr)


@functools.lru_cache(maxsize=None)
def _names(ref: str) -> tuple[str, ...]:
    return tuple(resolve(ref))


@dataclass(frozen=True)
class LazyNames(Sequence):
    """The names (keys, for a dict) of a sequence that a simulator's module holds, imported
    at first use: the registry lists what each simulator has without importing any."""
    ref: str

    def __getitem__(self, index):
        return _names(self.ref)[index]

    def __len__(self) -> int:
        return len(_names(self.ref))

    def __iter__(self) -> Iterator[str]:
        return iter(_names(self.ref))

    def __contains__(self, name: object) -> bool:
        return name in _names(self.ref)


def camera_views(env_cfg: Any) -> int:
    """Agentview, plus the wrist camera when ``env.wrist_camera``."""
    return 2 if env_cfg.wrist_camera else 1


def one_view(env_cfg: Any) -> int:
    """A single camera, whatever ``env.wrist_camera`` says."""
    return 1


def config_image_size(env_cfg: Any) -> int:
    """Frames come out at ``env.image_size`` pixels a side (whatever the render size)."""
    return int(env_cfg.image_size)


@dataclass(frozen=True)
class EnvSpec:
    """One simulator. Sequences may be :class:`LazyNames`; references are ``"module:attr"``
    strings (or the objects), resolved only when used."""
    name: str
    factory: Ref
    """the TaskEnv class (or a function), called ``factory(env_cfg, seed)``"""
    config_class: type = EnvConfig
    """the env config class it reads (common/config/envs.py); subclasses serve too"""
    families: Sequence[str] = ()
    """``TaskSpec.family`` values (``actor.task_weights`` may key on them)"""
    tasks: Optional[Sequence[str]] = None
    """every task id; None when ids are open-ended and ``task_check`` decides"""
    task_check: Optional[Ref] = None
    """``(task_id) -> bool`` for open-ended ids (``tasks`` None)"""
    task_format: str = ""
    """how an open-ended task id is written, for messages (``<suite>/<index>``)"""
    suites: Optional[Sequence[str]] = None
    """values of ``env.suite``; None: the simulator has no suites"""
    layouts: Optional[Sequence[str]] = None
    """values of ``env.layout``; None: the simulator has no layouts"""
    subprocess_workers: bool = False
    """always one subprocess per env (too heavy to share the actor's process)"""
    worker_count: Optional[Ref] = None
    """``(requested, available_bytes, force) -> int``: how many env workers to start (a
    simulator whose envs take gigabytes caps them at what fits in memory)"""
    views: Callable[[Any], int] = camera_views
    """``env_cfg -> V``, the cameras in ``obs["images"]`` [V, S, S, 3]"""
    image_size: Callable[[Any], int] = config_image_size
    """``env_cfg -> S``, the side of each frame in pixels"""
    proprio_dim: int = 8
    """P, the length of ``obs["proprio"]``"""
    expert: Optional[Ref] = None
    """a scripted expert, ``Expert(env, noise=, seed=)`` with ``act()`` and
    ``clean_action`` (``pushcut demos`` records it); None: no expert"""
    setup: Optional[Ref] = None
    """``main(cfg, args)`` of ``pushcut setup <name>``; None: nothing to set up"""
    interpreter: Optional[Ref] = None
    """``() -> (python, environ)``: the interpreter the simulator runs in and the variables
    it needs, for a simulator whose packages cannot share pushcut's environment (its envs
    then live in subprocess env workers); None: this interpreter"""

    def make(self, env_cfg: Any, seed: int = 0) -> Any:
        """The TaskEnv for ``env_cfg`` (imports the simulator). A config of another class
        lacks this simulator's settings: refused here rather than at the first missing one."""
        if not isinstance(env_cfg, self.config_class):
            raise TypeError(f"env.name={self.name!r} reads a {self.config_class.__name__}, got "
                            f"a {type(env_cfg).__name__} (select the simulator with "
                            f"env={self.name}, which brings its settings)")
        return resolve(self.factory)(env_cfg, seed)

    def task_known(self, task_id: str) -> bool:
        """A task id of this simulator: in ``tasks``, or accepted by ``task_check``."""
        if self.tasks is not None:
            return task_id in self.tasks
        return self.task_check is not None and bool(resolve(self.task_check)(task_id))

    def known_tasks_text(self) -> str:
        """The task ids for a message: the list, or the open-ended form."""
        return ", ".join(self.tasks) if self.tasks is not None else repr(self.task_format)

    def count_workers(self, requested: int, available_bytes: Optional[int] = None,
                      force: bool = False) -> int:
        """How many env workers to start for ``requested`` envs."""
        if self.worker_count is None:
            return requested
        return int(resolve(self.worker_count)(requested, available_bytes, force))

    def elsewhere(self) -> Optional[tuple[str, dict[str, str]]]:
        """(python, environ) of the simulator's own interpreter when this is not it; None
        when the simulator runs here."""
        if self.interpreter is None:
            return None
        python, environ = resolve(self.interpreter)()
        here = os.path.realpath(sys.prefix)
        return None if os.path.realpath(os.path.dirname(os.path.dirname(python))) == here \
            else (python, environ)

    def expert_class(self) -> Optional[type]:
        return None if self.expert is None else resolve(self.expert)

    def obs_shapes(self, env_cfg: Any) -> dict[str, tuple[int, ...]]:
        """What ``reset``/``observe`` return for ``env_cfg``: images [V, S, S, 3], proprio [P]."""
        side = self.image_size(env_cfg)
        return {"images": (self.views(env_cfg), side, side, 3), "proprio": (self.proprio_dim,)}


_SPECS: dict[str, EnvSpec] = {}


def register_env(spec: EnvSpec) -> EnvSpec:
    """Add a simulator under ``spec.name``; registering the same spec again is a no-op, a
    different one under a taken name a ValueError (unregister it first)."""
    held = _SPECS.get(spec.name)
    if held is not None and held != spec:
        raise ValueError(f"env {spec.name!r} is already registered ({held.factory!r})")
    _SPECS[spec.name] = spec
    return spec


def unregister_env(name: str) -> None:
    _SPECS.pop(name, None)


def env_names() -> list[str]:
    return list(_SPECS)


def env_spec(name: str) -> EnvSpec:
    """The spec registered as ``name``; ValueError listing the registered names."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown env.name {name!r}; registered: {', '.join(_SPECS)}")
    return spec


# -- the simulators; each entry imports nothing until used -------------------------------
register_env(EnvSpec(
    "tabletop", "actors.envs.tabletop:TabletopEnv", TabletopEnvConfig,
    families=LazyNames("actors.envs.tabletop.tasks:FAMILIES"),
    tasks=LazyNames("actors.envs.tabletop.tasks:TASKS"),
    suites=LazyNames("actors.envs.tabletop.tasks:SUITES"),
    layouts=LazyNames("actors.envs.tabletop.tasks:LAYOUTS"),
    expert="actors.envs.tabletop:Expert"))
register_env(EnvSpec(
    "libero", "actors.envs.libero:LiberoEnv", LiberoEnvConfig,
    families=LazyNames("actors.envs.libero:SUITES"),
    task_check="actors.envs.libero:is_task_id", task_format="<suite>/<index>",
    suites=LazyNames("actors.envs.libero:SUITES"),
    # 2-3 GB an env: each in its own process, as many as fit in the memory free now
    subprocess_workers=True, worker_count="actors.env_workers:libero_worker_count",
    setup="actors.envs.libero_setup:main"))
register_env(EnvSpec(
    "maniskill", "actors.envs.maniskill:ManiSkillEnv", ManiSkillEnvConfig,
    families=LazyNames("actors.envs.maniskill_tasks:FAMILIES"),
    tasks=LazyNames("actors.envs.maniskill_tasks:TASKS"),
    suites=LazyNames("actors.envs.maniskill_tasks:SUITES"),
    # mani-skill pins gymnasium 0.29 and numpy < 2: its own interpreter, behind env workers
    subprocess_workers=True, interpreter="actors.envs.maniskill_setup:interpreter",
    views=one_view, proprio_dim=11,   # TCP pose (6), fingers (2), goal position (3)
    setup="actors.envs.maniskill_setup:main", expert="actors.envs.maniskill_expert:Planner"))
register_env(EnvSpec(
    "probe", "actors.envs.probe:ProbeEnv", EnvConfig,
    families=("probe",), tasks=LazyNames("actors.envs.probe:PROBES")))
