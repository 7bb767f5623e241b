"""One compiled family scene: MuJoCo model + data + (lazily) an offscreen renderer, with
named accessors for object poses, the gripper state and contacts.

The env (``env.py``) owns one ``Sim`` per family it has been reset into; the success
predicates (``predicates.py``) and the expert (``expert.py``) read the privileged state
through the accessors here.
"""
from __future__ import annotations

import atexit
import math
import os
import sys
import weakref

import mujoco
import numpy as np

from actors.envs.tabletop.scene import FINGER_OPEN, SUBSTEPS, SceneSpec, build_model
from actors.envs.tabletop.tasks import Layout

GRIPPER_JOINTS = ("x", "y", "z", "yaw", "finger_l", "finger_r")
_LIVE: "weakref.WeakSet[Sim]" = weakref.WeakSet()


def _headless_gl() -> None:
    """MuJoCo picks its GL backend when first imported (MUJOCO_GL, default GLFW, which needs
    a display). If something imported it before this package set MUJOCO_GL=egl, switch to
    the requested headless backend here rather than fail."""
    from mujoco import gl_context
    want = os.environ.get("MUJOCO_GL", "")
    if sys.platform.startswith("linux") and want in ("egl", "osmesa") \
            and "glfw" in str(gl_context.GLContext):
        import importlib
        gl_context.GLContext = importlib.import_module(f"mujoco.{want}").GLContext


def _close_all() -> None:
    # Renderers freed by the garbage collector at interpreter exit find EGL already torn
    # down and print errors; close them while it still stands.
    for sim in list(_LIVE):
        sim.close()


class Sim:
    def __init__(self, spec: SceneSpec, image_size: int, wrist_camera: bool):
        self.spec = spec
        self.model = build_model(spec, image_size)
        self.data = mujoco.MjData(self.model)
        self.image_size = image_size
        self.cameras = ["agentview"] + (["wrist"] if wrist_camera else [])
        self._renderer: mujoco.Renderer | None = None
        _LIVE.add(self)
        m = self.model
        self.body = {o.name: m.body(o.name).id for o in spec.objects}
        self.body.update({r: m.body(r).id for r in spec.receptacles})
        self.mocap = {r: int(m.body_mocapid[m.body(r).id]) for r in spec.receptacles}
        self.obj_qpos = {o.name: int(m.jnt_qposadr[m.joint(o.name).id]) for o in spec.objects}
        self.half_height = {o.name: o.half_height for o in spec.objects}
        self.grip_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in GRIPPER_JOINTS])
        self.finger_geoms = {m.geom("finger_l").id, m.geom("finger_r").id}
        self.obj_geom = {o.name: m.geom(o.name).id for o in spec.objects}

    # ------------------------------------------------------------------ state
    def set_layout(self, layout: Layout) -> None:
        """Reset everything (warm starts included, so equal layouts give equal states)."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        for name, (x, y, yaw) in layout.objects.items():
            a = self.obj_qpos[name]
            d.qpos[a:a + 3] = (x, y, self.half_height[name])
            d.qpos[a + 3:a + 7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        for name, (x, y) in layout.receptacles.items():
            d.mocap_pos[self.mocap[name]][:2] = (x, y)
        grip = np.array([*layout.gripper, 0.0, FINGER_OPEN, FINGER_OPEN])
        d.qpos[self.grip_qpos] = grip
        d.ctrl[:] = grip
        mujoco.mj_forward(m, d)

    def step(self, ctrl: np.ndarray) -> None:
        """ctrl float [6]: x, y, z, yaw, finger_l, finger_r targets; one control period."""
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)

    def pos(self, name: str) -> np.ndarray:
        """World position [3] of an object's or receptacle's body."""
        return self.data.xpos[self.body[name]]

    def yaw(self, name: str) -> float:
        q = self.data.xquat[self.body[name]]
        return math.atan2(2 * (q[0] * q[3] + q[1] * q[2]), 1 - 2 * (q[2] ** 2 + q[3] ** 2))

    def gripper_qpos(self) -> np.ndarray:
        """float [6]: x, y, z (fingertip point), yaw, finger_l, finger_r opening."""
        return self.data.qpos[self.grip_qpos]

    def proprio(self) -> np.ndarray:
        """float32 [8]: fingertip point xyz, axis-angle (0, 0, yaw), finger_l, finger_r."""
        g = self.gripper_qpos()
        return np.array([g[0], g[1], g[2], 0.0, 0.0, g[3], g[4], g[5]], dtype=np.float32)

    def touching_fingers(self, name: str) -> bool:
        geom = self.obj_geom[name]
        d = self.data
        for i in range(d.ncon):
            c = d.contact[i]
            if (c.geom1 == geom and c.geom2 in self.finger_geoms) or \
                    (c.geom2 == geom and c.geom1 in self.finger_geoms):
                return True
        return False

    def finger_touches(self) -> set[str]:
        """The objects in contact with a finger now (one vectorised pass over the
        contacts, for per-step bookkeeping)."""
        n = self.data.ncon
        g1, g2 = self.data.contact.geom1[:n], self.data.contact.geom2[:n]
        fingers = list(self.finger_geoms)
        geoms = set(g2[np.isin(g1, fingers)].tolist()) | set(g1[np.isin(g2, fingers)].tolist())
        return {name for name, geom in self.obj_geom.items() if geom in geoms}

    # ------------------------------------------------------------------ pixels
    def render(self) -> np.ndarray:
        """uint8 [V, H, W, 3]: agentview, then wrist if enabled."""
        if self._renderer is None:
            _headless_gl()
            try:
                self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
                # registered after the GL backend's own exit hook, so it runs before it
                atexit.unregister(_close_all)
                atexit.register(_close_all)
            except mujoco.FatalError as exc:
                raise RuntimeError(
                    f"cannot create an offscreen OpenGL context ({exc}); set MUJOCO_GL=egl "
                    "(or osmesa) before anything imports mujoco") from None
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                self._renderer.scene.flags[flag] = 0
        out = np.empty((len(self.cameras), self.image_size, self.image_size, 3), np.uint8)
        for v, cam in enumerate(self.cameras):
            self._renderer.update_scene(self.data, camera=cam)
            self._renderer.render(out=out[v])
        return out

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
