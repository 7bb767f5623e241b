"""The env registry (actors/envs/registry.py): every simulator a spec, read without importing
the simulator; an env registered from outside is built by make_env and the env workers."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from actors.env_workers import InProcessWorker, make_workers
from actors.envs import (EnvSpec, LazyNames, StepResult, TaskSpec, env_names,
                         env_spec, make_env, register_env, unregister_env)
from actors.envs.libero import RESERVE_BYTES, WORKER_BYTES
from common.config.schema import EnvConfig
from tests.actors.helpers import REPO

GIB = 1 << 30
# each simulator's own statement of its proprio length
PROPRIO_DIMS = {"tabletop": "actors.envs.tabletop.env:PROPRIO_DIM",
                "libero": "actors.envs.libero:PROPRIO_DIM",
                "maniskill": "actors.envs.maniskill:PROPRIO_DIM",
                "probe": "actors.envs.probe:PROPRIO_DIM"}


def test_the_specs_are_read_without_importing_any_simulator():
    code = ("import sys; from actors.envs import env_names, env_spec\n"
            "specs = [env_spec(n) for n in env_names()]\n"
            "print(sorted(s.name for s in specs))\n"
            "print([m for m in ('mujoco', 'robosuite', 'libero', 'actors.envs.tabletop', "
            "'actors.envs.libero', 'actors.envs.probe', 'actors.envs.maniskill', "
            "'mani_skill', 'sapien', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout.splitlines()
    assert out == ["['libero', 'maniskill', 'probe', 'tabletop']", "[]"]


@pytest.mark.parametrize("name", ["tabletop", "libero", "maniskill", "probe"])
def test_every_spec_is_complete(name):
    from actors.envs.registry import resolve
    spec = env_spec(name)
    assert spec.name == name and callable(resolve(spec.factory)) and len(spec.families) > 0
    assert (spec.tasks is None) == (spec.task_check is not None)
    assert spec.tasks is None or len(spec.tasks) > 0
    assert spec.proprio_dim == resolve(PROPRIO_DIMS[name])
    # its config class selects it: env=<name> brings a config whose name is <name>
    assert issubclass(spec.config_class, EnvConfig) and spec.config_class().name == name
    assert spec.count_workers(2, available_bytes=1 << 50) == 2


def test_unknown_names_are_refused_with_the_registered_ones():
    for call in (lambda: env_spec("mujoco_kitchen"),
                 lambda: make_env(EnvConfig(name="mujoco_kitchen"))):
        with pytest.raises(ValueError, match="mujoco_kitchen") as info:
            call()
        assert all(name in str(info.value) for name in ("tabletop", "libero", "probe"))


def test_task_ids_are_known_per_simulator():
    tabletop, libero, probe = env_spec("tabletop"), env_spec("libero"), env_spec("probe")
    assert tabletop.task_known("goal/1") and tabletop.task_known("long/3")
    assert not tabletop.task_known("goal/9") and not tabletop.task_known("libero_10/0")
    assert libero.task_known("libero_spatial/0") and libero.task_known("libero_90/89")
    for bad in ("libero_spatial", "libero_spatial/x", "spatial/0", "libero_11/0"):
        assert not libero.task_known(bad)
    assert probe.task_known("probe/right") and not probe.task_known("goal/1")
    assert libero.known_tasks_text() == "'<suite>/<index>'"
    assert probe.known_tasks_text() == "probe/right, probe/open"


def test_lists_suites_layouts_and_the_simulators_capabilities():
    tabletop, libero, probe = env_spec("tabletop"), env_spec("libero"), env_spec("probe")
    assert list(tabletop.suites) == ["all", "spatial", "object", "goal", "long"]
    assert list(tabletop.families) == ["spatial", "object", "goal", "long"]
    assert list(tabletop.layouts) == ["nominal", "uniform"] and len(tabletop.tasks) == 16
    assert "libero_10" in libero.suites and libero.layouts is None and probe.suites is None
    assert libero.subprocess_workers and not tabletop.subprocess_workers
    # LIBERO: as many workers as fit in memory
    assert libero.count_workers(8, RESERVE_BYTES + 3 * WORKER_BYTES + GIB // 2) == 3
    from actors.envs.tabletop import Expert
    assert tabletop.expert_class() is Expert and libero.expert_class() is None


@pytest.mark.parametrize("name", ["tabletop", "probe"])
def test_obs_shapes_are_what_the_env_returns(name):
    cfg = EnvConfig(name=name, image_size=16, wrist_camera=True)
    if name == "tabletop":
        from common.config.envs import TabletopEnvConfig
        cfg = TabletopEnvConfig(image_size=16, wrist_camera=True, tasks=["goal/0"])
    env = make_env(cfg)
    try:
        obs = env.reset(env.tasks()[0].task_id, 0)
        shapes = env_spec(name).obs_shapes(cfg)
        assert shapes == {k: v.shape for k, v in obs.items()} == {
            "images": (2, 16, 16, 3), "proprio": (8,)}
    finally:
        env.close()


def test_lazy_names_resolve_at_first_use_and_compare_by_reference():
    names = LazyNames("actors.envs.probe:PROBES")
    assert list(names) == ["probe/right", "probe/open"] and len(names) == 2
    assert names[1] == "probe/open" and "probe/right" in names and "x" not in names
    assert names == LazyNames("actors.envs.probe:PROBES") and hash(names)


class OneStepEnv:
    """The smallest TaskEnv: one task, success when the first action is positive."""

    def __init__(self, env_cfg, seed: int = 0):
        self.cfg, self.seed = env_cfg, seed
        self.obs = {"images": np.zeros((1, 4, 4, 3), np.uint8),
                    "proprio": np.zeros(3, np.float32)}

    def tasks(self):
        return [TaskSpec("one/0", "one", "move", 1)]

    def train_init_state_ids(self, task_id):
        return [0]

    def heldout_init_state_ids(self, task_id):
        return [1]

    def reset(self, task_id, init_state_id):
        return self.observe()

    def step(self, action, render=True):
        return StepResult(self.observe() if render else None, bool(action[0] > 0), True)

    def observe(self):
        return {k: v.copy() for k, v in self.obs.items()}

    def close(self):
        pass


def test_a_registered_env_is_built_by_make_env_and_the_workers():
    spec = EnvSpec("one_step", OneStepEnv, families=("one",), tasks=("one/0",),
                   proprio_dim=3, image_size=lambda cfg: 4)
    register_env(spec)
    try:
        assert env_spec("one_step") is spec and "one_step" in env_names()
        cfg = EnvConfig(name="one_step", image_size=4)
        env = make_env(cfg, seed=7)
        assert isinstance(env, OneStepEnv) and env.seed == 7 and env.cfg is cfg
        assert spec.obs_shapes(cfg) == {k: v.shape for k, v in env.reset("one/0", 0).items()}
        assert spec.task_known("one/0") and not spec.task_known("one/1")
        workers = make_workers(cfg, 2, seed=1, use_subprocess=False)
        assert [type(w) for w in workers] == [InProcessWorker] * 2
        register_env(spec)                                   # the same spec again: kept
        with pytest.raises(ValueError, match="already registered"):
            register_env(EnvSpec("one_step", "somewhere:Else"))
    finally:
        unregister_env("one_step")
    assert "one_step" not in env_names()
