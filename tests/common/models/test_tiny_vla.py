"""The tiny VLA behind the Policy interface: sampling vs log-probs, gradients, save/load."""
import numpy as np
import pytest
import torch

from common.config.schema import ModelConfig
from common.models import build_policy, load_policy
from common.models.tiny_vla.modeling import TinyVLAPolicy
from common.models.policy import ObsBatch, Policy
from common.models.action_tokenizer import ActionTokenizer

INSTRUCTIONS = ["put the red cube on the plate", "open the drawer", "stack the blue block"]


def _obs(B, seed=0, P=8):
    rng = np.random.default_rng(seed)
    return ObsBatch(images=rng.integers(0, 256, (B, 1, 64, 64, 3), dtype=np.uint8),
                    proprio=rng.standard_normal((B, P)).astype(np.float32),
                    instructions=[INSTRUCTIONS[i % 3] for i in range(B)])


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    p = build_policy(ModelConfig(preset="micro", num_bins=256))
    # non-trivial statistics, so that decoding and proprio normalisation are exercised
    p.set_data_stats(ActionTokenizer(np.linspace(-0.5, -0.1, 7), np.linspace(0.2, 0.9, 7)),
                     proprio_mean=np.full(8, 0.3), proprio_std=np.full(8, 2.0))
    return p.eval()


def test_fills_the_policy_protocol(policy):
    assert isinstance(policy, Policy)
    assert (policy.chunk_size, policy.action_dim, policy.num_bins) == (8, 7, 256)


def test_default_preset_is_between_1_and_10_million_parameters():
    # with OpenVLA's 256 bins; the shipped 7 bins take a few hundred thousand fewer
    n = sum(p.numel() for p in build_policy(ModelConfig(num_bins=256)).parameters())
    assert 1e6 <= n <= 10e6


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.6])
def test_log_probs_of_sampled_tokens_match_sample(policy, temperature):
    obs = _obs(5)
    tokens, lp = policy.sample(obs, temperature, torch.Generator().manual_seed(1))
    assert tokens.dtype == torch.int64 and tokens.shape == (5, 56)
    assert lp.dtype == torch.float32 and not lp.requires_grad
    again = policy.log_probs(obs, tokens, temperature)
    assert again.requires_grad
    torch.testing.assert_close(again.detach(), lp, rtol=0, atol=1e-5)


def test_log_probs_do_not_depend_on_the_rest_of_the_batch(policy):
    # actors sample in one batch, the learner recomputes in another
    obs = _obs(6, seed=3)
    tokens, lp = policy.sample(obs, 1.6, torch.Generator().manual_seed(2))
    sub = ObsBatch(obs.images[4:], obs.proprio[4:], obs.instructions[4:])
    torch.testing.assert_close(policy.log_probs(sub, tokens[4:], 1.6).detach(), lp[4:],
                               rtol=0, atol=1e-5)


def test_greedy_is_argmax_and_deterministic(policy):
    obs = _obs(4)
    a, lp_a = policy.sample(obs, 0.0)
    b, _ = policy.sample(obs, 0.0)
    assert torch.equal(a, b)
    with torch.no_grad():
        logits = policy.logits(obs)
    assert torch.equal(a, logits.argmax(-1))
    torch.testing.assert_close(lp_a, torch.log_softmax(logits, -1).max(-1).values)


def test_sampling_follows_the_tempered_distribution():
    torch.manual_seed(1)
    p = build_policy(ModelConfig(preset="micro")).eval()
    with torch.no_grad():
        p.head.weight.mul_(40.0)   # peaked, position-dependent distributions
    obs = _obs(1)
    many = ObsBatch(np.repeat(obs.images, 200, 0), np.repeat(obs.proprio, 200, 0),
                    obs.instructions * 200)
    tokens, lp = p.sample(many, 1.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = torch.log_softmax(p.logits(obs)[0] / 1.5, -1)          # [K, bins]
    # E[log p(x)] over x ~ p is minus the entropy; a sampler drawing from any other
    # distribution (uniform, greedy, untempered) lands far from it.
    expected = (logp.exp() * logp).sum(-1).mean()
    stderr = lp.std() / lp.numel() ** 0.5
    assert abs(lp.mean() - expected) < 4 * stderr + 1e-3
    torch.testing.assert_close(lp, logp.gather(-1, tokens.T).T)
    again, _ = p.sample(many, 1.5, torch.Generator().manual_seed(0))   # seeded: reproducible
    assert torch.equal(tokens, again)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    p = build_policy(ModelConfig(preset="micro")).train()
    obs = _obs(3)
    tokens, _ = p.sample(obs, 1.0)
    p.log_probs(obs, tokens, 1.0).mean().backward()
    missing = [n for n, w in p.named_parameters() if w.grad is None or not w.grad.abs().sum() > 0]
    assert missing == []


def test_tokens_to_actions_uses_the_stored_statistics(policy):
    tokens = np.zeros((2, 56), dtype=np.int64)
    tokens[:, 7:14] = 255
    actions = policy.tokens_to_actions(tokens)
    assert actions.shape == (2, 8, 7) and actions.dtype == np.float32
    tok = policy.action_tokenizer
    assert np.allclose(actions[:, 0], tok.decode(np.zeros(7, int)))   # near q01
    assert np.allclose(actions[:, 1], tok.decode(np.full(7, 255)))    # near q99
    assert np.all(actions[:, 1] > 0.19) and np.all(actions[:, 0] < -0.09)


def test_save_then_load_reproduces_outputs_exactly(policy, tmp_path):
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    assert isinstance(loaded, TinyVLAPolicy) and not loaded.training
    obs = _obs(4, seed=7)
    with torch.no_grad():
        assert torch.equal(loaded.logits(obs), policy.logits(obs))
    tokens = np.random.default_rng(0).integers(0, 256, (4, 56))
    assert np.array_equal(loaded.tokens_to_actions(tokens), policy.tokens_to_actions(tokens))
    assert loaded.config.proprio_mean == policy.config.proprio_mean


def test_build_from_checkpoint_and_kwargs(policy, tmp_path):
    policy.save_pretrained(tmp_path / "c")
    again = build_policy(ModelConfig(checkpoint=str(tmp_path / "c")))
    assert again.config.action_stats == policy.config.action_stats
    wide = build_policy(ModelConfig(preset="micro", chunk_size=4, kwargs={"d_model": 48}))
    assert wide.config.d_model == 48 and wide.sample(_obs(2), 1.0)[0].shape == (2, 28)


@pytest.mark.parametrize("change, match", [
    (lambda o: ObsBatch(o.images[:, :, :32], o.proprio, o.instructions), "images"),
    (lambda o: ObsBatch(o.images, o.proprio[:, :5], o.instructions), "proprio"),
    (lambda o: ObsBatch(o.images, o.proprio, ["x" * 300, "y"]), "max_text_len"),
])
def test_bad_observations_are_named(policy, change, match):
    with pytest.raises(ValueError, match=match):
        policy.sample(change(_obs(2)), 1.0)


def test_bad_config_is_named(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        build_policy(ModelConfig(preset="huge"))
    with pytest.raises(ValueError, match="n_heads"):
        build_policy(ModelConfig(preset="micro", kwargs={"d_model": 30, "n_heads": 4}))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_policy(tmp_path)
