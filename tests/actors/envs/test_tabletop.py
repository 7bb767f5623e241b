"""The tabletop suite (actors/envs/tabletop): tasks, initial states, observations, actions,
physical grasps and bad input. Expert and random-policy success rates are in
test_tabletop_experts.py."""
import numpy as np
import pytest

from actors.envs.base import StepResult, TaskSpec
from actors.envs.tabletop import FAMILIES, PROPRIO_DIM, Expert, TabletopEnv, tasks_of
from actors.envs.tabletop.predicates import task_success
from actors.envs.tabletop.sim import Sim
from actors.envs.tabletop.tasks import (
    JITTER, X_RANGE, Y_RANGE, YAW_JITTER, get_task, nominal_layout, sample_layout,
)
from common.config.schema import TabletopEnvConfig


@pytest.fixture(scope="module")
def env():
    e = TabletopEnv(TabletopEnvConfig())
    yield e
    e.close()


def _state(env):
    return env.sim.data.qpos.copy(), env.sim.data.qvel.copy()


def test_every_family_has_four_tasks_with_instructions_and_limits(env):
    specs = env.tasks()
    assert all(isinstance(s, TaskSpec) for s in specs)
    for family in FAMILIES:
        mine = [s for s in specs if s.family == family]
        assert len(mine) >= 4, family
        assert all(s.task_id.startswith(f"{family}/") for s in mine)
    assert len({s.instruction for s in specs}) == len(specs)
    limits = {s.family: s.max_steps for s in specs}
    assert limits["long"] > limits["spatial"] and min(limits.values()) >= 60


def test_suite_and_task_selection():
    assert [s.family for s in TabletopEnv(TabletopEnvConfig(suite="goal")).tasks()] == ["goal"] * 4
    picked = TabletopEnv(TabletopEnvConfig(tasks=["long/1", "spatial/2"], max_steps=33)).tasks()
    assert [(s.task_id, s.max_steps) for s in picked] == [("long/1", 33), ("spatial/2", 33)]


def test_train_and_heldout_ids_are_disjoint_ranges():
    env = TabletopEnv(TabletopEnvConfig(num_train_init_states=7, num_heldout_init_states=3))
    train, held = env.train_init_state_ids("object/1"), env.heldout_init_state_ids("object/1")
    assert train == list(range(7)) and held == [7, 8, 9]
    assert not set(train) & set(held)


def test_layouts_are_pure_valid_and_not_already_solved():
    sims = {}
    for task in tasks_of("all"):
        sim = sims.setdefault(task.family, Sim(task.scene, 64, False))
        layouts = [sample_layout(task, i) for i in range(30)]
        assert layouts[5] == sample_layout(task, 5)           # pure function
        assert len({str(sorted(lay.objects.items())) for lay in layouts}) == 30
        for lay in layouts:
            for x, y, _ in lay.objects.values():
                assert X_RANGE[0] <= x <= X_RANGE[1] and Y_RANGE[0] <= y <= Y_RANGE[1]
            sim.set_layout(lay)
            assert not task_success(sim, task), (task.task_id, lay)


@pytest.mark.parametrize("layout", ["nominal", "uniform"])
def test_spatial_relation_holds_in_every_layout(layout):
    for i in range(20):
        left = sample_layout(get_task("spatial/0"), i, layout).objects   # cube_a left of b
        front = sample_layout(get_task("spatial/2"), i, layout).objects  # in front of b
        assert left["cube_a"][1] < left["cube_b"][1] - 0.08
        assert front["cube_a"][0] > front["cube_b"][0] + 0.08


def test_nominal_layouts_jitter_one_scene_and_uniform_ones_spread():
    for task in tasks_of("all"):
        nominal = nominal_layout(task)
        spread = {"nominal": [], "uniform": []}
        for layout in spread:
            for i in range(40):
                lay = sample_layout(task, i, layout)
                for name, (x, y, yaw) in lay.objects.items():
                    spread[layout].append(max(abs(x - nominal[name][0]),
                                              abs(y - nominal[name][1])))
                    if layout == "nominal":
                        assert abs(yaw) <= YAW_JITTER
                for name, (x, y) in lay.receptacles.items():
                    spread[layout].append(max(abs(x - nominal[name][0]),
                                              abs(y - nominal[name][1])))
        assert max(spread["nominal"]) <= JITTER + 1e-9, task.task_id
        if task.family != "goal":                   # the goal family is one scene in both
            assert max(spread["uniform"]) > 3 * JITTER, task.task_id
    with pytest.raises(ValueError, match="unknown tabletop layout"):
        sample_layout(get_task("goal/0"), 0, "scattered")


def test_same_task_and_init_state_give_bit_identical_states(env):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (15, 7))
    obs_a = env.reset("long/3", 11)
    q_a = _state(env)
    run_a = [env.step(a).obs["images"] for a in actions]
    end_a = _state(env)
    env.reset("object/2", 4)                      # another scene and state in between
    other = TabletopEnv(TabletopEnvConfig())              # and a fresh env
    for e in (env, other):
        obs_b = e.reset("long/3", 11)
        assert all(np.array_equal(x, y) for x, y in zip(q_a, _state(e)))
        assert np.array_equal(obs_a["images"], obs_b["images"])
        assert np.array_equal(obs_a["proprio"], obs_b["proprio"])
        run_b = [e.step(a).obs["images"] for a in actions]
        assert all(np.array_equal(x, y) for x, y in zip(run_a, run_b))
        assert all(np.array_equal(x, y) for x, y in zip(end_a, _state(e)))
    other.close()


def test_images_differ_between_init_states_and_tasks(env):
    a = env.reset("goal/0", 0)["images"]
    b = env.reset("goal/0", 1)["images"]
    c = env.reset("spatial/0", 0)["images"]
    assert np.abs(a.astype(int) - b).sum() > 1000
    assert np.abs(a.astype(int) - c).sum() > 1000


def test_observation_shapes_and_dtypes():
    env = TabletopEnv(TabletopEnvConfig(image_size=128, wrist_camera=True))
    obs = env.reset("spatial/1", 0)
    assert obs["images"].shape == (2, 128, 128, 3) and obs["images"].dtype == np.uint8
    assert obs["proprio"].shape == (PROPRIO_DIM,) and obs["proprio"].dtype == np.float32
    assert obs["images"][0].std() > 10 and not np.array_equal(obs["images"][0], obs["images"][1])
    result = env.step(np.zeros(7), render=False)
    assert isinstance(result, StepResult) and result.obs is None
    assert not result.done and not result.success
    again = env.observe()
    assert again["images"].shape == (2, 128, 128, 3)
    env.close()
    small = TabletopEnv(TabletopEnvConfig())
    assert small.reset("goal/2", 3)["images"].shape == (1, 64, 64, 3)
    small.close()


def test_actions_move_turn_and_close_the_gripper(env):
    p0 = env.reset("goal/0", 0)["proprio"].copy()
    for _ in range(5):
        obs = env.step(np.array([1, -1, 0, 0, 0, 0.5, -1], dtype=np.float32)).obs
    p1 = obs["proprio"]
    assert 0.06 < p1[0] - p0[0] < 0.11 and 0.06 < p0[1] - p1[1] < 0.11   # ~2 cm per step
    assert abs(p1[2] - p0[2]) < 0.01                                      # dz = 0: holds height
    assert 0.25 < p1[5] - p0[5] < 0.4                                     # yaw: 0.075 rad per step
    assert p1[6] > 0.035 and p1[7] > 0.035                                # open
    for _ in range(5):
        obs = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0])).obs
    assert obs["proprio"][6] < 0.005 and obs["proprio"][7] < 0.005        # closed on nothing


def test_grasp_is_friction_not_a_weld(env):
    """Carry the red cube with the expert, then open the fingers in the air: it falls."""
    env.reset("goal/0", 2)
    expert = Expert(env)
    while expert.phase != "carry":
        env.step(expert.act(), render=False)
    cube = env.sim.pos("red_cube")
    assert cube[2] > 0.07 and env.sim.touching_fingers("red_cube")
    for _ in range(8):
        env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]), render=False)
    assert env.sim.pos("red_cube")[2] < 0.03


def test_step_limit_ends_the_episode():
    env = TabletopEnv(TabletopEnvConfig(tasks=["spatial/0"], max_steps=4))
    env.reset("spatial/0", 0)
    results = [env.step(np.zeros(7), render=False) for _ in range(4)]
    assert [r.done for r in results] == [False, False, False, True]
    assert not results[-1].success
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(7))
    env.close()


def test_bad_input_is_named(env):
    with pytest.raises(KeyError, match="nope/0"):
        env.reset("nope/0", 0)
    with pytest.raises(ValueError, match="init_state_id"):
        env.reset("goal/0", -1)
    env.reset("goal/0", 0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan] * 7))
    with pytest.raises(ValueError, match="suite"):
        TabletopEnv(TabletopEnvConfig(suite="kitchen"))
    with pytest.raises(KeyError, match="spatial/9"):
        TabletopEnv(TabletopEnvConfig(tasks=["spatial/9"]))
    fresh = TabletopEnv(TabletopEnvConfig())
    with pytest.raises(RuntimeError, match="reset"):
        fresh.observe()
    with pytest.raises(RuntimeError, match="reset"):
        Expert(fresh).act()
