"""ManiSkill3 (SAPIEN 3) as a simulator: the pure parts (fast, no ManiSkill needed), then,
marked ``maniskill``: `pushcut setup maniskill`, a real PickCube env in its own interpreter
behind a subprocess env worker, a `pushcut actor` process streaming PickCube episodes into a
`pushcut store` process, and `pushcut demos` recording ManiSkill's motion-planner demos.
The GPU path (physx_cuda, GPU rendering) runs only where a CUDA device exists."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from actors.env_workers import make_workers
from actors.envs import env_spec
from actors.envs import maniskill as ms
from actors.envs.maniskill_tasks import SUITES, TASKS
from common.config import load_config
from common.dataset import read_dataset
from tests.actors.helpers import REPO, actor_group_into_store, pushcut

SIZE = 64
TASK = "PickCube-v1"


def maniskill_cfg(*overrides: str):
    return load_config(["env=maniskill", f"env.image_size={SIZE}", *overrides]).env


# ---------------------------------------------------------------------------- pure parts

def test_registry_entry_config_and_tasks():
    spec = env_spec("maniskill")
    cfg = maniskill_cfg()
    assert spec.obs_shapes(cfg) == {"images": (1, SIZE, SIZE, 3), "proprio": (ms.PROPRIO_DIM,)}
    assert set(SUITES["cubes"]) <= set(spec.tasks) and "planned" in spec.suites
    assert all(TASKS[t].planner for t in SUITES["planned"]) and TASK in SUITES["planned"]
    assert ms.selected_tasks(cfg) == list(SUITES["cubes"])
    assert ms.selected_tasks(maniskill_cfg(f"env.tasks=[{TASK}]")) == [TASK]
    with pytest.raises(ValueError, match="unknown ManiSkill task"):
        ms.selected_tasks(maniskill_cfg("env.tasks=[Nope-v1]"))
    with pytest.raises(Exception, match="sim_backend"):
        maniskill_cfg("env.sim_backend=mujoco")


def test_action_mapping_and_proprio_rotation():
    out = ms.to_maniskill_action(np.array([2.0, -0.5, 0, 0, 0, 0.3, 1.0]))
    np.testing.assert_allclose(out, [1.0, -0.5, 0, 0, 0, 0.3, -1.0])   # clipped; gripper flipped
    half = np.sqrt(0.5)
    np.testing.assert_allclose(ms.quat_to_axis_angle(np.array([half, half, 0, 0])),
                               [np.pi / 2, 0, 0], atol=1e-9)            # wxyz: 90° about x
    assert not ms.quat_to_axis_angle(np.array([1.0, 0, 0, 0])).any()


def test_setup_refuses_other_arguments_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "setup", "mujoco"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("usage: pushcut setup libero | maniskill    "
                                   "(install and check a simulator)")


# ---------------------------------------------------------------------------- real ManiSkill

@pytest.fixture(scope="module")
def maniskill_ready():
    """`pushcut setup maniskill`: a fresh machine installs; later runs verify and render."""
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "setup", "maniskill"],
                          cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "one PickCube frame rendered" in proc.stderr


@pytest.mark.maniskill
def test_setup_refuses_in_one_line_when_nothing_renders(maniskill_ready, monkeypatch):
    """No Vulkan driver (the ICD file names none): the render check says why in one line."""
    from actors.envs import maniskill_setup as setup
    python, environ = setup.interpreter()
    monkeypatch.setattr(setup, "interpreter", lambda: (
        python, {**environ, "VK_ICD_FILENAMES": "/nonexistent/icd.json"}))
    with pytest.raises(setup.SetupError) as info:
        setup.check_render(timeout_s=600)
    text = str(info.value)
    assert text.startswith("ManiSkill cannot render a frame: ") and "\n" not in text


@pytest.fixture(scope="module")
def worker(maniskill_ready):
    """A real PickCube env in the ManiSkill interpreter, behind a subprocess env worker."""
    w, = make_workers(maniskill_cfg(f"env.tasks=[{TASK}]", "env.max_steps=12",
                                    "env.num_train_init_states=20"), 1, 0, False)
    yield w
    w.close()


@pytest.mark.maniskill
def test_env_worker_runs_in_the_maniskill_interpreter(worker):
    python, _ = env_spec("maniskill").elsewhere()
    assert worker.interpreter[0] == python != sys.executable
    spec, = worker.tasks()
    assert spec.task_id == TASK and spec.max_steps == 12 and "cube" in spec.instruction
    train, heldout = worker.train_init_state_ids(TASK), worker.heldout_init_state_ids(TASK)
    assert train == list(range(20)) and heldout == list(range(20, 70))


@pytest.mark.maniskill
def test_reset_is_a_pure_function_of_task_and_seed(worker):
    a = worker.reset(TASK, 3)
    assert a["images"].shape == (1, SIZE, SIZE, 3) and a["images"].dtype == np.uint8
    assert a["images"].std() > 10                      # a rendered scene, not a blank frame
    assert a["proprio"].shape == (ms.PROPRIO_DIM,) and a["proprio"][8:].any()   # the goal
    other = worker.reset(TASK, 4)
    assert not np.array_equal(other["proprio"][8:], a["proprio"][8:])   # another layout
    worker.step(np.array([0.5, 0, 0, 0, 0, 0, 1.0]), render=False)
    b = worker.reset(TASK, 3)
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_allclose(a["proprio"], b["proprio"], atol=1e-6)


@pytest.mark.maniskill
def test_steps_render_only_when_asked_move_and_stop_at_the_limit(worker):
    start = worker.reset(TASK, 0)["proprio"]
    for i in range(12):
        res = worker.step(np.array([0, 0, 1.0, 0, 0, 0, -1.0]), render=(i == 5))
        assert (res.obs is not None) == (i == 5) and not res.success
        if i == 5:
            moved = res.obs["proprio"]
    assert moved[2] > start[2] + 0.05                  # +dz lifts the TCP (up to 10 cm a step)
    assert res.done                                    # env.max_steps=12
    with pytest.raises(Exception, match="episode is over"):
        worker.step(np.zeros(7))


@pytest.mark.maniskill
@pytest.mark.slow
def test_actor_process_streams_pickcube_episodes_into_store(maniskill_ready, tmp_path):
    """`pushcut actor` env=maniskill (one subprocess worker, real SAPIEN) -> `pushcut store`."""
    group = actor_group_into_store(
        tmp_path, "maniskill", "env=maniskill", f"env.tasks=[{TASK}]", "env.max_steps=20",
        f"env.image_size={SIZE}", f"+model.kwargs.image_size={SIZE}",
        f"+model.kwargs.proprio_dim={ms.PROPRIO_DIM}", timeout_s=900)
    assert len(group) == 2
    assert group[0].init_state_id == group[1].init_state_id < 1000   # one GRPO group, training
    for traj in group:
        assert traj.task_id == TASK and traj.instruction == TASKS[TASK].instruction
        assert traj.length == 20 or traj.success       # 20 steps unless it succeeded first
        T = -(-traj.length // 8)                       # one rendered decision per chunk of C=8
        assert traj.images.shape == (T, 1, SIZE, SIZE, 3) and traj.images.std() > 10
        assert traj.proprio.shape == (T, ms.PROPRIO_DIM)
        assert traj.actions.shape == (T, 8, 7) and traj.valid_mask.sum() == traj.length * 7


@pytest.mark.maniskill
@pytest.mark.slow
def test_demos_from_the_motion_planner(maniskill_ready, tmp_path):
    """`pushcut demos env=maniskill`: the planner's path tracked with the delta-pose
    controller, recorded in pushcut's format; every kept demo succeeded."""
    out = tmp_path / "demos"
    proc = pushcut("demos", "env=maniskill", f"env.tasks=[{TASK}]", f"env.image_size={SIZE}",
                   "demos.per_task=2", "demos.obs_stride=8", f"demos.out={out}",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    trajs = list(read_dataset(out))
    assert len(trajs) == 2 and "failed" in stdout
    for traj in trajs:
        assert traj.success and traj.task_id == TASK and traj.policy_version == -1
        assert traj.init_state_id < 1000 and traj.length <= TASKS[TASK].max_steps
        assert traj.actions.shape[1:] == (8, 7) and np.abs(traj.actions).max() <= 1.0
        assert traj.proprio.shape[1] == ms.PROPRIO_DIM and traj.images.std() > 10
        grip = traj.actions.reshape(-1, 7)[:traj.length, 6]
        assert grip[0] < 0 < grip.max()                # opens, then closes on the cube


def _cuda_in_maniskill() -> bool:
    """A CUDA device that the ManiSkill interpreter's torch sees."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        python, environ = env_spec("maniskill").elsewhere()
    except RuntimeError:
        return False
    code = "import torch; print(torch.cuda.is_available())"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **environ})
    return out.stdout.strip() == "True"


@pytest.mark.maniskill
@pytest.mark.skipif(not _cuda_in_maniskill(), reason="needs a CUDA device and a CUDA torch "
                    "in the ManiSkill interpreter")
def test_gpu_simulation_and_rendering(maniskill_ready):
    w, = make_workers(maniskill_cfg(f"env.tasks=[{TASK}]", "env.sim_backend=physx_cuda",
                                    "env.render_backend=gpu", "env.max_steps=4"), 1, 0, False)
    try:
        obs = w.reset(TASK, 0)
        assert obs["images"].shape == (1, SIZE, SIZE, 3) and obs["images"].std() > 10
        res = w.step(np.array([0, 0, 1.0, 0, 0, 0, -1.0]), render=True)
        assert res.obs["proprio"][2] > obs["proprio"][2]
    finally:
        w.close()
