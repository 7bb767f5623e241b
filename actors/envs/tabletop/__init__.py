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

from actors.envs.tabletop.env import ACTION_DIM, PROPRIO_DIM, TabletopEnv
from actors.envs.tabletop.expert import Expert
from actors.envs.tabletop.tasks import FAMILIES, MAX_STEPS, TASKS, get_task, tasks_of

__all__ = ["ACTION_DIM", "PROPRIO_DIM", "Expert", "FAMILIES", "MAX_STEPS", "TASKS",
           "TabletopEnv", "get_task", "tasks_of"]
