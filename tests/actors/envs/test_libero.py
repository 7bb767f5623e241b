"""The real LIBERO env (actors/envs/libero.py): preprocessing and splits (fast, pure), then,
marked ``libero``: `pushcut setup libero`, a `pushcut actor` process streaming a real
libero_spatial episode from a subprocess env worker into a `pushcut store` process, and
success through the simulator state arriving in the store with success = True.

One in-process LiberoEnv serves the module (building one costs ~10 s and 2-3 GB)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from actors.envs import libero as lib
from common.config import load_config
from tests.actors.helpers import REPO, StoreProcess, actor_group_into_store, wait_for

SIZE = 128
TASK = "libero_spatial/0"


def libero_cfg(*overrides: str):
    return load_config(["env=libero", f"env.image_size={SIZE}", "env.render_size=null",
                        *overrides]).env


# ---------------------------------------------------------------------------- pure parts

def test_preprocessing_rotates_crops_and_resizes():
    raw = np.zeros((40, 40, 3), np.uint8)
    raw[0, 0] = 255                                  # bottom-left as rendered (OpenGL order)
    out = lib.preprocess_image(raw, 40)
    assert out.shape == (40, 40, 3) and out[39, 39, 0] == 255 and out[0, 0, 0] == 0
    grad = np.repeat(np.arange(0, 200, 2, dtype=np.uint8)[:, None, None], 100, 1).repeat(3, 2)
    small = lib.preprocess_image(grad, 50)
    assert small.shape == (50, 50, 3) and small[0, 0, 0] > small[-1, 0, 0]  # rows reversed
    cropped = lib.preprocess_image(grad, 50, crop_scale=0.81)   # keeps the middle 90 % side
    assert cropped[0, 0, 0] < small[0, 0, 0] and cropped[-1, 0, 0] > small[-1, 0, 0]


def test_proprio_is_pos_axis_angle_gripper():
    half = np.sqrt(0.5)
    raw = {"robot0_eef_pos": np.array([0.1, 0.2, 0.3]),
           "robot0_eef_quat": np.array([half, 0.0, 0.0, half]),   # 90 degrees about x
           "robot0_gripper_qpos": np.array([0.04, -0.04])}
    p = lib.proprio_from(raw)
    assert p.dtype == np.float32 and p.shape == (lib.PROPRIO_DIM,)
    np.testing.assert_allclose(p, [0.1, 0.2, 0.3, np.pi / 2, 0, 0, 0.04, -0.04], rtol=1e-6)
    assert np.all(lib.quat_to_axis_angle(np.array([0.0, 0.0, 0.0, 1.0])) == 0)


def test_init_state_split_is_disjoint_and_validated():
    train, heldout = lib.init_state_split(40, 10)
    assert train == list(range(40)) and heldout == list(range(40, 50))
    assert not set(train) & set(heldout)
    with pytest.raises(ValueError, match=r"num_train_init_states \(45\) \+ "
                                         r"env.num_heldout_init_states \(10\)"):
        lib.init_state_split(45, 10)


def test_task_ids_and_worker_count():
    assert lib.parse_task_id("libero_10/7") == ("libero_10", 7)
    for bad in ("libero_11/0", "libero_spatial", "libero_spatial/x", "spatial/0"):
        with pytest.raises(ValueError, match="bad LIBERO task_id"):
            lib.parse_task_id(bad)
    gib = 1 << 30
    assert lib.libero_workers_that_fit(8, available_bytes=20 * gib) == 6   # (20 - 2) // 3
    assert lib.libero_workers_that_fit(4, available_bytes=20 * gib) == 4
    assert lib.libero_workers_that_fit(4, available_bytes=1 * gib) == 1
    assert lib.placement_seed(TASK, 3) == lib.placement_seed(TASK, 3) != lib.placement_seed(TASK, 4)


# ---------------------------------------------------------------------------- real LIBERO

@pytest.fixture(scope="module")
def libero_ready():
    """`pushcut setup libero`: a fresh machine installs and downloads; later runs verify."""
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "setup", "libero"], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def env(libero_ready):
    e = lib.LiberoEnv(libero_cfg(f"env.tasks=[{TASK}]", "env.max_steps=30"))
    yield e
    e.close()


def place_goal_object(env: lib.LiberoEnv) -> None:
    """Satisfy an ("on", object, target) goal through the simulator state: the object's free
    joint is put 3 cm above the target's body, at rest."""
    (pred, obj, target), = env.goal_predicates()
    assert pred == "on"
    sim = env.sim
    joint = sim.get_object(obj).joints[-1]
    qpos = sim.sim.data.get_joint_qpos(joint).copy()
    qpos[:3] = sim.sim.data.body_xpos[sim.obj_body_id[target]] + [0.0, 0.0, 0.03]
    sim.sim.data.set_joint_qpos(joint, qpos)
    sim.sim.data.set_joint_qvel(joint, np.zeros(6))
    sim.sim.forward()


@pytest.mark.libero
def test_tasks_instructions_and_disjoint_init_states(env):
    spatial = lib.LiberoEnv(libero_cfg("env.suite=libero_spatial"))
    specs = spatial.tasks()
    assert [s.task_id for s in specs] == [f"libero_spatial/{i}" for i in range(10)]
    assert specs[0].instruction == ("pick up the black bowl between the plate and the ramekin "
                                    "and place it on the plate")
    assert {s.max_steps for s in specs} == {512}
    assert lib.LiberoEnv(libero_cfg("env.suite=libero_90")).spec("libero_90/89").family \
        == "libero_90"
    train, heldout = env.train_init_state_ids(TASK), env.heldout_init_state_ids(TASK)
    assert len(train) == 40 and len(heldout) == 10 and not set(train) & set(heldout)
    # the states themselves differ too: no held-out state is a training state
    env.reset(TASK, 0)
    states = env.init_states
    assert len(states) == lib.NUM_INIT_STATES
    assert not any(np.array_equal(states[h], states[t]) for h in heldout for t in train)
    with pytest.raises(ValueError, match="sum to at most the 50 init states"):
        lib.LiberoEnv(libero_cfg("env.num_train_init_states=45"))


@pytest.mark.libero
def test_reset_is_a_pure_function_of_task_and_init_state(env):
    a = env.reset(TASK, 3)
    assert a["images"].shape == (1, SIZE, SIZE, 3) and a["images"].dtype == np.uint8
    assert a["images"].std() > 10                    # a rendered scene, not a blank frame
    assert a["proprio"].shape == (lib.PROPRIO_DIM,)
    env.reset(TASK, 5)
    env.step(np.array([0.5, 0, 0, 0, 0, 0, 1.0]), render=False)
    b = env.reset(TASK, 3)
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["proprio"], b["proprio"])


@pytest.mark.libero
def test_steps_render_only_when_asked_and_stop_at_the_limit(env):
    env.reset(TASK, 0)
    start = env.observe()["proprio"][:3]
    moved = None
    for i in range(30):
        res = env.step(np.array([0, 0, 1.0, 0, 0, 0, -1.0]), render=(i == 9))
        assert (res.obs is not None) == (i == 9) and not res.success
        if i == 9:
            moved = res.obs["proprio"][:3]
    assert moved[2] > start[2] + 0.02                # +dz moves the end effector up
    assert res.done and env.steps == 30              # env.max_steps=30
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(np.zeros(7))
    env.reset(TASK, 0)
    with pytest.raises(ValueError, match="7 finite floats"):
        env.step(np.zeros(6))


class GoalPlacedEnv:
    """The module's LiberoEnv, with each reset followed by placing the goal object."""

    def __init__(self, env: lib.LiberoEnv):
        self.env = env

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, task_id, init_state_id):
        self.env.reset(task_id, init_state_id)
        assert not self.env.check_success()
        place_goal_object(self.env)
        return self.env.observe()


@pytest.mark.libero
@pytest.mark.slow
def test_success_through_sim_state_arrives_in_store(env, tmp_path):
    from actors.actor import Actor
    from actors.rollout import VectorRollout
    from actors.scheduler import TaskScheduler
    from common.models import build_policy
    from common.transport.trajectories import TrajectorySender

    model_cfg = load_config(["model.preset=micro", f"+model.kwargs.image_size={SIZE}"]).model
    torch.manual_seed(0)
    policy = build_policy(model_cfg).eval()
    placed = GoalPlacedEnv(env)
    tasks = [env.spec(TASK)]
    scheduler = TaskScheduler(tasks, {TASK: env.train_init_state_ids(TASK)}, seed=0)
    actor = Actor(VectorRollout([placed], policy), scheduler, actor_id="libero-success",
                  group_size=2, temperature=1.0)
    store = StoreProcess(tmp_path / "store").start()
    try:
        with TrajectorySender(store.address, resend_after_s=2.0) as sender:
            assert actor.run_round(sender.send, max_groups=1) == 1
            assert sender.flush(60), "the store did not acknowledge the trajectories"
        group = wait_for(lambda: list(store.groups().values()), 60, "the group in the store")[0]
    finally:
        store.stop()
    assert len(group) == 2
    for traj in group:
        assert traj.success is True and traj.task_id == TASK
        assert traj.length <= 8                      # the bowl lands on the plate at once
        assert traj.images.shape == (1, 1, SIZE, SIZE, 3)    # so one decision was enough
        assert traj.init_state_id in env.train_init_state_ids(TASK)


@pytest.mark.libero
@pytest.mark.slow
def test_actor_process_streams_libero_episode_into_store(libero_ready, tmp_path):
    """`pushcut actor` with env=libero (one subprocess env worker) -> `pushcut store`."""
    group = actor_group_into_store(
        tmp_path, "libero", "env=libero", f"env.tasks=[{TASK}]", "env.max_steps=20",
        f"env.image_size={SIZE}", "env.render_size=null", f"+model.kwargs.image_size={SIZE}")
    instruction = lib.LiberoEnv(libero_cfg()).spec(TASK).instruction
    assert len(group) == 2
    for traj in group:
        assert traj.task_id == TASK and traj.instruction == instruction
        assert traj.init_state_id < 40 and traj.policy_version == 0
        assert traj.length == 20 or traj.success       # 20 steps unless it succeeded first
        assert traj.images.shape == (3, 1, SIZE, SIZE, 3)    # ceil(20 / C=8) decisions
        assert traj.proprio.shape == (3, lib.PROPRIO_DIM)
        assert traj.actions.shape == (3, 8, 7) and traj.valid_mask.sum() == traj.length * 7
