"""Binary success predicates of the tabletop tasks, read from the simulator state.

Placing goals (on, in, stack) also require that the object is released (no contact with a
finger), so carrying an object over the target does not count.
"""
from __future__ import annotations

import math

from actors.envs.tabletop.scene import (
    PLATE_RADIUS, PLATE_TOP, TRAY_BASE_TOP, TRAY_INNER,
)
from actors.envs.tabletop.sim import Sim
from actors.envs.tabletop.tasks import Goal, TaskDef

Z_TOL = 0.012      # m: how far a placed object's centre may sit from its resting height
LIFT_HEIGHT = 0.08  # m: how far above its resting height a lifted object's centre must be


def goal_holds(sim: Sim, goal: Goal) -> bool:
    kind, obj, target = goal
    p, h = sim.pos(obj), sim.half_height[obj]
    if kind == "lift":
        return p[2] > h + LIFT_HEIGHT
    if kind == "on":      # on the plate
        t = sim.pos(target)
        ok = (math.hypot(p[0] - t[0], p[1] - t[1]) < PLATE_RADIUS
              and abs(p[2] - (PLATE_TOP + h)) < Z_TOL)
    elif kind == "in":    # inside the tray's walls, resting on its base
        t = sim.pos(target)
        ok = (abs(p[0] - t[0]) < TRAY_INNER and abs(p[1] - t[1]) < TRAY_INNER
              and p[2] < TRAY_BASE_TOP + h + Z_TOL)
    elif kind == "stack":  # resting on top of another object
        t, ht = sim.pos(target), sim.half_height[target]
        ok = (math.hypot(p[0] - t[0], p[1] - t[1]) < 0.025
              and abs(p[2] - t[2] - (h + ht)) < Z_TOL)
    else:
        raise ValueError(f"unknown goal kind {kind!r} in {goal}")
    return ok and not sim.touching_fingers(obj)


def task_success(sim: Sim, task: TaskDef) -> bool:
    return all(goal_holds(sim, g) for g in task.goals)
