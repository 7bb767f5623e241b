"""One source of defaults: what ``load_config([])`` composes is ``PushcutConfig()``, each
group option is the dataclass registered for it, and those defaults are the tuned values the
quick start runs with."""
from __future__ import annotations

import dataclasses

import pytest

from common.config import LiberoEnvConfig, PushcutConfig, TabletopEnvConfig, load_config
from common.config.loading import GROUP_OPTIONS


def leaves(obj, prefix=""):
    """Dataclass -> {dotted field: value}, with each section's class as a leaf too."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f"{prefix}{f.name}"] = type(value)
            out.update(leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def test_the_composed_config_is_the_dataclass_defaults_field_by_field():
    composed, built = leaves(load_config([])), leaves(PushcutConfig())
    assert composed.keys() == built.keys()
    assert {k: v for k, v in composed.items() if built[k] != v} == {}
    assert load_config([]) == PushcutConfig()


OPTIONS = [(group, name) for group, options in GROUP_OPTIONS.items() for name in options]


@pytest.mark.parametrize("group, name", OPTIONS, ids=[f"{g}={n}" for g, n in OPTIONS])
def test_each_group_option_is_its_registered_dataclass(group, name):
    section = getattr(load_config([f"{group}={name}"]), group)
    assert type(section) is type(GROUP_OPTIONS[group][name])
    assert leaves(section) == leaves(GROUP_OPTIONS[group][name])


def test_the_quick_start_runs_the_tuned_values():
    cfg = PushcutConfig()
    assert cfg.algo.temperature == 1.0
    assert cfg.algo.lr == 3e-5
    assert (cfg.algo.groups_per_batch, cfg.algo.mini_batches) == (16, 4)
    assert (cfg.model.name, cfg.model.num_bins) == ("tiny_vla", 7)
    assert cfg.learner.torch_threads == 1
    assert isinstance(cfg.env, TabletopEnvConfig) and cfg.env.num_heldout_init_states == 50


def test_an_env_option_brings_its_simulator_s_settings():
    libero = load_config(["env=libero", "env.center_crop=true"]).env
    assert isinstance(libero, LiberoEnvConfig) and libero.center_crop
    assert (libero.image_size, libero.render_size) == (224, 256)
    with pytest.raises(Exception, match="center_crop"):
        load_config(["env.center_crop=true"])          # the tabletop suite has no crop
    assert load_config(["model=openvla_oft_7b"]).model.dtype == "bfloat16"
    assert load_config(["experiment=onedemo"]).env.num_train_init_states == 1000
