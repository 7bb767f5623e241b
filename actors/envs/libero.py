"""The real LIBERO benchmark behind the :class:`~actors.envs.base.TaskEnv` interface.

In:  an ``EnvConfig`` with ``name == "libero"`` (suite, image_size, render_size, wrist_camera,
     center_crop, settle_steps, max_steps, init-state split); LIBERO installed by
     ``pushcut setup libero``.
Out: observations ``images`` uint8 [V, S, S, 3] (agentview, then wrist if enabled) and
     ``proprio`` float32 [8] (eef position, eef axis-angle, 2 gripper finger qpos), success
     from LIBERO's own goal predicates.

Built by ``actors.envs.make_env`` when ``env.name=libero``; actors host each one in its own
subprocess (``actors/env_workers.py``), since one LIBERO env holds 2-3 GB:
:func:`libero_workers_that_fit` says how many fit in the memory available now.

Task ids are ``"<suite>/<index>"`` (``"libero_spatial/0"``) in the benchmark's own order;
instructions are the benchmark's. Each task has 50 initial states: training ids are
``[0, num_train)``, held-out ids ``[num_train, num_train + num_heldout)``.

Action (7 floats in [-1, 1], LIBERO's convention, passed to robosuite's OSC_POSE controller
unchanged): dx, dy, dz (x 0.05 m per step), droll, dpitch, dyaw (axis-angle, x 0.5 rad per
step), gripper: -1 opens, +1 closes. OpenVLA-family checkpoints predict the gripper in the
RLDS convention (0 close, 1 open); their policy must map it as OpenVLA does
(``g -> -sign(2g - 1)``) before it reaches this env.

Images follow OpenVLA(-OFT): render ``render_size`` pixels (OFT: 256), rotate 180° (the
raw frame is in OpenGL's bottom-up order), optionally centre-crop 90 % of the area, resize
to ``image_size`` (Lanczos, PIL; OFT's JPEG round trip is not reproduced). Cameras render
only when asked (``step(render=True)``, ``observe()``); a step without them costs ~20 ms.

Resets are soft (the MuJoCo model is kept; robosuite's hard reset rebuilds it, 3-10x slower)
yet reproduce a hard reset exactly: LIBERO places fixtures with the global numpy RNG, so the
RNG is seeded from (task_id, init_state_id) for the reset, and the gripper's internal action
state is cleared; the init state then sets every joint.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import zlib
from typing import Any, Optional

import numpy as np
import psutil
from PIL import Image

from actors.envs.base import StepResult, TaskSpec, checked_action

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# SimpleVLA-RL's limit for every suite; OpenVLA-OFT's eval uses 220, 280, 300, 520, 400.
SUITE_MAX_STEPS = {suite: 512 for suite in SUITES}
NUM_INIT_STATES = 50
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # OpenVLA's no-op
CAMERAS = ("agentview", "robot0_eye_in_hand")
PROPRIO_DIM = 8
WORKER_BYTES = 3 << 30          # upper end of the measured 2.1-2.7 GB RSS per env
RESERVE_BYTES = 2 << 30         # left for the actor, its policy and the OS


# ---------------------------------------------------------------------------- pure parts

def parse_task_id(task_id: str) -> tuple[str, int]:
    """``"libero_spatial/3"`` -> ("libero_spatial", 3); ValueError naming a bad id."""
    suite, _, index = str(task_id).partition("/")
    if suite not in SUITES or not index.isdigit():
        raise ValueError(f"bad LIBERO task_id {task_id!r}: expected '<suite>/<index>' with "
                         f"suite one of {', '.join(SUITES)}")
    return suite, int(index)


def is_task_id(task_id: str) -> bool:
    """A well-formed ``"<suite>/<index>"`` (whether the suite has that many tasks is known
    only once LIBERO is imported)."""
    try:
        parse_task_id(task_id)
    except ValueError:
        return False
    return True


def init_state_split(num_train: int, num_heldout: int,
                     total: int = NUM_INIT_STATES) -> tuple[list[int], list[int]]:
    """Training ids [0, num_train) and held-out ids [num_train, num_train + num_heldout)."""
    if num_train < 0 or num_heldout < 0 or num_train + num_heldout > total:
        raise ValueError(f"env.num_train_init_states ({num_train}) + "
                         f"env.num_heldout_init_states ({num_heldout}) must be >= 0 each and "
                         f"sum to at most the {total} init states of a LIBERO task")
    return list(range(num_train)), list(range(num_train, num_train + num_heldout))


def preprocess_image(raw: np.ndarray, size: int, crop_scale: Optional[float] = None
                     ) -> np.ndarray:
    """OpenVLA-style frame: uint8 [H, W, 3] as rendered (bottom-up) -> uint8 [size, size, 3].

    Rotates 180°, centre-crops ``crop_scale`` of the area when given, resizes (Lanczos)."""
    img = np.ascontiguousarray(raw[::-1, ::-1])
    h, w = img.shape[:2]
    if crop_scale is not None and crop_scale < 1.0:
        side = math.sqrt(crop_scale)
        ch, cw = max(1, round(h * side)), max(1, round(w * side))
        top, left = (h - ch) // 2, (w - cw) // 2
        img = img[top:top + ch, left:left + cw]
    if img.shape[:2] != (size, size):
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS))
    return img


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """float [4] (x, y, z, w) -> float [3], angle in [0, 2π) as robosuite (and OpenVLA) do."""
    w = float(np.clip(quat_xyzw[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return np.asarray(quat_xyzw[:3], dtype=np.float64) * 2.0 * math.acos(w) / den


def proprio_from(raw_obs: dict[str, np.ndarray]) -> np.ndarray:
    """robosuite observation -> float32 [8]: eef pos [3], eef axis-angle [3], gripper qpos [2]."""
    return np.concatenate([raw_obs["robot0_eef_pos"],
                           quat_to_axis_angle(raw_obs["robot0_eef_quat"]),
                           raw_obs["robot0_gripper_qpos"]]).astype(np.float32)


def placement_seed(task_id: str, init_state_id: int) -> int:
    """The numpy seed for LIBERO's fixture placement at a reset (a pure function of both)."""
    return zlib.crc32(f"{task_id}#{init_state_id}".encode())


def libero_worker_capacity(available_bytes: Optional[int] = None,
                           per_worker_bytes: int = WORKER_BYTES,
                           reserve_bytes: int = RESERVE_BYTES) -> int:
    """How many LIBERO env workers fit in ``available_bytes`` (default: psutil's figure now),
    keeping ``reserve_bytes`` free; 0 or less when not even one does."""
    if available_bytes is None:
        available_bytes = psutil.virtual_memory().available
    return int((available_bytes - reserve_bytes) // per_worker_bytes)


def libero_workers_that_fit(requested: int, available_bytes: Optional[int] = None,
                            per_worker_bytes: int = WORKER_BYTES,
                            reserve_bytes: int = RESERVE_BYTES) -> int:
    """How many of ``requested`` LIBERO env workers fit in the memory available now (psutil),
    keeping ``reserve_bytes`` free; never below 1 (one worker is always attempted)."""
    fit = libero_worker_capacity(available_bytes, per_worker_bytes, reserve_bytes)
    return max(1, min(requested, fit))


def _prepare_libero_import() -> None:
    """Headless GL before robosuite loads; libero's config before libero loads (no prompt)."""
    gl = os.environ.setdefault("MUJOCO_GL", "egl")
    if gl in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", gl)
    from actors.envs.libero_setup import SetupError, ensure_libero_config, libero_package_dir
    try:
        ensure_libero_config(libero_package_dir())
    except SetupError as exc:
        raise RuntimeError(f"LIBERO is not set up ({exc}); run `pushcut setup libero`") from None


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())  # libero prints task orders and warnings


# ---------------------------------------------------------------------------- the env

class LiberoEnv:
    """One LIBERO simulator (built lazily at the first reset, rebuilt when the task changes)."""

    def __init__(self, env_cfg: Any, seed: int = 0):
        self.cfg = env_cfg
        self.seed = seed   # unused: LIBERO episodes are fixed by (task_id, init_state_id)
        self._check_config(env_cfg)
        self._train_ids, self._heldout_ids = init_state_split(
            env_cfg.num_train_init_states, env_cfg.num_heldout_init_states)
        _prepare_libero_import()
        from libero.libero import benchmark
        with _quiet():
            self._suites = {s: benchmark.get_benchmark_dict()[s]() for s in SUITES}
        self._specs = {s.task_id: s for s in self._selected_tasks(env_cfg)}
        self._sim: Any = None            # libero OffScreenRenderEnv
        self._sim_task: Optional[str] = None
        self._init_states: Optional[np.ndarray] = None
        self._raw: Optional[dict[str, np.ndarray]] = None
        self._steps = 0
        self._done = True
        self._max_steps = 0

    @staticmethod
    def _check_config(cfg: Any) -> None:
        # the sizes, the crop and the step counts are checked by LiberoEnvConfig's fields
        if cfg.suite not in SUITES and not cfg.tasks:
            raise ValueError(f"env.suite={cfg.suite!r} is not a LIBERO suite; use one of "
                             f"{', '.join(SUITES)} or list env.tasks")

    def _spec(self, suite: str, index: int) -> TaskSpec:
        bench = self._suites[suite]
        if index >= bench.n_tasks:
            raise ValueError(f"LIBERO task_id {suite}/{index}: {suite} has {bench.n_tasks} tasks")
        return TaskSpec(task_id=f"{suite}/{index}", family=suite,
                        instruction=bench.get_task(index).language,
                        max_steps=self.cfg.max_steps or SUITE_MAX_STEPS[suite])

    def _selected_tasks(self, cfg: Any) -> list[TaskSpec]:
        if cfg.tasks:
            return [self._spec(*parse_task_id(t)) for t in cfg.tasks]
        return [self._spec(cfg.suite, i) for i in range(self._suites[cfg.suite].n_tasks)]

    # -- TaskEnv -------------------------------------------------------------------------
    def tasks(self) -> list[TaskSpec]:
        return list(self._specs.values())

    def train_init_state_ids(self, task_id: str) -> list[int]:
        self.spec(task_id)
        return list(self._train_ids)

    def heldout_init_state_ids(self, task_id: str) -> list[int]:
        self.spec(task_id)
        return list(self._heldout_ids)

    def spec(self, task_id: str) -> TaskSpec:
        """Any valid LIBERO task id, in the configured set or not (evaluation may ask)."""
        if task_id not in self._specs:
            return self._spec(*parse_task_id(task_id))
        return self._specs[task_id]

    def reset(self, task_id: str, init_state_id: int) -> dict[str, np.ndarray]:
        spec = self.spec(task_id)
        if task_id != self._sim_task:
            self._build(task_id)
        if not 0 <= int(init_state_id) < len(self._init_states):
            raise ValueError(f"init_state_id {init_state_id} out of range for {task_id} "
                             f"({len(self._init_states)} init states)")
        rng_state = np.random.get_state()
        np.random.seed(placement_seed(task_id, int(init_state_id)))
        try:
            with _quiet():
                self._sim.reset()
        finally:
            np.random.set_state(rng_state)
        gripper = self._sim.env.robots[0].gripper
        gripper.current_action = np.zeros_like(gripper.current_action)  # a hard reset's value
        self._raw = self._sim.set_init_state(self._init_states[int(init_state_id)])
        for _ in range(self.cfg.settle_steps):
            self._raw = self._sim.step(SETTLE_ACTION)[0]
        self._steps, self._done, self._max_steps = 0, False, spec.max_steps
        return self.observe()

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        if self._sim is None or self._done:
            raise RuntimeError("LiberoEnv.step: the episode is over or never started; "
                               "call reset(task_id, init_state_id) first")
        action = checked_action(action, "LIBERO")
        self._raw, _, success, _ = self._sim.step(action)
        self._steps += 1
        success = bool(success)
        self._done = success or self._steps >= self._max_steps
        return StepResult(self.observe() if render else None, success, self._done)

    def observe(self) -> dict[str, np.ndarray]:
        if self._sim is None or self._raw is None:
            raise RuntimeError("LiberoEnv.observe: call reset(task_id, init_state_id) first")
        return {"images": self.render(), "proprio": proprio_from(self._raw)}

    def close(self) -> None:
        if self._sim is not None:
            with _quiet():
                self._sim.close()
        self._sim, self._sim_task, self._raw, self._done = None, None, None, True

    # -- simulator access (rendering, tests, debugging) ------------------------------------
    def render(self) -> np.ndarray:
        """uint8 [V, S, S, 3]: the enabled cameras, preprocessed."""
        size = self.cfg.render_size or self.cfg.image_size
        crop = self.cfg.center_crop_scale if self.cfg.center_crop else None
        cams = CAMERAS if self.cfg.wrist_camera else CAMERAS[:1]
        return np.stack([preprocess_image(self._sim.sim.render(width=size, height=size,
                                                               camera_name=cam),
                                          self.cfg.image_size, crop) for cam in cams])

    @property
    def sim(self) -> Any:
        """The robosuite/LIBERO env of the current task (``.sim`` is its MuJoCo binding)."""
        if self._sim is None:
            raise RuntimeError("LiberoEnv.sim: call reset(task_id, init_state_id) first")
        return self._sim.env

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def init_states(self) -> np.ndarray:
        """float64 [50, S]: the current task's MuJoCo init states, indexed by init_state_id."""
        if self._init_states is None:
            raise RuntimeError("LiberoEnv.init_states: call reset(task_id, init_state_id) first")
        return self._init_states

    def goal_predicates(self) -> list[list[str]]:
        """The task's BDDL goal, e.g. [["on", "akita_black_bowl_1", "plate_1"]]."""
        return [list(p) for p in self.sim.parsed_problem["goal_state"]]

    def check_success(self) -> bool:
        return bool(self.sim._check_success())

    def _build(self, task_id: str) -> None:
        self.close()
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
        suite, index = parse_task_id(task_id)
        task = self._suites[suite].get_task(index)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        size = self.cfg.render_size or self.cfg.image_size
        with _quiet():
            self._init_states = np.asarray(self._suites[suite].get_task_init_states(index))
            # camera observations off: cameras render only on request (see render())
            self._sim = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=size,
                                           camera_widths=size, use_camera_obs=False,
                                           hard_reset=False, ignore_done=True)
        self._sim_task = task_id
