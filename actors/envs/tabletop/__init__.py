"""The built-in MuJoCo tabletop suite: four LIBERO-like task families with scripted experts.

``TabletopEnv`` implements the TaskEnv protocol (actors/envs/base.py); ``Expert`` drives it
from privileged state; importing this package registers the gymnasium ids
``pushcut/Tabletop-<family>-<index>-v0``.
"""
import os

# Headless offscreen rendering by default; MuJoCo reads this once, when it is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
# Mesa's software rasteriser (llvmpipe, on machines without a GPU) splits each frame over a
# thread per core; a 64x64 frame is too small to gain from it, and rendering on the calling
# thread nearly halves the CPU per frame (measured: 1,300-1,800 vs 700-1,000 renders/CPU-s).
os.environ.setdefault("LP_NUM_THREADS", "0")

from actors.envs.tabletop.env import ACTION_DIM, PROPRIO_DIM, TabletopEnv
from actors.envs.tabletop.expert import Expert
from actors.envs.tabletop.gym_env import TabletopGymEnv, gym_id, register_all
from actors.envs.tabletop.tasks import FAMILIES, MAX_STEPS, TASKS, get_task, tasks_of

register_all()

__all__ = ["ACTION_DIM", "PROPRIO_DIM", "Expert", "FAMILIES", "MAX_STEPS", "TASKS",
           "TabletopEnv", "TabletopGymEnv", "get_task", "gym_id", "register_all", "tasks_of"]
