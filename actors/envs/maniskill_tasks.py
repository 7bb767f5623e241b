"""ManiSkill3's asset-free Panda tabletop tasks as pushcut tasks: ids, instructions, step
limits, families and suites. Pure data, importable without ManiSkill (the registry lists
these; the env in actors/envs/maniskill.py reads them).

A task id is ManiSkill's own env id (``PickCube-v1``). ManiSkill tasks have no language,
so each instruction says what the task's ``evaluate()`` checks. Step limits are about twice
ManiSkill's own (``max_episode_steps``), since its motion planners' demos run longer than
those limits when tracked with the end-effector delta-pose controller.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ManiSkillTask:
    family: str
    instruction: str
    max_steps: int
    planner: str = ""   # mani_skill.examples.motionplanning.panda.solutions function, if any


TASKS: dict[str, ManiSkillTask] = {
    "PickCube-v1": ManiSkillTask("cubes", "pick up the red cube and hold it at the goal", 100,
                                 "solvePickCube"),
    "PushCube-v1": ManiSkillTask("cubes", "push the cube onto the target", 100, "solvePushCube"),
    "StackCube-v1": ManiSkillTask("cubes", "stack the red cube on the green cube", 150,
                                  "solveStackCube"),
    "PullCube-v1": ManiSkillTask("cubes", "pull the cube onto the target", 100, "solvePullCube"),
    "PokeCube-v1": ManiSkillTask("cubes", "push the cube onto the target with the peg", 100),
    "PegInsertionSide-v1": ManiSkillTask("pegs", "insert the peg into the hole in the box", 200,
                                         "solvePegInsertionSide"),
    "LiftPegUpright-v1": ManiSkillTask("pegs", "stand the peg upright", 100,
                                       "solveLiftPegUpright"),
    "PlugCharger-v1": ManiSkillTask("pegs", "plug the charger into the socket", 300,
                                    "solvePlugCharger"),
    "PlaceSphere-v1": ManiSkillTask("other", "put the ball into the bin", 100, "solvePlaceSphere"),
    "RollBall-v1": ManiSkillTask("other", "roll the ball onto the target", 160),
    "PushT-v1": ManiSkillTask("other", "push the T-shaped block onto its outline", 200),
    "PullCubeTool-v1": ManiSkillTask("other", "pull the cube closer with the tool", 200,
                                     "solvePullCubeTool"),
    "StackPyramid-v1": ManiSkillTask("cubes", "stack the three cubes into a pyramid", 500,
                                     "solveStackPyramid"),
}
FAMILIES = ("cubes", "pegs", "other")
SUITES: dict[str, tuple[str, ...]] = {
    "cubes": ("PickCube-v1", "PushCube-v1", "StackCube-v1", "PullCube-v1", "PokeCube-v1"),
    "planned": tuple(t for t, spec in TASKS.items() if spec.planner),
    "all": tuple(TASKS),
}
