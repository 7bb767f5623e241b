"""``pushcut sft`` on a small synthetic demonstration dataset: the loss goes down, the
checkpoints load, the statistics travel with the model."""
import json

import numpy as np
import pytest
import torch

from common.config import load_config
from common.dataset import write_trajectory
from common.models import load_policy
from common.synthetic import make_trajectory
from deploy import sft
from learner.sft.data import (
    examples_from_trajectories, fit_action_tokenizer, rechunk, shift_images, sft_loss,
)

TASKS = {"spatial/0": "put the left cube on the plate", "object/1": "put the green cube in the tray"}


def _demo(rng, task_id, i, success=True, length=20):
    """A learnable demo: the action pattern depends on the task, the image brightness on it
    too, plus noise."""
    traj = make_trajectory(rng, policy_version=-1, success=success, task_id=task_id,
                           length=length, init_state_id=i, trajectory_id=f"{task_id.replace('/', '-')}-{i}")
    sign = 1.0 if task_id == "spatial/0" else -1.0
    pattern = sign * np.linspace(-0.8, 0.8, 7, dtype=np.float32)
    traj.actions = (pattern + rng.normal(0, 0.003, traj.actions.shape)).astype(np.float32)
    traj.actions[..., 6] = sign
    traj.instruction = TASKS[task_id]
    return traj


@pytest.fixture
def demos(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "demos"
    for i in range(3):
        for task in TASKS:
            write_trajectory(root, _demo(rng, task, i))
    write_trajectory(root, _demo(rng, "spatial/0", 9, success=False))   # must be skipped
    return root


def test_sft_lowers_the_loss_and_checkpoints(demos, tmp_path):
    out = tmp_path / "sft"
    cfg = load_config([f"sft.demos={demos}", f"sft.out={out}", "sft.steps=60",
                       "sft.batch_size=16", "sft.checkpoint_every=30", "sft.warmup_steps=5",
                       "sft.lr=3e-3", "sft.eval_episodes_per_task=0", "model.preset=micro",
                       "sft.demos_per_task=2", "sft.threads=1",
                       # one-hot targets: the gaussian ones put a floor (their entropy,
                       # ~2.5 nats at 3 bins) under the loss
                       "sft.label_sigma=0"])
    assert sft.main(cfg, []) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 25 and metrics[-1]["step"] == 60
    assert metrics[-1]["loss"] < 0.6 * metrics[0]["loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] == 2 * 2 * 3    # 2 tasks x 2 demos x ceil(20 / 8)
    assert (out / "step_000030" / "model.safetensors").exists()

    policy = load_policy(out / "final")
    assert policy.config.proprio_dim == 8
    stats = policy.action_tokenizer
    assert stats.normalize_mask.tolist() == [True] * 6 + [False]
    assert np.all(stats.q01[:6] < 0) and np.all(stats.q99[:6] > 0)
    # the task-dependent gripper sign has been learned from the instruction
    rng = np.random.default_rng(1)
    for task, sign in (("spatial/0", 1.0), ("object/1", -1.0)):
        traj = _demo(rng, task, 5)
        from common.models.policy import ObsBatch
        obs = ObsBatch(traj.images[:1], traj.proprio[:1], [traj.instruction])
        tokens, _ = policy.sample(obs, 0.0)
        actions = policy.tokens_to_actions(tokens.numpy())
        assert np.all(np.sign(actions[0, :, 6]) == sign)


def test_examples_skip_failures_and_check_shapes(tmp_path):
    rng = np.random.default_rng(0)
    good = _demo(rng, "spatial/0", 0, length=13)
    ex = examples_from_trajectories([good, _demo(rng, "spatial/0", 1, success=False)])
    assert len(ex) == 2 and ex.skipped == 1 and ex.valid.sum() == 13 * 7
    other = make_trajectory(rng, policy_version=-1, success=True, chunk_size=4)
    with pytest.raises(ValueError, match="actions per decision"):
        examples_from_trajectories([good, other])
    with pytest.raises(ValueError, match="no successful"):
        examples_from_trajectories([_demo(rng, "spatial/0", 1, success=False)])


def test_dense_demo_rechunks_into_the_chunk_after_every_step():
    """A demo observed every step (obs_stride 1) gives one example per step, each with the
    C actions that follow it; its every C-th example is the strided demo's decision."""
    rng = np.random.default_rng(0)
    strided = _demo(rng, "spatial/0", 0, length=13)                   # [2, 8, 7]
    strided.actions.reshape(-1, 7)[13:] = 0.0                          # rechunk pads with 0
    steps = strided.actions.reshape(-1, 7)[:13]
    dense = make_trajectory(rng, policy_version=-1, success=True, task_id="spatial/0",
                            length=13, chunk_size=1)
    dense.actions = steps[:, None, :].copy()                           # [13, 1, 7]
    actions, valid = rechunk(dense, 8)
    assert actions.shape == (13, 8, 7) and valid.shape == (13, 56)
    assert np.array_equal(actions[[0, 8]], strided.actions)
    assert np.array_equal(valid[[0, 8]], strided.valid_mask)
    assert np.array_equal(actions[5, :8], steps[5:13])                 # 8 actions from step 5
    assert valid[6].sum() == 7 * 7 and not actions[6, 7].any()         # step 13 is past the end
    assert valid.sum() == 7 * sum(min(8, 13 - t) for t in range(13))
    ex = examples_from_trajectories([dense, strided], chunk_size=8)
    assert len(ex) == 15 and ex.chunk_size == 8
    with pytest.raises(ValueError, match="chunk_size"):
        examples_from_trajectories([dense], chunk_size=0)


def test_tokenizer_fit_ignores_padding_steps():
    rng = np.random.default_rng(0)
    traj = _demo(rng, "spatial/0", 0, length=9)     # 2 decisions, 7 padding steps
    traj.actions[1, 1:] = 100.0                      # never executed
    tok = fit_action_tokenizer(examples_from_trajectories([traj]))
    assert tok.q99.max() == 1.0 and tok.q99[:6].max() < 0.9   # 1.0: the gripper


def test_shift_images_translates_content():
    rng = np.random.default_rng(0)
    img = np.zeros((8, 1, 16, 16, 3), np.uint8)
    img[:, :, 8, 8] = 255
    out = shift_images(img, 2, rng)
    assert out.shape == img.shape
    pos = [np.argwhere(o[0, :, :, 0] == 255)[0] for o in out]
    assert all(np.abs(p - 8).max() <= 2 for p in pos) and len({tuple(p) for p in pos}) > 1
    assert shift_images(img, 0, rng) is img


def test_sft_loss_counts_only_valid_tokens():
    logits = torch.zeros(1, 2, 4)
    logits[0, 0, 1] = 10.0      # confident and right on token 0
    targets = torch.tensor([[1, 3]])
    loss, acc = sft_loss(logits, targets, torch.tensor([[True, False]]))
    assert loss.item() < 1e-3 and acc.item() == 1.0
    loss, acc = sft_loss(logits, targets, torch.tensor([[True, True]]))
    assert abs(loss.item() - np.log(4) / 2) < 1e-3 and acc.item() == 0.5   # token 1: uniform
