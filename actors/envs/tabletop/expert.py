"""Scripted expert of the tabletop suite: a state machine over privileged state (object
and gripper poses) emitting one 7-dim action per control step, with optional gaussian
action noise.

In: a reset ``TabletopEnv``. Out: ``Expert(env, noise, seed).act()`` -> float32 [7] for the
env's current state. Used by ``pushcut demos`` and by tests that drive actors with it.
For every goal of the task: approach above the object (turning so that the fingers miss
its neighbours), descend, close, lift, carry above the target, lower, open, retreat. A
dropped object sends the machine back to the approach, so noisy experts recover.
"""
from __future__ import annotations

import math

import numpy as np

from actors.envs.tabletop.env import MAX_DPOS, MAX_DYAW, TabletopEnv
from actors.envs.tabletop.scene import (
    FINGER_OPEN, PLATE_TOP, RECEPTACLE_RADIUS, TRAY_BASE_TOP, YAW_RANGE,
)
from actors.envs.tabletop.sim import Sim
from actors.envs.tabletop.tasks import Goal

HOVER = 0.1           # m: fingertip height while moving over the scene
GRASP_DEPTH = 0.012   # m: fingertips this far below the object's centre when grasping
PLACE_CLEARANCE = 0.006
FINGER_REACH = FINGER_OPEN + 0.012   # m: centre to the middle of an open finger, plus margin
TRAY_SPOT = 0.028     # m: off-centre placing spot when the tray already holds an object
XY_TOL, Z_TOL, YAW_TOL = 0.006, 0.006, 0.06


def grasp_yaw(kind: str, object_yaw: float, xy: np.ndarray,
              obstacles: list[tuple[np.ndarray, float]], current: float) -> float:
    """Gripper yaw for a grasp at ``xy``: cubes offer their two face pairs, cylinders any
    yaw (15 deg grid). Prefer the candidate nearest to ``current`` among those whose open
    fingers clear every obstacle ((centre [2], radius)) by 2 cm, else the clearest."""
    if kind == "cube":
        base = (object_yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4
        candidates = [base, base + math.pi / 2, base - math.pi / 2]
    else:
        candidates = list(np.linspace(-math.pi / 2, math.pi / 2, 13))
    candidates = [c for c in candidates if YAW_RANGE[0] <= c <= YAW_RANGE[1]]

    def clearance(yaw: float) -> float:
        axis = np.array([-math.sin(yaw), math.cos(yaw)]) * FINGER_REACH
        return min((math.dist(xy + s * axis, c) - r for c, r in obstacles for s in (-1, 1)),
                   default=1.0)

    scored = [(clearance(c), c) for c in candidates]
    clear = [c for score, c in scored if score > 0.02]
    if clear:
        return min(clear, key=lambda c: abs(c - current))
    return max(scored)[1]


def move_action(eef: np.ndarray, waypoint: np.ndarray) -> np.ndarray:
    """eef [3], waypoint [3] -> dx, dy, dz [3] in [-1, 1] (proportional, saturating)."""
    return np.clip((waypoint - eef) / MAX_DPOS, -1.0, 1.0)


def _obstacles(sim: Sim, obj: str) -> list[tuple[np.ndarray, float]]:
    out = [(sim.pos(o.name)[:2], o.radius) for o in sim.spec.objects if o.name != obj]
    return out + [(sim.pos(r)[:2], RECEPTACLE_RADIUS[r]) for r in sim.spec.receptacles]


class Expert:
    """One env's scripted expert. ``phase`` (approach, descend, grasp, lift, hold, carry,
    lower, release, retreat) and ``goal_index`` show where it is; a reset env (steps == 0)
    restarts it, so one Expert serves many episodes."""

    def __init__(self, env: TabletopEnv, noise: float = 0.0,
                 seed: int | np.random.SeedSequence = 0):
        if noise < 0:
            raise ValueError(f"expert noise must be >= 0, got {noise}")
        self.env, self.noise = env, noise
        self.rng = np.random.default_rng(seed)
        self._episode = None
        self.goal_index, self.phase, self.timer, self.offset = 0, "approach", 0, GRASP_DEPTH
        self.want_yaw = 0.0
        self.clean_action: np.ndarray | None = None

    def act(self) -> np.ndarray:
        """float32 [7]: the next action for the env's current state."""
        env = self.env
        if env.sim is None or env.task is None:
            raise RuntimeError("Expert.act() before env.reset()")
        if env.steps == 0 or self._episode is not env.task:
            self._episode = env.task
            self.goal_index, self.timer = 0, 0
            self._next("approach")
        goals = env.task.goals
        action = self._goal_action(goals[min(self.goal_index, len(goals) - 1)])
        # kept so that demos can label a noisy step with what the expert meant (DART)
        self.clean_action = action.astype(np.float32)
        if self.noise > 0:
            action = np.clip(action + self.rng.normal(0.0, self.noise, 7), -1.0, 1.0)
        return action.astype(np.float32)

    # ---------------------------------------------------------------- phases
    def _goal_action(self, goal: Goal) -> np.ndarray:
        sim = self.env.sim
        kind, obj, _ = goal
        g = sim.gripper_qpos()
        eef, yaw, p = g[:3].copy(), float(g[3]), sim.pos(obj)
        self.timer += 1
        if self.phase in ("lift", "carry", "lower") and not self._holding(eef, p):
            self._next("approach")                       # dropped it: start over
        if self.phase == "approach" and self.timer % 5 == 1:
            obj_kind = next(o.kind for o in sim.spec.objects if o.name == obj)
            self.want_yaw = grasp_yaw(obj_kind, sim.yaw(obj), p[:2], _obstacles(sim, obj), yaw)
        grip, way = self._phase_step(goal, g, p)
        want_yaw = self.want_yaw if self.phase in ("approach", "descend") else yaw
        d_yaw = np.clip((want_yaw - yaw) / MAX_DYAW, -1.0, 1.0)
        return np.array([*move_action(eef, way), 0.0, 0.0, d_yaw, grip])

    def _phase_step(self, goal: Goal, g: np.ndarray, p: np.ndarray) -> tuple[float, np.ndarray]:
        """Advance the state machine; -> (gripper command, fingertip waypoint [3])."""
        kind = goal[0]
        eef, yaw, opening = g[:3], g[3], g[4] + g[5]
        phase, grip, way = self.phase, -1.0, eef.copy()
        if phase == "approach":
            way = np.array([p[0], p[1], HOVER])
            if eef[2] < HOVER - 0.04 and math.dist(eef[:2], p[:2]) > 0.02:
                way[:2] = eef[:2]                        # rise first, sweep nothing
            if math.dist(eef[:2], p[:2]) < XY_TOL and abs(yaw - self.want_yaw) < YAW_TOL:
                self._next("descend")
        elif phase == "descend":
            way = np.array([p[0], p[1], max(p[2] - GRASP_DEPTH, 0.004)])
            if abs(eef[2] - way[2]) < Z_TOL:
                self._next("grasp")
        elif phase == "grasp":
            grip = 1.0
            if self.timer >= 4 and opening < 2 * FINGER_OPEN * 0.95:
                self._next("lift")
        elif phase in ("lift", "hold"):
            grip, way = 1.0, np.array([eef[0], eef[1], HOVER + (0.05 if kind == "lift" else 0)])
            if phase == "lift" and eef[2] > way[2] - 0.02:
                self._next("hold" if kind == "lift" else "carry")
        elif phase in ("carry", "lower"):
            self.offset = float(p[2] - eef[2])
            grip, way = 1.0, self._place_waypoint(goal)
            if phase == "carry" and math.dist(eef[:2], way[:2]) < XY_TOL:
                self._next("lower")
            elif phase == "lower" and (abs(eef[2] - way[2]) < Z_TOL or self.timer > 12):
                self._next("release")                    # reached, or resting on something
        elif phase == "release":
            if opening > 2 * FINGER_OPEN * 0.8:
                self._next("retreat")
        elif phase == "retreat":
            way = np.array([eef[0], eef[1], HOVER])
            if eef[2] > HOVER - 0.03:
                self.goal_index += 1
                self._next("approach")
        return grip, way

    def _next(self, phase: str) -> None:
        self.phase, self.timer = phase, 0

    @staticmethod
    def _holding(eef: np.ndarray, p: np.ndarray) -> bool:
        return math.dist(eef[:2], p[:2]) < 0.03 and -0.01 < p[2] - eef[2] < 0.04

    def _place_waypoint(self, goal: Goal) -> np.ndarray:
        """Fingertip waypoint above (carry) or at (lower) the goal's target spot."""
        kind, obj, target = goal
        sim = self.env.sim
        t = sim.pos(target).copy()
        if kind == "stack":
            surface = t[2] + sim.half_height[target]
        else:
            surface = PLATE_TOP if kind == "on" else TRAY_BASE_TOP
        if kind == "in":
            t[:2] = self._tray_spot(obj, target)
        z = HOVER if self.phase == "carry" else (
            surface + sim.half_height[obj] + PLACE_CLEARANCE - self.offset)
        return np.array([t[0], t[1], z])

    def _tray_spot(self, obj: str, tray: str) -> np.ndarray:
        """Where in the tray to put ``obj``: the centre, unless the task puts several objects
        in it; then one side, or the side away from an object already in it."""
        sim = self.env.sim
        c = sim.pos(tray)[:2]
        for o in sim.spec.objects:
            q = sim.pos(o.name)[:2]
            if o.name != obj and np.all(np.abs(q - c) < 0.06):
                away = c - q
                n = np.linalg.norm(away)
                return c + (away / n if n > 1e-3 else np.array([0.0, 1.0])) * TRAY_SPOT
        shared = sum(g[0] == "in" and g[2] == tray for g in self.env.task.goals) > 1
        return c + np.array([0.0, -TRAY_SPOT]) if shared else c
