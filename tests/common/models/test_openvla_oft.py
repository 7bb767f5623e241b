"""OpenVLA-OFT policy (common/models/openvla_oft/modeling.py) at the tiny preset, on CPU.

Token/bin/action rules are checked against values computed by hand from OpenVLA's
definitions (bins = linspace(-1, 1, 256), centre b = -1 + (2b + 1) / 255, token = 31999 - b).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.config.schema import ModelConfig
from common.models.openvla_oft import action_bins, checkpoint
from common.models.openvla_oft.configuration import preset_config
from common.models.openvla_oft.prompt import (EMPTY_PIECE_ID, PromptEncoder, attention_bias,
                                          layout_index)
from common.models.openvla_oft.modeling import OpenVLAOFTPolicy
from common.models.policy import ObsBatch, Policy

INSTRUCTIONS = ["put the red cube on the plate", "open the top drawer", "stack it"]


def make_obs(batch: int, seed: int = 0, size: int = 64) -> ObsBatch:
    rng = np.random.default_rng(seed)
    return ObsBatch(images=rng.integers(0, 256, (batch, 1, size, size, 3), dtype=np.uint8),
                    proprio=np.zeros((batch, 8), np.float32),
                    instructions=[INSTRUCTIONS[i % 3] for i in range(batch)])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are microseconds long: on a shared 2-core machine a second
    intra-op thread only adds OpenMP hand-off waits (measured 20x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy(one_thread) -> OpenVLAOFTPolicy:
    torch.manual_seed(0)
    return OpenVLAOFTPolicy(preset_config("tiny")).eval()


def test_action_bins_match_openvla_rules_by_hand():
    actions = np.array([-1.0, 0.0, 0.5, 1.0, -2.0])
    bins = action_bins.normalized_to_bins(actions)
    assert bins.tolist() == [0, 127, 191, 255, 0]          # np.digitize(a, linspace) - 1
    tokens = action_bins.bins_to_token_ids(bins)
    assert tokens.tolist() == [31999, 31872, 31808, 31744, 31999]
    assert action_bins.token_ids_to_bins(tokens).tolist() == bins.tolist()
    centres = action_bins.bins_to_normalized(bins)
    expected = [-1 + 1 / 255, 0.0, -1 + 383 / 255, 1 - 1 / 255, -1 + 1 / 255]
    np.testing.assert_allclose(centres, expected, atol=1e-12)   # bin 255 shares centre 254
    q01, q99, mask = np.array([-0.5, 0.0]), np.array([1.5, 0.0]), np.array([True, False])
    out = action_bins.unnormalize(np.array([[128 / 255, -1 + 1 / 255]]), q01, q99, mask)
    np.testing.assert_allclose(out, [[0.5 * (1 + 128 / 255) * 2.0 - 0.5, -1 + 1 / 255]], atol=1e-6)
    with pytest.raises(ValueError, match="0..255"):
        action_bins.bins_to_normalized(np.array([256]))


def test_policy_decodes_tokens_with_checkpoint_statistics(policy):
    assert isinstance(policy, Policy)
    assert (policy.chunk_size, policy.action_dim, policy.num_bins) == (8, 7, 256)
    saved = policy.config.norm_stats, policy.config.unnorm_key
    try:
        q01, q99 = np.linspace(-1, 0, 7), np.linspace(0.5, 2, 7)
        policy.set_action_stats(q01, q99, mask=[True] * 6 + [False])
        tokens = np.zeros((2, 56), np.int64)
        tokens[0, :7] = [0, 127, 191, 255, 3, 250, 0]     # step 0 of sample 0
        tokens[1, -7:] = 255                              # last step of sample 1
        actions = policy.tokens_to_actions(tokens)
        assert actions.shape == (2, 8, 7) and actions.dtype == np.float32
        centre = lambda b: -1 + (2 * min(b, 254) + 1) / 255
        for d, b in enumerate([0, 127, 191, 255, 3, 250]):
            want = 0.5 * (centre(b) + 1) * (q99[d] - q01[d]) + q01[d]
            assert actions[0, 0, d] == pytest.approx(want, abs=1e-6)
        assert actions[0, 0, 6] == pytest.approx(-1 + 1 / 255)     # gripper: raw centre
        assert actions[1, 7, 6] == pytest.approx(1 - 1 / 255)
        back = policy.actions_to_tokens(actions)
        assert np.abs(back - np.minimum(tokens, 254)).max() <= 1
        # pushcut's SFT path: demo statistics from common.models.action_tokenizer, tokens by OpenVLA's rules
        from common.models.action_tokenizer import ActionTokenizer
        policy.set_data_stats(ActionTokenizer(q01, q99, normalize_mask=[True] * 6 + [False]))
        np.testing.assert_array_equal(policy.action_tokenizer.encode_chunk(actions), back)
        with pytest.raises(ValueError, match="K=56"):
            policy.tokens_to_actions(np.zeros((2, 55), np.int64))
    finally:
        policy.config.norm_stats, policy.config.unnorm_key = saved


def test_prompt_bytes_layout_and_attention_mask_by_hand():
    ids = PromptEncoder(None).encode_one("Stack It")
    text = "In: What action should the robot take to stack it?\nOut:"
    assert ids == [1] + [3 + b for b in text.encode()] + [EMPTY_PIECE_ID]
    # two samples: text lengths 3 and 2 (one pad), 2 image tokens, suffix of 2
    index, valid = layout_index(torch.tensor([[1, 1, 1], [0, 1, 1]]), 2, 2)
    assert index.tolist() == [[0, 3, 4, 1, 2, 5, 6], [0, 1, 3, 4, 2, 5, 6]]
    assert valid.tolist() == [[True] * 7, [False] + [True] * 6]
    valid = torch.tensor([[False, True, True, True, True]])
    prefix = attention_bias(valid, 2, "prefix", torch.float32)[0, 0] == 0
    assert prefix.int().tolist() == [[1, 0, 0, 0, 0],      # padding row: only itself
                                     [0, 1, 0, 0, 0],
                                     [0, 1, 1, 0, 0],
                                     [0, 1, 1, 1, 1],      # action block sees itself fully
                                     [0, 1, 1, 1, 1]]
    both = attention_bias(valid, 2, "bidirectional", torch.float32)[0, 0] == 0
    assert both[1:].int().tolist() == [[0, 1, 1, 1, 1]] * 4


def test_forward_reads_the_256_action_ids_in_bin_order(policy):
    captured = {}
    hook = policy.language_model.model.norm.register_forward_hook(
        lambda mod, args, out: captured.setdefault("hidden", out))
    try:
        with torch.no_grad():
            logits = policy(**policy.prepare_inputs(make_obs(2)))
            hidden = captured["hidden"]                      # [B, S, H], S = ... + 56 + STOP
            before_each_action = hidden[:, -58:-2]           # the position before each slot
            full = policy.language_model.lm_head(before_each_action)   # [B, 56, 32064]
    finally:
        hook.remove()
    assert logits.shape == (2, 56, 256) and full.shape == (2, 56, 32064)
    for b in (0, 37, 255):
        torch.testing.assert_close(logits[..., b], full[..., 31999 - b])


def test_sample_and_log_probs(policy):
    obs = make_obs(4)
    tokens, logp = policy.sample(obs, 1.6, torch.Generator().manual_seed(7))
    assert tokens.shape == logp.shape == (4, 56) and tokens.dtype == torch.int64
    assert 0 <= tokens.min() and tokens.max() <= 255 and (logp < 0).all()
    again, _ = policy.sample(obs, 1.6, torch.Generator().manual_seed(7))
    assert torch.equal(tokens, again)
    with torch.no_grad():
        logits = policy.logits(obs)
    want = F.log_softmax(logits / 1.6, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, want)
    greedy, greedy_lp = policy.sample(obs, 0.0)
    assert torch.equal(greedy, logits.argmax(-1))
    torch.testing.assert_close(greedy_lp, F.log_softmax(logits, -1).max(-1).values)
    lp = policy.log_probs(obs, tokens, 1.6)
    assert lp.requires_grad
    torch.testing.assert_close(lp.detach(), logp, atol=1e-5, rtol=1e-5)
    lp.sum().backward()
    for module in (policy.vision_backbone.featurizer, policy.vision_backbone.fused_featurizer,
                   policy.projector, policy.language_model.model.layers[0]):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    policy.zero_grad(set_to_none=True)


def test_padding_and_batching_do_not_change_outputs(policy):
    obs = make_obs(3)          # three prompts of different lengths
    with torch.no_grad():
        batched = policy(**policy.prepare_inputs(obs))
        for i in range(3):
            single = ObsBatch(obs.images[i:i + 1], obs.proprio[i:i + 1], obs.instructions[i:i + 1])
            torch.testing.assert_close(batched[i:i + 1], policy(**policy.prepare_inputs(single)),
                                       atol=1e-5, rtol=1e-5)


def test_one_learner_step_raises_the_sampled_log_probs():
    torch.manual_seed(1)
    model = OpenVLAOFTPolicy.from_model_config(ModelConfig(name="openvla_oft", preset="tiny",
                                                           num_bins=256,
                                                           gradient_checkpointing=True))
    model.train()
    obs = make_obs(4, seed=3)
    tokens, before = model.sample(obs, 1.0, torch.Generator().manual_seed(0))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = -model.log_probs(obs, tokens, 1.0).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimiser.step()
    with torch.no_grad():
        after = model.log_probs(obs, tokens, 1.0)
    assert after.mean() > before.mean() + 1e-3


def test_from_model_config_presets_and_dtype():
    model = OpenVLAOFTPolicy.from_model_config(
        ModelConfig(name="openvla_oft", preset="tiny", num_bins=256, dtype="bfloat16",
                    chunk_size=4, action_dim=3, kwargs={"attention_mode": "bidirectional"}),
        action_stats={"q01": [0.0, 0.0, -1.0], "q99": [2.0, 4.0, 1.0], "num_bins": 256,
                      "normalize_mask": [True, True, False]})
    assert model.dtype == torch.bfloat16 and model.config.num_action_tokens == 12
    assert model.tokens_to_actions(np.full((1, 12), 127))[0, 0].tolist() == pytest.approx(
        [1.0, 2.0, 0.0], abs=1e-6)                       # centre of bin 127 is 0.0
    tokens, logp = model.sample(make_obs(2), 1.6)
    assert tokens.shape == (2, 12) and logp.dtype == torch.float32
    assert model.tokens_to_actions(tokens.numpy()).shape == (2, 4, 3)
    big = preset_config("7b")
    assert (big.text_config.hidden_size, big.text_config.num_hidden_layers,
            big.text_config.intermediate_size, big.num_patches) == (4096, 32, 11008, 256)
    assert [t["hidden_size"] for t in big.vision_towers] == [1024, 1152]
    with pytest.raises(ValueError, match="preset"):
        OpenVLAOFTPolicy.from_model_config(ModelConfig(name="openvla_oft", preset="13b",
                                                       num_bins=256))


def _timm_patches(sd: dict, prefix: str, spec: dict, pixels: torch.Tensor) -> torch.Tensor:
    """Reference timm ViT (second-to-last block's patch tokens) run on published weights."""
    get = lambda name: sd[prefix + name]
    x = F.conv2d(pixels, get("patch_embed.proj.weight"), get("patch_embed.proj.bias"),
                 stride=spec["patch_size"]).flatten(2).transpose(1, 2) + get("pos_embed")
    extra = 0
    if spec["kind"] == "dinov2":
        B = x.shape[0]
        x = torch.cat([get("cls_token").expand(B, -1, -1), get("reg_token").expand(B, -1, -1),
                       x], dim=1)
        extra = 1 + spec["num_register_tokens"]
    B, N, D, H = *x.shape, spec["num_heads"]
    for i in range(spec["depth"] - 1):
        blk = lambda name: get(f"blocks.{i}.{name}")
        h = F.layer_norm(x, (D,), blk("norm1.weight"), blk("norm1.bias"), eps=1e-6)
        q, k, v = F.linear(h, blk("attn.qkv.weight"), blk("attn.qkv.bias")).reshape(
            B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        a = F.linear(a, blk("attn.proj.weight"), blk("attn.proj.bias"))
        x = x + (a * blk("ls1.scale_factor") if spec["kind"] == "dinov2" else a)
        h = F.layer_norm(x, (D,), blk("norm2.weight"), blk("norm2.bias"), eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, blk("mlp.fc1.weight"), blk("mlp.fc1.bias"))),
                     blk("mlp.fc2.weight"), blk("mlp.fc2.bias"))
        x = x + (h * blk("ls2.scale_factor") if spec["kind"] == "dinov2" else h)
    return x[:, extra:]


def test_published_names_run_like_timm_vits():
    torch.manual_seed(2)
    policy = OpenVLAOFTPolicy(preset_config("tiny"))
    with torch.no_grad():   # O(1) weights: at init, LayerScale 1e-5 would hide any block error
        for param in policy.vision_backbone.parameters():
            param.normal_(0.0, 0.3)
    published = checkpoint.to_published(policy.state_dict(), policy.config.vision_towers)
    pixels = policy.prepare_inputs(make_obs(2))["pixel_values"].flatten(0, 1)
    with torch.no_grad():
        ours = policy.vision_backbone(pixels)
        first, second = pixels.split([3, 3], dim=1)
        want = torch.cat([_timm_patches(published, checkpoint.TOWER_PREFIXES[0],
                                        policy.config.vision_towers[0], first),
                          _timm_patches(published, checkpoint.TOWER_PREFIXES[1],
                                        policy.config.vision_towers[1], second)], dim=2)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-4)


def test_published_checkpoint_directory_loads_and_reproduces_outputs(policy, tmp_path):
    stats = {"libero_spatial": {"action": {"q01": [-0.5] * 7, "q99": [0.5] * 7,
                                           "mask": [True] * 6 + [False]}}}
    policy.config.norm_stats = stats
    try:
        policy.save_pretrained(str(tmp_path), max_shard_size="2MB")
    finally:
        policy.config.norm_stats = None
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all((tmp_path / s).exists() for s in shards)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "openvla"
    assert json.loads((tmp_path / "dataset_statistics.json").read_text()) == stats
    for name in ("vision_backbone.featurizer.blocks.0.attn.qkv.weight",
                 "vision_backbone.featurizer.blocks.1.ls2.scale_factor",
                 "vision_backbone.fused_featurizer.pos_embed", "projector.fc3.weight",
                 "language_model.model.layers.1.self_attn.q_proj.weight"):
        assert name in index["weight_map"]
    # parts of the timm towers OpenVLA never runs, present in published checkpoints
    from safetensors.torch import save_file
    save_file({"vision_backbone.featurizer.blocks.2.norm1.weight": torch.ones(32),
               "vision_backbone.fused_featurizer.attn_pool.latent": torch.ones(1, 1, 48),
               "vision_backbone.featurizer.norm.weight": torch.ones(32)},
              str(tmp_path / "extra.safetensors"))
    unused = ("vision_backbone.featurizer.blocks.2.norm1.weight",
              "vision_backbone.fused_featurizer.attn_pool.latent",
              "vision_backbone.featurizer.norm.weight")
    index["weight_map"].update({k: "extra.safetensors" for k in unused})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))

    loaded = OpenVLAOFTPolicy.from_pretrained(str(tmp_path)).eval()
    assert loaded.config.attention_mode == policy.config.attention_mode
    obs = make_obs(3, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**loaded.prepare_inputs(obs)),
                                   policy(**policy.prepare_inputs(obs)), atol=0, rtol=0)
    tokens = np.full((1, 56), 255)
    assert loaded.tokens_to_actions(tokens)[0, 0].tolist() == pytest.approx(
        [0.5 * (2 - 1 / 255) - 0.5] * 6 + [1 - 1 / 255], abs=1e-6)


def test_from_pretrained_rejects_foreign_checkpoints(policy, tmp_path):
    from safetensors.torch import save_file
    policy.save_pretrained(str(tmp_path))                # one file: model.safetensors
    assert (tmp_path / "model.safetensors").exists()
    assert OpenVLAOFTPolicy.from_pretrained(str(tmp_path)).config.text_config.hidden_size == 64
    state = checkpoint.to_published(policy.state_dict(), policy.config.vision_towers)
    state["vision_backbone.featurizer.blocks.0.bogus.weight"] = torch.ones(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="bogus"):
        OpenVLAOFTPolicy.from_pretrained(str(tmp_path))
    del state["vision_backbone.featurizer.blocks.0.bogus.weight"], state["projector.fc3.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="projector.fc3.bias"):
        OpenVLAOFTPolicy.from_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    with pytest.raises(ValueError, match="model_type"):
        OpenVLAOFTPolicy.from_pretrained(str(tmp_path))


def test_runs_under_fsdp2(tmp_path):
    """FSDP2 swaps parameters for sharded DTensors outside forward hooks, so sample and
    log_probs only work if every parameter is used inside the model's forward. One gloo
    rank in this process keeps the test fast; the sharding path is the same."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        torch.manual_seed(0)
        model = OpenVLAOFTPolicy(preset_config("tiny"))
        obs = make_obs(2)
        tokens, unsharded = model.sample(obs, 1.0, torch.Generator().manual_seed(0))
        for unit in model.fsdp_units():
            fully_shard(unit)
        fully_shard(model)
        assert type(model.language_model.lm_head.weight).__name__ == "DTensor"
        logp = model.log_probs(obs, tokens, 1.0)
        torch.testing.assert_close(logp.detach(), unsharded, atol=1e-5, rtol=1e-5)
        logp.mean().backward()
        assert all(p.grad is not None for p in model.parameters())
        again, _ = model.sample(obs, 1.0, torch.Generator().manual_seed(0))
        assert torch.equal(again, tokens)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_pushcut_run_trains_openvla_oft_tiny_end_to_end(tmp_path):
    """Demos, SFT, then store + learner + 2 actors as OS processes, to policy_version 2."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from common.models import load_policy
    from tests.waiting import server_addresses

    run_dir = tmp_path / "run"
    args = {"run_dir": run_dir, "model": "openvla_oft", "env.tasks": "[spatial/0]",
            "env.max_steps": 24, "num_actors": 2, "actor.num_envs": 4, "algo.group_size": 4,
            "algo.groups_per_batch": 2, "algo.micro_batch_size": 8, "algo.success_lo": 0.0,
            "algo.success_hi": 1.0, "algo.max_staleness": 1, "learner.max_versions": 2,
            "learner.checkpoint_every": 2, "wandb": "false", "demos.per_task": 1,
            "sft.steps": 2, "sft.batch_size": 8, "sft.eval_episodes_per_task": 0,
            "run.eval_episodes": 0,
            **server_addresses()}
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "run",
                           *[f"{k}={v}" for k, v in args.items()]], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    stopped = json.loads(re.search(r"^run stopped: (\{.*\})$", out, re.M).group(1))
    assert stopped["policy_version"] == 2 and set(stopped["exits"].values()) == {0}
    rows = [json.loads(line) for line in (run_dir / "learner.jsonl").read_text().splitlines()]
    assert [r["policy_version"] for r in rows if r.get("event") == "update"] == [1, 2]
    actors = [json.loads(m) for p in sorted((run_dir / "logs").glob("actor-*.log"))
              for m in re.findall(r"^actor stopped: (\{.*\})$", p.read_text(), re.M)]
    assert len(actors) == 2 and any(int(v) > 0 for a in actors for v in a["by_version"])
    trained = load_policy(run_dir / "checkpoints" / "version-00000002" / "policy")
    assert isinstance(trained, OpenVLAOFTPolicy) and trained.config.unnorm_key == "pushcut"
    tokens, _ = trained.sample(make_obs(2), 1.6)
    assert trained.tokens_to_actions(tokens.numpy()).shape == (2, 8, 7)
