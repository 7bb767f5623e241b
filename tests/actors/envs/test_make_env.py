"""The env factory (actors/envs/__init__.py)."""
import sys
import types

import pytest

from actors.envs import make_env
from actors.envs.tabletop import TabletopEnv
from common.config.envs import EnvConfig, LiberoEnvConfig, TabletopEnvConfig


def test_tabletop_by_name_with_its_config():
    env = make_env(TabletopEnvConfig(suite="spatial", image_size=32), seed=3)
    assert isinstance(env, TabletopEnv)
    assert [t.family for t in env.tasks()] == ["spatial"] * 4
    assert env.reset("spatial/0", 0)["images"].shape == (1, 32, 32, 3)
    env.close()


def test_libero_is_imported_only_when_asked_for(monkeypatch):
    # LIBERO needs `pushcut setup libero`; here only the dispatch is under test: a stand-in
    # module records what the factory passes on.
    made = []
    stand_in = types.ModuleType("actors.envs.libero")
    stand_in.LiberoEnv = lambda cfg, seed: made.append(cfg) or "libero-env"
    monkeypatch.setitem(sys.modules, "actors.envs.libero", stand_in)
    cfg = LiberoEnvConfig(suite="libero_spatial")
    assert make_env(cfg) == "libero-env" and made == [cfg]


def test_a_config_without_the_simulators_settings_is_refused():
    with pytest.raises(TypeError, match="reads a TabletopEnvConfig.*env=tabletop"):
        make_env(EnvConfig(name="tabletop"))


def test_unknown_name_is_named():
    with pytest.raises(ValueError, match="mujoco_kitchen"):
        make_env(EnvConfig(name="mujoco_kitchen"))
