"""deploy/roles.py: the role command lines every launcher uses, read back as each role's
config (what ``python -m deploy.cli <role> ...`` would load)."""
from __future__ import annotations

import sys
from pathlib import Path

from common.config import load_config
from deploy.roles import (
    RoleCommand, cluster_addresses, config_overrides, local_addresses, merge, role_commands,
    run_local_paths, run_paths,
)


def test_a_local_run_s_roles_share_paths_and_actors_dial_the_servers(tmp_path):
    cfg = load_config(["num_actors=2", "learner.heartbeat_address=tcp://0.0.0.0:6001",
                       "store.ingest_address=tcp://*:6000", "actor.seed=7"])
    per_role = merge(local_addresses(cfg, "tcp://127.0.0.1:6100"),
                     run_paths(tmp_path / "r un", "/ckpt/it's"))
    commands = role_commands(cfg, config_overrides(cfg), per_role, range(cfg.num_actors))
    assert list(commands) == ["store", "learner", "actor-0", "actor-1"]
    assert commands["actor-1"].argv()[:4] == [sys.executable, "-m", "deploy.cli", "actor"]
    store, learner, actor1 = (load_config(commands[n].overrides)
                              for n in ("store", "learner", "actor-1"))
    for role_cfg in (store, learner, actor1):
        assert role_cfg.run_dir == str(tmp_path / "r un")
        assert role_cfg.store.path == str(tmp_path / "r un" / "store")
        assert role_cfg.model.checkpoint == "/ckpt/it's"
    assert learner.learner.checkpoint_dir == str(tmp_path / "r un" / "checkpoints")
    assert learner.store.ingest_address == "tcp://*:6000"
    assert (actor1.actor.actor_id, actor1.actor.seed) == ("actor-1", 8)
    assert actor1.actor.store_address == "tcp://127.0.0.1:6000"
    assert actor1.actor.heartbeat_address == "tcp://127.0.0.1:6001,tcp://127.0.0.1:6100"


def test_a_cluster_s_servers_bind_and_actors_dial_the_deploy_ports():
    cfg = load_config(["deploy.ports.store=7000", "deploy.ports.heartbeat=7003",
                       "learner.host_store=true"])
    per_role = cluster_addresses(cfg, dial_host="10.0.0.5", bind_host="0.0.0.0")
    servers = role_commands(cfg, ["wandb=false"], per_role, actors=())
    assert list(servers) == ["learner"]           # the learner hosts the store
    learner = load_config(servers["learner"].overrides)
    assert learner.store.ingest_address == "tcp://0.0.0.0:7000"
    assert learner.learner.heartbeat_address == "tcp://0.0.0.0:7003"
    (name, command), = role_commands(cfg, [], per_role, [3], servers=False).items()
    actor = load_config(command.overrides)
    assert name == "actor-3" and actor.actor.actor_id == "actor-3"
    assert actor.actor.store_address == "tcp://10.0.0.5:7000"
    assert actor.actor.heartbeat_address == "tcp://10.0.0.5:7003"
    assert RoleCommand("store", ["a=1"]).argv()[3:] == ["store", "a=1"]


def test_run_paths_keep_what_is_given(tmp_path):
    cfg = load_config([f"run_dir={tmp_path}", "store.path=/elsewhere"])
    over, store = run_local_paths(cfg, [f"run_dir={tmp_path}", "++store.path=/elsewhere"])
    assert store == "/elsewhere"
    assert over[-1] == f"learner.checkpoint_dir={Path(tmp_path)}/checkpoints"
