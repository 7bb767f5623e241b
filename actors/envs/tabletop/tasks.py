"""Task families of the tabletop suite: scenes, instructions, goals, step limits, and the
initial-state sampler (a pure function of (task_id, init_state_id)).

Families (mirroring LIBERO's suites):
  spatial  two identical yellow cubes and a plate; the cube to move is told by its position
  object   four objects (red/green cube, blue/yellow cylinder) and a tray; told by kind/colour
  goal     one scene (red cube, blue cube, plate, tray), different goals
  long     two chained sub-goals in a scene with a distractor cylinder

A goal is ``(kind, obj, target)``: ``on`` a plate, ``in`` a tray, ``stack`` on another
object, ``lift`` (held above the table). A task succeeds when all its goals hold at once.
Left/right/front/back are as seen in the agentview image (right = +y, front = +x).

Initial states (``env.layout``): ``nominal`` (default) gives every task one scene and
perturbs it by a few cm and a few tenths of a radian per init_state_id, as LIBERO's 50
initial states per task are small perturbations of one scene; ``uniform`` scatters the
spatial, object and long scenes over the whole workspace (a generalisation suite: few demos
cover it sparsely).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from actors.envs.tabletop.scene import (
    RECEPTACLE_RADIUS, ObjectSpec, SceneSpec,
)

Goal = tuple[str, str, str]   # (on|in|stack|lift, object name, plate|tray|object name|"")

SCENES: dict[str, SceneSpec] = {
    "spatial": SceneSpec("spatial", (ObjectSpec("cube_a", "cube", "yellow"),
                                     ObjectSpec("cube_b", "cube", "yellow")), ("plate",)),
    "object": SceneSpec("object", (ObjectSpec("red_cube", "cube", "red"),
                                   ObjectSpec("green_cube", "cube", "green"),
                                   ObjectSpec("blue_cylinder", "cylinder", "blue"),
                                   ObjectSpec("yellow_cylinder", "cylinder", "yellow")), ("tray",)),
    "goal": SceneSpec("goal", (ObjectSpec("red_cube", "cube", "red"),
                               ObjectSpec("blue_cube", "cube", "blue")), ("plate", "tray")),
    "long": SceneSpec("long", (ObjectSpec("red_cube", "cube", "red"),
                               ObjectSpec("blue_cube", "cube", "blue"),
                               ObjectSpec("green_cylinder", "cylinder", "green")),
                      ("plate", "tray")),
}
# control steps (20 Hz) before truncation: about 1.7x the expert's typical episode (a failed
# episode costs the actors and the learner no more than it must); whole chunks of 8
MAX_STEPS = {"spatial": 96, "object": 96, "goal": 96, "long": 200}


@dataclass(frozen=True)
class TaskDef:
    task_id: str
    family: str
    instruction: str
    goals: tuple[Goal, ...]
    relation: str = ""          # spatial only: where cube_a (the target) is relative to cube_b

    @property
    def scene(self) -> SceneSpec:
        return SCENES[self.family]


def _defs() -> list[TaskDef]:
    out = []
    for i, rel in enumerate(("left", "right", "front", "back")):
        out.append(TaskDef(f"spatial/{i}", "spatial", f"put the {rel} cube on the plate",
                           (("on", "cube_a", "plate"),), relation=rel))
    for i, (colour, kind) in enumerate((("red", "cube"), ("green", "cube"),
                                        ("blue", "cylinder"), ("yellow", "cylinder"))):
        out.append(TaskDef(f"object/{i}", "object", f"put the {colour} {kind} in the tray",
                           (("in", f"{colour}_{kind}", "tray"),)))
    goal = [("put the red cube on the plate", (("on", "red_cube", "plate"),)),
            ("put the blue cube in the tray", (("in", "blue_cube", "tray"),)),
            ("stack the red cube on the blue cube", (("stack", "red_cube", "blue_cube"),)),
            ("pick up the blue cube and hold it", (("lift", "blue_cube", ""),))]
    long = [("put the red cube on the plate and the blue cube in the tray",
             (("on", "red_cube", "plate"), ("in", "blue_cube", "tray"))),
            ("put the blue cube on the plate and the red cube in the tray",
             (("on", "blue_cube", "plate"), ("in", "red_cube", "tray"))),
            ("put both cubes in the tray", (("in", "red_cube", "tray"), ("in", "blue_cube", "tray"))),
            ("put the red cube on the plate and stack the blue cube on it",
             (("on", "red_cube", "plate"), ("stack", "blue_cube", "red_cube")))]
    for family, items in (("goal", goal), ("long", long)):
        out += [TaskDef(f"{family}/{i}", family, text, goals) for i, (text, goals) in enumerate(items)]
    return out


TASKS: dict[str, TaskDef] = {t.task_id: t for t in _defs()}
FAMILIES = tuple(SCENES)
SUITES = ("all", *FAMILIES)   # env.suite: every task, or one family's


def get_task(task_id: str) -> TaskDef:
    if task_id not in TASKS:
        raise KeyError(f"unknown tabletop task_id {task_id!r}; known: {', '.join(TASKS)}")
    return TASKS[task_id]


def tasks_of(suite: str) -> list[TaskDef]:
    """``suite``: a family name or "all"."""
    if suite == "all":
        return list(TASKS.values())
    if suite not in SUITES:
        raise ValueError(f"unknown tabletop suite {suite!r}; use one of {', '.join(SUITES)}")
    return [t for t in TASKS.values() if t.family == suite]


# ---------------------------------------------------------------- initial states

@dataclass(frozen=True)
class Layout:
    """An initial state: planar poses (x, y, yaw) of objects and receptacles, gripper start."""
    objects: dict[str, tuple[float, float, float]]
    receptacles: dict[str, tuple[float, float]]
    gripper: tuple[float, float, float]          # fingertip point x, y, z


X_RANGE, Y_RANGE = (-0.13, 0.13), (-0.19, 0.19)
GAP = 0.025   # clearance between footprints (room for a finger)
LAYOUTS = ("nominal", "uniform")
# nominal layouts (the default suite, shaped like LIBERO's: each task one scene, small
# perturbations): footprint centres (x, y) per family, or per task where the task decides
# the scene; each initial state moves every footprint by up to JITTER in x and y and turns
# every object by up to YAW_JITTER
_GOAL = {"red_cube": (0.08, -0.06), "blue_cube": (0.08, 0.06),
         "plate": (-0.07, -0.11), "tray": (-0.07, 0.12)}
_SPATIAL_SIDE = {"cube_a": (0.06, -0.08), "cube_b": (0.06, 0.08), "plate": (-0.08, 0.0)}
_SPATIAL_DEPTH = {"cube_a": (0.09, -0.1), "cube_b": (-0.07, -0.1), "plate": (0.0, 0.1)}
NOMINAL: dict[str, dict[str, tuple[float, float]]] = {
    "goal": _GOAL,
    "long": {**_GOAL, "green_cylinder": (0.0, 0.0)},
    "object": {"red_cube": (0.09, -0.08), "green_cube": (0.09, 0.08),
               "blue_cylinder": (0.04, -0.16), "yellow_cylinder": (0.04, 0.16),
               "tray": (-0.07, 0.0)},
    "spatial/0": _SPATIAL_SIDE,                                            # left
    "spatial/1": {**_SPATIAL_SIDE, "cube_a": _SPATIAL_SIDE["cube_b"],
                  "cube_b": _SPATIAL_SIDE["cube_a"]},                      # right
    "spatial/2": _SPATIAL_DEPTH,                                           # front
    "spatial/3": {**_SPATIAL_DEPTH, "cube_a": _SPATIAL_DEPTH["cube_b"],
                  "cube_b": _SPATIAL_DEPTH["cube_a"]},                     # back
}
JITTER, YAW_JITTER = 0.03, 0.2
UNIFORM_YAW = 0.4   # the uniform suite turns objects by up to this


def nominal_layout(task: TaskDef) -> dict[str, tuple[float, float]]:
    return NOMINAL.get(task.task_id) or NOMINAL[task.family]


def _rng(task_id: str, init_state_id: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(task_id.encode()), int(init_state_id), 0x7AB1E])


def _relation_holds(rel: str, a: np.ndarray, b: np.ndarray) -> bool:
    """cube_a is unambiguously ``rel`` of cube_b: apart by >= 9 cm along the told axis and
    the told axis dominates the other by 2:1 (right = +y, front = +x)."""
    d = a - b
    axis, sign = {"left": (1, -1), "right": (1, 1), "front": (0, 1), "back": (0, -1)}[rel]
    along, across = sign * d[axis], abs(d[1 - axis])
    return along >= 0.09 and along >= 2 * across


def sample_layout(task: TaskDef, init_state_id: int, layout: str = "nominal") -> Layout:
    """A pure function of (task_id, init_state_id, layout): footprints placed one by one
    (each retried until it clears those already placed, and for spatial tasks until the told
    relation holds) from a generator seeded by the first two. ``nominal``: each footprint
    within JITTER of the task's nominal layout; ``uniform``: anywhere in the workspace (the
    goal family stays nominal: its tasks share one scene)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown tabletop layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    nominal = layout == "nominal" or task.family == "goal"
    if init_state_id < 0:
        raise ValueError(f"init_state_id must be >= 0, got {init_state_id}")
    rng = _rng(task.task_id, init_state_id)
    scene = task.scene
    radii = {o.name: o.radius for o in scene.objects}
    radii.update({r: RECEPTACLE_RADIUS[r] for r in scene.receptacles})
    names = list(scene.receptacles) + [o.name for o in scene.objects]   # largest first
    for _ in range(1000):
        pos = _place(rng, task, names, radii, nominal)
        if pos is None:
            continue
        turn = YAW_JITTER if nominal else UNIFORM_YAW
        yaw = {o.name: float(rng.uniform(-turn, turn)) for o in scene.objects}
        g = rng.uniform([-0.16, -0.03, 0.16], [-0.12, 0.03, 0.2])
        return Layout(objects={o.name: (float(pos[o.name][0]), float(pos[o.name][1]),
                                        yaw[o.name]) for o in scene.objects},
                      receptacles={r: (float(pos[r][0]), float(pos[r][1]))
                                   for r in scene.receptacles},
                      gripper=(float(g[0]), float(g[1]), float(g[2])))
    raise RuntimeError(f"{task.task_id}: no layout found for init_state_id {init_state_id}")


def _place(rng: np.random.Generator, task: TaskDef, names: list[str],
           radii: dict[str, float], nominal: bool) -> dict[str, np.ndarray] | None:
    """Positions [2] for ``names`` in order, or None when one finds no free spot."""
    pos: dict[str, np.ndarray] = {}
    for name in names:
        for _ in range(200):
            xy = (np.asarray(nominal_layout(task)[name]) + rng.uniform(-JITTER, JITTER, 2)
                  if nominal else _uniform_xy(rng, radii[name]))
            if all(math.dist(xy, q) >= radii[name] + radii[o] + GAP for o, q in pos.items()) \
                    and _relation_ok(task, name, xy, pos):
                pos[name] = xy
                break
        else:
            return None
    return pos


def _relation_ok(task: TaskDef, name: str, xy: np.ndarray, pos: dict[str, np.ndarray]) -> bool:
    if not task.relation or name != "cube_b":
        return True
    return _relation_holds(task.relation, pos["cube_a"], xy)


def _uniform_xy(rng: np.random.Generator, radius: float) -> np.ndarray:
    lo = [X_RANGE[0] + radius * 0.5, Y_RANGE[0] + radius * 0.5]
    hi = [X_RANGE[1] - radius * 0.5, Y_RANGE[1] - radius * 0.5]
    return rng.uniform(lo, hi)
