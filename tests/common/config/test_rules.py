"""Each field's rules: a bad value is one line ``key=value: must be ...``, raised as
ConfigError where the config is made (from Python or from the command line alike)."""
from __future__ import annotations

import dataclasses

import pytest

from common.config import (
    AlgoConfig, ConfigError, DeployConfig, LiberoEnvConfig, PushcutConfig, load_config,
)
from common.config.endpoints import ENDPOINTS, default_ports
from common.config.commands import RestartIntensity
from common.config.rules import address, problems, tcp_parts, tcp_port


def test_the_default_config_has_no_problem():
    assert problems(PushcutConfig()) == []


def test_a_python_caller_hears_of_every_bad_value():
    with pytest.raises(ConfigError) as info:
        PushcutConfig(num_actors=0, algo=AlgoConfig(group_size=1, temperature=0.0),
                      env=LiberoEnvConfig(center_crop_scale=0.0))
    assert info.value.lines == [
        "num_actors=0: must be an integer >= 1",
        "env.center_crop_scale=0.0: must be a number in (0, 1]",
        "algo.group_size=1: must be an integer >= 2",
        "algo.temperature=0.0: must be a number > 0",
    ]
    assert isinstance(info.value, ValueError)


def test_the_command_line_is_refused_the_same_way():
    with pytest.raises(ConfigError, match=r"^actor.max_groups=0: must be an integer >= 1 "
                                          r"\(or null\)$"):
        load_config(["actor.max_groups=0"])
    assert load_config(["actor.max_groups=null"]).actor.max_groups is None


def test_a_rule_across_a_section_runs_once_its_fields_pass():
    assert problems(PushcutConfig(), "") == []
    bad = dataclasses.replace(AlgoConfig(), success_lo=0.8, success_hi=0.2)
    assert problems(bad, "algo.") == ["algo.success_lo=0.8, algo.success_hi=0.2: must "
                                      "satisfy success_lo <= success_hi"]
    assert problems(dataclasses.replace(bad, success_hi=1.5), "algo.") == [
        "algo.success_hi=1.5: must be a number in [0, 1]"]
    crowded = dataclasses.replace(AlgoConfig(), replay_trajectories=65)   # 16 x 4 fit
    assert problems(crowded, "algo.") == ["algo.replay_trajectories=65: must be <= "
                                          "micro_batch_size x mini_batches = 64"]
    assert problems(dataclasses.replace(crowded, replay_trajectories=64), "algo.") == []


@pytest.mark.parametrize("value, bind, ok", [
    ("tcp://127.0.0.1:5555", False, True), ("tcp://*:5555", True, True),
    ("tcp://*:5555", False, False), ("tcp://0.0.0.0:*", True, True),
    ("tcp://host:*", False, False), ("tcp://127.0.0.1", True, False),
    ("localhost:5558", True, False), ("tcp://h:70000", True, False),
    ("ipc:///run/x", False, True), ("ipc://", True, False),
])
def test_addresses(value, bind, ok):
    assert (address(bind).problem(value) is None) is ok


@pytest.mark.parametrize("value, parts", [
    ("tcp://127.0.0.1:5555", ("127.0.0.1", "5555")), ("tcp://*:*", ("*", "*")),
    ("tcp://[::1]:5555", ("[::1]", "5555")), ("tcp://host.example:80", ("host.example", "80")),
    ("ipc:///run/x", None), ("tcp://127.0.0.1", None), ("localhost:5558", None),
])
def test_a_tcp_address_is_read_by_one_rule(value, parts):
    assert tcp_parts(value) == parts
    assert tcp_port(value) == (parts[1] if parts else None)


def test_each_role_of_a_run_has_its_own_restart_intensity():
    cfg = load_config(["run.restarts.actor.max_restarts=9", "run.restarts.actor.window_s=60"])
    assert (cfg.run.restarts.actor.max_restarts, cfg.run.restarts.actor.window_s) == (9, 60)
    assert cfg.run.restarts.learner == RestartIntensity() == cfg.run.restarts.store
    with pytest.raises(ConfigError, match=r"^run.restarts.store.max_restarts=-1: must be an "
                                          r"integer >= 0$"):
        load_config(["run.restarts.store.max_restarts=-1"])
    with pytest.raises(ConfigError, match=r"^run.restarts.learner.backoff_s=60.0, "
                                          r"run.restarts.learner.max_backoff_s=30.0: must "
                                          r"satisfy backoff_s <= max_backoff_s$"):
        load_config(["run.restarts.learner.backoff_s=60"])
    with pytest.raises(ConfigError, match=r"^run.stall_after=1.0: must be a number > 1$"):
        load_config(["run.stall_after=1"])


def test_several_addresses_only_where_the_endpoint_fans_out():
    two = "tcp://127.0.0.1:1,tcp://127.0.0.1:2"
    assert load_config([f"actor.heartbeat_address='{two}'"]).actor.heartbeat_address == two
    with pytest.raises(ConfigError, match="actor.store_address"):
        load_config([f"actor.store_address='{two}'"])


def test_the_endpoint_table_gives_the_address_defaults_and_the_ports():
    cfg = PushcutConfig()
    for e in ENDPOINTS:
        for key in (e.server, e.client):
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == f"tcp://127.0.0.1:{e.port}"
    assert cfg.deploy.ports == default_ports()
    assert load_config(["deploy.ports.store=7000"]).deploy.ports["store"] == 7000
    with pytest.raises(ConfigError, match="deploy.ports"):
        PushcutConfig(deploy=DeployConfig(ports={**default_ports(), "store": 5556}))
