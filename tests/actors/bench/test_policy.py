"""`pushcut bench policy` (actors/bench/policy.py): the policy is built as its model asks,
and the observations are shaped as the configured simulator's."""
import torch

from actors.bench.policy import build_policy, make_obs
from common.config import load_config
from common.models.openvla_oft.modeling import OpenVLAOFTPolicy
from common.models.tiny_vla.modeling import TinyVLAPolicy


def test_a_model_that_builds_on_the_device_is_built_there():
    cpu = torch.device("cpu")
    oft = build_policy(load_config(["model.name=openvla_oft", "model.preset=tiny",
                                   "model.num_bins=256"]), cpu)
    assert isinstance(oft, OpenVLAOFTPolicy) and oft.device == cpu
    tiny = build_policy(load_config(["model.preset=micro"]), cpu)
    assert isinstance(tiny, TinyVLAPolicy)
    obs = make_obs(2, 1, 64)
    tokens, _ = tiny.eval().sample(obs, 1.0)
    assert tokens.shape[0] == 2
