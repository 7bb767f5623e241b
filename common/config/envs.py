"""The env section: :class:`EnvConfig` holds what every simulator reads, a subclass per
simulator adds its own settings. Each is an option of the ``env`` group (``env=tabletop``,
``env=libero``, ``env=probe``: common/config/loading.py); ``PushcutConfig.env`` defaults to
:class:`TabletopEnvConfig`.

Which class a simulator reads is its registry entry's (actors/envs/registry.py); the probe
tasks read only the common fields, so any env config serves them (``env.name=probe`` on the
tabletop config works as ``env=probe`` does).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from common.config.rules import at_least, in_range, one_of, redefault, setting

__all__ = ["EnvConfig", "TabletopEnvConfig", "LiberoEnvConfig", "ManiSkillEnvConfig",
           "ENV_OPTIONS", "env_config"]


@dataclass
class EnvConfig:
    """Which simulator and which tasks: the fields every simulator reads (all the probe
    tasks need)."""
    name: str = "probe"
    """tabletop (built-in MuJoCo suite) | libero | probe (tasks with a known answer); select
    a simulator with the env group (``env=libero``), which brings its own settings"""
    suite: str = "all"
    """a named set of the simulator's tasks (tabletop: spatial|object|goal|long|all; libero:
    libero_spatial, ...)"""
    tasks: list[str] = field(default_factory=list)
    """explicit task_ids; empty = every task of the suite"""
    image_size: int = setting(64, at_least(1))
    """agentview (and wrist) side in pixels"""
    wrist_camera: bool = False
    """a second camera on the wrist (V = 2 views)"""
    max_steps: Optional[int] = setting(None, at_least(1, nullable=True))
    """None = the family's / suite's own step limit"""
    num_train_init_states: int = setting(40, at_least(1))
    """training init_state_ids are [0, num_train)"""
    num_heldout_init_states: int = setting(10, at_least(0))
    """held-out ids follow, disjoint from training (a LIBERO task has 50 init states in all)"""
    fingerprints: bool = False
    """record each episode's behaviour fingerprint where the simulator can (the tabletop
    suite: actors/envs/tabletop/fingerprint.py). ``pushcut eval`` turns it on; rollouts for
    training leave it off, since the bookkeeping costs about a third of a physics step"""


@dataclass
class TabletopEnvConfig(EnvConfig):
    """The built-in MuJoCo tabletop suite (actors/envs/tabletop; docs/envs.md)."""
    name: str = "tabletop"
    layout: str = "nominal"
    """initial states: nominal (LIBERO-shaped: each task one scene, jittered by a few cm) |
    uniform (objects anywhere on the table: a generalisation suite)"""
    image_size: int = setting(64, at_least(8))
    """agentview (and wrist) side in pixels; at least 8 for the renderer"""
    num_heldout_init_states: int = redefault(EnvConfig, "num_heldout_init_states", 50)
    """held-out init_state_ids [40, 90) by default: enough distinct states for +-3 points"""


@dataclass
class LiberoEnvConfig(EnvConfig):
    """The LIBERO benchmark, with OpenVLA(-OFT)'s image pipeline (actors/envs/libero.py)."""
    name: str = "libero"
    suite: str = "libero_spatial"
    image_size: int = setting(224, at_least(8))
    """OpenVLA(-OFT)'s input size; at least 8 pixels for the renderer"""
    render_size: Optional[int] = setting(256, at_least(8, nullable=True))
    """pixels rendered before the resize to image_size: OpenVLA-OFT renders 256 and resizes
    to 224; None = render at image_size (faster)"""
    settle_steps: int = setting(10, at_least(0))
    """no-op steps (gripper open) after each reset while objects settle, as OpenVLA"""
    center_crop: bool = False
    """OpenVLA-style centre crop"""
    center_crop_scale: float = setting(0.9, in_range(0, 1, open_low=True))
    """area fraction kept by the centre crop (OpenVLA: 0.9)"""
    force_workers: bool = False
    """start one env worker even when none fits in free memory (2-3 GB each)"""


@dataclass
class ManiSkillEnvConfig(EnvConfig):
    """ManiSkill3's asset-free Panda tabletop tasks on SAPIEN 3 (actors/envs/maniskill.py),
    run in the interpreter that ``pushcut setup maniskill`` makes."""
    name: str = "maniskill"
    suite: str = "cubes"
    """cubes (PickCube, PushCube, StackCube, PullCube, PokeCube) | planned (the tasks with a
    motion planner for ``pushcut demos``) | all"""
    image_size: int = setting(128, at_least(16))
    """camera side in pixels; the camera renders at this size (no resize)"""
    num_train_init_states: int = redefault(EnvConfig, "num_train_init_states", 1000)
    """training episode seeds are [0, num_train); every seed is a fresh random layout"""
    num_heldout_init_states: int = redefault(EnvConfig, "num_heldout_init_states", 50)
    """held-out episode seeds follow the training ones, disjoint from them"""
    sim_backend: str = setting("physx_cpu", one_of("physx_cpu", "physx_cuda"))
    """SAPIEN physics: physx_cpu, or physx_cuda on a GPU"""
    render_backend: str = setting("cpu", one_of("cpu", "gpu"))
    """SAPIEN renderer: cpu (Vulkan on Mesa's lavapipe) or gpu (the GPU's Vulkan driver)"""


# the env group's options (``env=NAME``), one line per simulator; the probe tasks read only
# the fields every simulator has
ENV_OPTIONS: dict[str, type[EnvConfig]] = {
    "tabletop": TabletopEnvConfig, "libero": LiberoEnvConfig, "maniskill": ManiSkillEnvConfig,
    "probe": EnvConfig}


def env_config(fields: dict[str, Any]) -> EnvConfig:
    """The env config whose fields these are (``dataclasses.asdict`` of one, read back: an
    env worker process gets its config as JSON)."""
    classes, i = [EnvConfig], 0
    while i < len(classes):
        classes += classes[i].__subclasses__()
        i += 1
    for cls in classes:
        if {f.name for f in dataclasses.fields(cls)} == set(fields):
            return cls(**fields)
    raise ValueError(f"no env config has the fields {sorted(fields)}")
