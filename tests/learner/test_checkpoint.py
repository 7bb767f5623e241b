"""learner/checkpoint.py: atomic write, keep-last-k, exact round trip of every part."""
from __future__ import annotations

import copy

import numpy as np
import torch

from common.models import load_policy
from learner.checkpoint import (
    latest_checkpoint, list_checkpoints, load_checkpoint, restore_rng, save_checkpoint,
)
from tests.learner.helpers import micro_policy


def trained_state():
    policy = micro_policy(0)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    for p in policy.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    sd = {"state": {name: opt.state[p] for name, p in policy.named_parameters()},
          "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                            "params": [n for n, _ in policy.named_parameters()]}
                           for g in opt.param_groups]}
    return policy, sd


def test_round_trip_of_weights_optimizer_marks_and_rng(tmp_path):
    policy, optim_sd = trained_state()
    template = copy.deepcopy(micro_policy(9))
    marks = {"g1": "trained", "g2": "stale"}
    torch.manual_seed(123)
    np.random.seed(5)
    path = save_checkpoint(tmp_path, 7, template, policy.state_dict(), optim_sd, marks,
                           extra={"filter": {"kept": 3}})
    expected_torch, expected_np = torch.rand(4), np.random.rand(3)
    ckpt = load_checkpoint(path)
    assert ckpt.policy_version == 7 and ckpt.consumption_marks == marks
    assert ckpt.extra == {"filter": {"kept": 3}}
    loaded = load_policy(ckpt.policy_dir)
    for (name, a), b in zip(policy.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    for name, entry in optim_sd["state"].items():
        for key, value in entry.items():
            assert torch.equal(ckpt.optimizer["state"][name][key], value), (name, key)
    assert ckpt.optimizer["param_groups"][0]["lr"] == 1e-3
    restore_rng(ckpt.rng["tensors"], ckpt.rng["states"])
    assert torch.equal(torch.rand(4), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_np)
    # the optimiser state loads back into a torch optimiser
    opt = torch.optim.AdamW(loaded.parameters(), lr=1.0)
    opt.load_state_dict({"state": {i: ckpt.optimizer["state"][n] for i, (n, _) in
                                   enumerate(loaded.named_parameters())},
                         "param_groups": [{**ckpt.optimizer["param_groups"][0],
                                           "params": list(range(len(list(loaded.parameters()))))}]})
    assert opt.param_groups[0]["lr"] == 1e-3


def test_keeps_last_k_and_ignores_partial_writes(tmp_path):
    policy = micro_policy(0)
    for version in (1, 2, 3, 4):
        save_checkpoint(tmp_path, version, policy, policy.state_dict(), None, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["version-00000003",
                                                           "version-00000004"]
    # a crash mid-write leaves a temporary directory and maybe a bare version directory
    crashed = tmp_path / ".tmp-version-00000005-999999999"
    crashed.mkdir()
    (crashed / "state.json").write_text("{")
    (tmp_path / "version-00000006").mkdir()
    assert latest_checkpoint(tmp_path).name == "version-00000004"
    assert load_checkpoint(latest_checkpoint(tmp_path)).optimizer is None
    save_checkpoint(tmp_path, 5, policy, policy.state_dict(), None, {}, keep=2)
    assert not crashed.exists()                  # stale temporaries of dead writers go
    assert latest_checkpoint(tmp_path).name == "version-00000005"
    assert latest_checkpoint(tmp_path / "missing") is None
