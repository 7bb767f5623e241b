"""Behaviour fingerprint of one tabletop episode, read from the simulator's state.

In: the env's :class:`~actors.envs.tabletop.sim.Sim` and task after every control step
(:meth:`EpisodeTrace.observe`). Out (:meth:`EpisodeTrace.fingerprint`): which objects the
fingers touched and in what order, whether each was lifted (its centre above its resting
height) or only slid, the gripper's close and open events, the fingertip's path length, the
step of success, the fingertip's path every ``PATH_STRIDE`` steps (mm; for distances to the
demonstrations), a strategy label and, for a failed episode, the phase it ended in.

Strategy (every family; the goals say which objects matter): ``grasp_and_place`` when every
goal object was lifted, ``push`` when a goal object moved along the table without ever
being lifted, ``other`` when no goal object moved.
Failure phase (the first goal that does not hold at the end, from the same predicate the
success check uses): ``never_reached`` (its object was never touched), ``grasp_failed``
(touched, never lifted), ``timed_out`` (still held, lifted, at the end), ``misplaced``
(released after a lift within ``NEAR_TARGET`` of its target) or ``dropped`` (released
elsewhere).
"""
from __future__ import annotations

import math

import numpy as np

from actors.envs.tabletop.predicates import goal_holds
from actors.envs.tabletop.scene import FINGER_OPEN
from actors.envs.tabletop.sim import Sim
from actors.envs.tabletop.tasks import TaskDef

LIFT_MIN = 0.02      # m above its resting height: the object was lifted, not slid
SLIDE_MIN = 0.02     # m of travel on the table: the object was moved
CLOSED, OPENED = 0.4 * FINGER_OPEN, 0.6 * FINGER_OPEN   # finger opening, with hysteresis
NEAR_TARGET = 0.06   # m: a release this close to the target (xy) is a misplacement
PATH_STRIDE = 4      # steps between the fingertip points kept (eval.json stays small)
STRATEGIES = ("grasp_and_place", "push", "other")
PHASES = ("never_reached", "grasp_failed", "timed_out", "misplaced", "dropped")


class EpisodeTrace:
    """Accumulates one episode's state, step by step (start it right after the reset)."""

    def __init__(self, sim: Sim, task: TaskDef):
        self.task = task
        self.objects = list(sim.obj_geom)
        self.start = {o: sim.pos(o)[:2].copy() for o in self.objects}
        self.touched: list[str] = []
        self.lift = {o: 0.0 for o in self.objects}        # highest centre above resting
        self.travel = {o: 0.0 for o in self.objects}      # farthest xy from the start
        self.held = {o: False for o in self.objects}
        self.release_xy: dict[str, np.ndarray] = {}       # where a lifted object was let go
        self.events: list[tuple[int, str]] = []
        self.tip = sim.gripper_qpos()[:3].copy()
        self.path = 0.0
        self.points = [self._mm(self.tip)]
        self.closed = bool(sim.gripper_qpos()[4] < CLOSED)
        self.steps = 0
        self.success_step: int | None = None

    def observe(self, sim: Sim, success: bool) -> None:
        """The state after one more control step."""
        self.steps += 1
        g = sim.gripper_qpos()
        self.path += math.dist(g[:3], self.tip)
        self.tip = g[:3].copy()
        if self.steps % PATH_STRIDE == 0:
            self.points.append(self._mm(self.tip))
        opening = float(g[4])
        if not self.closed and opening < CLOSED:
            self.closed = True
            self.events.append((self.steps, "close"))
        elif self.closed and opening > OPENED:
            self.closed = False
            self.events.append((self.steps, "open"))
        touches = sim.finger_touches()
        for o in self.objects:
            p = sim.pos(o)
            self.lift[o] = max(self.lift[o], float(p[2] - sim.half_height[o]))
            self.travel[o] = max(self.travel[o], math.hypot(*(p[:2] - self.start[o])))
            touching = o in touches
            if touching and o not in self.touched:
                self.touched.append(o)
            if self.held[o] and not touching and self.lift[o] > LIFT_MIN:
                self.release_xy[o] = p[:2].copy()
            self.held[o] = touching
        if success and self.success_step is None:
            self.success_step = self.steps

    @staticmethod
    def _mm(xyz: np.ndarray) -> list[int]:
        return [round(1000 * float(v)) for v in xyz]

    def strategy(self) -> str:
        movers = [g[1] for g in self.task.goals]
        if all(self.lift[o] > LIFT_MIN for o in movers):
            return "grasp_and_place"
        if any(self.lift[o] <= LIFT_MIN and self.travel[o] > SLIDE_MIN for o in movers):
            return "push"
        return "other"

    def failure_phase(self, sim: Sim) -> str | None:
        """None if every goal holds now, else the phase the first unmet goal ended in."""
        for goal in self.task.goals:
            if goal_holds(sim, goal):
                continue
            obj, target = goal[1], goal[2]
            if obj not in self.touched:
                return "never_reached"
            if self.lift[obj] <= LIFT_MIN:
                return "grasp_failed"
            p = sim.pos(obj)
            if sim.touching_fingers(obj) and p[2] - sim.half_height[obj] > LIFT_MIN:
                return "timed_out"
            where = self.release_xy.get(obj, p[:2])
            if target and math.dist(where, sim.pos(target)[:2]) < NEAR_TARGET:
                return "misplaced"
            return "dropped"
        return None

    def fingerprint(self, sim: Sim) -> dict:
        """The episode's fingerprint (plain JSON types), read at its end."""
        return {
            "touched": list(self.touched),
            "lifted": sorted(o for o in self.objects if self.lift[o] > LIFT_MIN),
            "slid": sorted(o for o in self.objects
                           if self.lift[o] <= LIFT_MIN and self.travel[o] > SLIDE_MIN),
            "gripper_events": [[step, kind] for step, kind in self.events],
            "path_m": round(self.path, 4),
            "path_mm": list(self.points),
            "success_step": self.success_step,
            "strategy": self.strategy(),
            "failure_phase": self.failure_phase(sim),
        }
