"""Parts of the OpenVLA-OFT policy (common/models/openvla_oft/modeling.py): config and presets,
vision towers + projector, prompt and sequence layout, action-token rules, checkpoint names."""
from common.models.openvla_oft.configuration import PRESETS, OpenVLAOFTConfig, preset_config

__all__ = ["OpenVLAOFTConfig", "PRESETS", "preset_config"]
