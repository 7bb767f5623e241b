"""actors/envs/tabletop/fingerprint.py on scripted episodes whose answer is known: the
expert grasps and places, a closed gripper pushes a cube onto the plate, an idle gripper
never reaches anything, a carried cube is held to the step limit or let go in the air."""
import numpy as np
import pytest

from actors.envs.tabletop import Expert, TabletopEnv
from actors.envs.tabletop.expert import move_action
from common.config.schema import TabletopEnvConfig

CLOSE = 1.0


@pytest.fixture(scope="module")
def env():
    env = TabletopEnv(TabletopEnvConfig(image_size=16, fingerprints=True))   # small renders
    yield env
    env.close()


def finish(env, action=None):
    """Step with ``action`` (default: stay still, gripper closed) until the episode ends."""
    hold = np.array([0, 0, 0, 0, 0, 0, CLOSE]) if action is None else action
    while not env.done:
        env.step(hold, render=False)
    return env.episode_info()


def scripted_push(env, task_id, init_state_id):
    """Closed fingers behind the goal object, at its centre height, then straight through it
    to the target's centre: the object slides (it is never lifted)."""
    env.reset(task_id, init_state_id)
    sim, (_, obj, target) = env.sim, env.task.goals[0]
    p, t = sim.pos(obj)[:2].copy(), sim.pos(target)[:2].copy()
    d = (t - p) / np.linalg.norm(t - p)
    h = sim.half_height[obj]
    for waypoint in ([*(p - 0.06 * d), 0.10], [*(p - 0.06 * d), h], [*t, h], [*t, 0.12]):
        for _ in range(40):
            action = np.array([*move_action(sim.gripper_qpos()[:3], np.array(waypoint)),
                               0, 0, 0, CLOSE])
            if env.step(action, render=False).done:
                return env.episode_info()
            if np.linalg.norm(sim.gripper_qpos()[:3] - waypoint) < 0.005:
                break
    return finish(env)


def test_the_expert_is_a_grasp_and_place(env):
    env.reset("spatial/0", 0)
    expert = Expert(env)
    while not env.done:
        env.step(expert.act(), render=False)
    fp = env.episode_info()
    assert env.success and fp["strategy"] == "grasp_and_place" and fp["failure_phase"] is None
    assert fp["touched"][0] == "cube_a" and "cube_a" in fp["lifted"] and fp["slid"] == []
    kinds = [kind for _, kind in fp["gripper_events"]]
    assert kinds[:2] == ["close", "open"]                  # grasped, then released
    assert fp["success_step"] == env.steps and fp["path_m"] > 0.1


def test_a_push_that_succeeds_is_labelled_push(env):
    fp = scripted_push(env, "spatial/0", 0)
    assert env.success and fp["strategy"] == "push" and fp["failure_phase"] is None
    assert fp["lifted"] == [] and fp["slid"] == ["cube_a"] and fp["gripper_events"] == [[1, "close"]]   # closed once, kept closed


def test_a_push_that_fails_touched_the_cube_but_never_lifted_it(env):
    fp = scripted_push(env, "goal/0", 0)
    assert not env.success and fp["strategy"] == "push"
    assert fp["failure_phase"] == "grasp_failed" and "red_cube" in fp["touched"]


def test_an_idle_gripper_never_reached_the_object(env):
    env.reset("object/1", 3)
    fp = finish(env, np.zeros(7))
    assert not env.success and fp["touched"] == [] and fp["strategy"] == "other"
    assert fp["failure_phase"] == "never_reached" and fp["success_step"] is None
    assert fp["path_m"] < 0.01


def test_training_rollouts_keep_no_fingerprint():
    env = TabletopEnv(TabletopEnvConfig(tasks=["spatial/0"], image_size=16, max_steps=8))
    try:
        env.reset("spatial/0", 0)
        assert env.trace is None and finish(env) is None
    finally:
        env.close()


@pytest.mark.parametrize("then, phase", [("hold", "timed_out"), ("open", "dropped")])
def test_a_carried_cube_held_to_the_end_or_let_go_in_the_air(env, then, phase):
    env.reset("goal/0", 2)
    expert = Expert(env)
    while expert.phase != "carry":
        env.step(expert.act(), render=False)
    fp = finish(env, np.array([0, 0, 0, 0, 0, 0, CLOSE if then == "hold" else -1.0]))
    assert not env.success and "red_cube" in fp["lifted"]
    assert fp["failure_phase"] == phase
