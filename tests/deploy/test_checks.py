"""deploy/checks.py in process: a taken port found through the one tcp rule (IPv6 literals
included), the CurveZMQ key files each role reads, and the settings against what a policy's
config.json fixes, for each model type (the command-line forms are in
test_run_supervision.py)."""
from __future__ import annotations

import json
import socket

import pytest
import zmq.auth

from common.config import load_config
from deploy.checks import _port_taken, problems
from tests.waiting import server_addresses


def test_a_port_held_by_another_socket_is_taken_ipv4_and_ipv6():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert _port_taken(f"tcp://127.0.0.1:{port}") and _port_taken(f"tcp://*:{port}")
    assert not _port_taken(f"tcp://127.0.0.1:{port}")
    assert not _port_taken("tcp://127.0.0.1:*") and not _port_taken("ipc:///tmp/x")
    try:
        holder6 = socket.socket(socket.AF_INET6)
        holder6.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with holder6:
        holder6.listen()
        assert _port_taken(f"tcp://[::1]:{holder6.getsockname()[1]}")


def run_problems(tmp_path, *overrides: str) -> list[str]:
    ports = [f"{k}={v}" for k, v in server_addresses().items()]   # the defaults may be taken
    return problems(load_config([f"run_dir={tmp_path / 'run'}", *ports, *overrides]), "run")


def test_curve_keys_must_be_readable_and_hold_what_their_role_needs(tmp_path):
    public, secret = zmq.auth.create_certificates(tmp_path, "server")
    (tmp_path / "garbage.key").write_text("not a certificate\n")
    assert run_problems(tmp_path, f"store.curve_secret_key={secret}",
                        f"learner.curve_secret_key={secret}",
                        f"learner.curve_authorized_dir={tmp_path}",
                        f"actor.curve_secret_key={secret}",
                        f"actor.curve_server_key={public}") == []
    cases = {
        f"store.curve_secret_key={tmp_path}/missing": "there is no such file",
        f"store.curve_secret_key={tmp_path}/garbage.key": "No public key found",
        f"learner.curve_secret_key={public}": "it holds no such key",      # public only
        f"actor.curve_secret_key={secret}": "must be set with actor.curve_secret_key",
        f"actor.curve_server_key={public}": "must come with actor.curve_secret_key",
    }
    for override, why in cases.items():
        found = run_problems(tmp_path, override)
        assert len(found) == 1 and why in found[0], (override, found)
    found = run_problems(tmp_path, f"store.curve_secret_key={secret}",
                         f"store.curve_authorized_dir={tmp_path}/none")
    assert found == [f"store.curve_authorized_dir='{tmp_path}/none': must be a readable "
                     "directory of accepted client public keys"]
    # a learner that hosts the store binds the store's socket with the store's keys
    ports = [f"{k}={v}" for k, v in server_addresses().items()]
    found = problems(load_config([f"run_dir={tmp_path}", *ports, "learner.host_store=true",
                                  f"store.curve_secret_key={tmp_path}/missing"]), "learner")
    assert len(found) == 1 and found[0].startswith("store.curve_secret_key=")


def policy_dir(tmp_path, config: dict):
    path = tmp_path / "policy"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_the_settings_must_agree_with_an_openvla_checkpoint(tmp_path):
    """OpenVLA-OFT resizes its images and takes no proprio: only its views, bins, chunk
    and action dimensions bind the settings."""
    path = policy_dir(tmp_path, {"model_type": "openvla", "num_images_in_input": 2,
                                 "n_action_bins": 256, "chunk_size": 8, "action_dim": 7})
    base = [f"model.checkpoint={path}", "model=openvla_oft"]
    assert run_problems(tmp_path, *base, "env.wrist_camera=true", "env.image_size=32") == []
    assert run_problems(tmp_path, *base) == [
        f"env.wrist_camera=False: must be true, as the policy in {path} takes 2 camera "
        "view(s)"]
    found = run_problems(tmp_path, *base, "env.wrist_camera=true", "model.chunk_size=4",
                         "model.action_dim=6")
    assert [line.split(":")[0] for line in found] == ["model.chunk_size=4",
                                                      "model.action_dim=6"]


def test_a_policy_of_an_unknown_type_binds_nothing_and_other_commands_check_theirs(tmp_path):
    path = policy_dir(tmp_path, {"model_type": "someone_elses", "num_bins": 3})
    assert run_problems(tmp_path, f"model.checkpoint={path}") == []
    tiny = json.loads(open("assets/warmstart/tabletop_tiny_vla/config.json").read())
    (path / "config.json").write_text(json.dumps(tiny))
    found = problems(load_config([f"model.checkpoint={path}", "model.num_bins=5"]), "actor")
    assert found == [f"model.num_bins=5: must be 7, the action bins of the policy in {path}"]
