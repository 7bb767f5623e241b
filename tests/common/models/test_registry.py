"""The model registry (common/models/__init__.py): each model states its presets once, in its
configuration module, and every preset builds a config of the model's class."""
from __future__ import annotations

import pytest

from common.models import REGISTRY, model_preset_config, model_presets, policy_class


def test_presets_are_the_models_own():
    from common.models.openvla_oft.configuration import PRESETS as OFT
    from common.models.tiny_vla.configuration import PRESETS as TINY
    assert model_presets("tiny_vla") == list(TINY) and {"default", "micro"} <= set(TINY)
    assert model_presets("openvla_oft") == list(OFT) == ["7b", "tiny"]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_preset_builds_a_config(name):
    cls = policy_class(name)
    for preset in model_presets(name):
        assert isinstance(model_preset_config(name, preset), cls.config_class)


def test_unknown_models_and_presets_are_named():
    with pytest.raises(ValueError, match="registered"):
        model_presets("diffusion_policy")
    with pytest.raises(ValueError, match="'huge'.*default, micro"):
        model_preset_config("tiny_vla", "huge")


def test_a_built_config_does_not_share_the_presets_lists():
    from common.models.openvla_oft.configuration import PRESETS, preset_config
    config = preset_config("tiny", chunk_size=4)
    config.vision_towers[0]["depth"] = 99
    assert PRESETS["tiny"]["vision_towers"][0]["depth"] == 3 and config.chunk_size == 4
    assert preset_config("tiny").text_config.hidden_size == 64
    assert preset_config("7b").text_config.hidden_size == 4096


def test_only_openvla_oft_builds_on_the_device():
    assert policy_class("openvla_oft").BUILDS_ON_DEVICE
    assert not getattr(policy_class("tiny_vla"), "BUILDS_ON_DEVICE", False)
