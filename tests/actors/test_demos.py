"""`pushcut demos` (actors/demos.py): expert demonstrations recorded into a dataset."""
import math

import numpy as np
import pytest

from actors.demos import chunk_episode, main, record_demo
from actors.envs.tabletop import Expert, TabletopEnv
from common.config import ConfigError, load_config
from common.dataset import read_dataset, read_index
from common.wire.trajectory import EXPERT_VERSION


def _cfg(out, *extra):
    return load_config([f"demos.out={out}", "demos.per_task=2", "demos.obs_stride=8",
                        "env.tasks=[spatial/1,goal/3]", *extra])


def test_chunk_episode_pads_and_masks():
    actions = np.arange(10 * 7, dtype=np.float32).reshape(10, 7)
    chunks, valid = chunk_episode(actions, 4)
    assert chunks.shape == (3, 4, 7) and valid.shape == (3, 28)
    assert np.array_equal(chunks.reshape(12, 7)[:10], actions) and not chunks[2, 2:].any()
    assert valid.sum() == 70 and not valid[2, 14:].any()


def test_demos_are_successful_expert_records_that_replay(tmp_path):
    out = tmp_path / "demos"
    assert main(_cfg(out), []) == 0
    records = list(read_dataset(out))
    assert [r.task_id for r in records] == ["spatial/1"] * 2 + ["goal/3"] * 2
    env = TabletopEnv(load_config([]).env)
    for r in records:
        assert r.is_expert and r.policy_version == EXPERT_VERSION and r.success
        assert r.group_size == 1 and r.group_id == r.trajectory_id
        T = math.ceil(r.length / 8)
        assert r.images.shape == (T, 1, 64, 64, 3) and r.proprio.shape == (T, 8)
        assert r.actions.shape == (T, 8, 7) and r.action_tokens.shape == (T, 0)
        assert r.valid_mask.sum() == r.length * 7
        assert r.init_state_id in env.train_init_state_ids(r.task_id)
        # the first decision's observation is the reset observation; replaying the
        # recorded actions reproduces the success (the suite is deterministic)
        first = env.reset(r.task_id, r.init_state_id)
        assert np.array_equal(first["images"], r.images[0])
        steps = r.actions.reshape(-1, 7)[:r.length]
        results = [env.step(a, render=(k + 1) % 8 == 0) for k, a in enumerate(steps)]
        assert results[-1].success and results[-1].done
        assert np.array_equal(results[7].obs["images"], r.images[1])
    env.close()
    assert len({r.init_state_id for r in records[:2]}) == 2          # cycles through states
    # each index line holds the demo's fingerprint: the expert grasps and places
    prints = [line["fingerprint"] for line in read_index(out)]
    assert [p["strategy"] for p in prints] == ["grasp_and_place"] * 4
    assert [p["success_step"] for p in prints] == [r.length for r in records]


def test_dense_demos_observe_every_step(tmp_path):
    out = tmp_path / "dense"
    assert main(_cfg(out, "demos.per_task=1", "env.tasks=[goal/3]", "demos.obs_stride=1"),
                []) == 0
    (r,) = list(read_dataset(out))
    assert r.success and r.images.shape[0] == r.length and r.actions.shape == (r.length, 1, 7)
    env = TabletopEnv(load_config([]).env)
    env.reset(r.task_id, r.init_state_id)
    results = [env.step(a) for a in r.actions[:, 0]]
    env.close()
    assert results[-1].success
    assert all(np.array_equal(results[k].obs["images"], r.images[k + 1])
               for k in range(0, r.length - 1, 5))


def test_refuses_to_overwrite_and_non_tabletop(tmp_path):
    out = tmp_path / "demos"
    assert main(_cfg(out, "demos.per_task=1", "env.tasks=[goal/3]"), []) == 0
    assert len(read_index(out)) == 1
    assert main(_cfg(out), []) == 2
    assert len(read_index(out)) == 1
    assert main(load_config([f"demos.out={tmp_path / 'x'}", "env=libero"]), []) == 2
    for bad in ("demos.obs_stride=0", "demos.label=noisy"):   # refused by the fields' rules
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            _cfg(tmp_path / "y", bad)


def test_more_demos_than_training_layouts_warns_and_repeats_layouts(tmp_path, capsys):
    out = tmp_path / "demos"
    assert main(_cfg(out, "demos.per_task=3", "env.tasks=[goal/3]",
                     "env.num_train_init_states=2"), []) == 0
    assert "demos.per_task=3 > env.num_train_init_states=2" in capsys.readouterr().err
    assert sorted(r.init_state_id for r in read_dataset(out)) == [0, 0, 1]
    assert main(_cfg(tmp_path / "d2", "demos.per_task=2", "env.tasks=[goal/3]"), []) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.slow
def test_noisy_demos_still_fill_every_task(tmp_path):
    out = tmp_path / "noisy"
    assert main(_cfg(out, "demos.noise=0.3", "env.tasks=[long/0]"), []) == 0
    records = list(read_dataset(out))
    assert len(records) == 2 and all(r.success for r in records)
    clean = tmp_path / "clean"
    assert main(_cfg(clean, "demos.per_task=1", "env.tasks=[long/0]"), []) == 0
    reference = next(read_dataset(clean))
    assert reference.init_state_id == records[0].init_state_id
    assert not np.array_equal(reference.actions[:2], records[0].actions[:2])   # noise shows


def test_clean_labels_record_the_expert_intent_while_noise_moves_the_env(tmp_path):
    """DART: with demos.label=clean the env follows the noisy actions while the record holds
    the expert's noiseless ones, step for step."""
    cfg = _cfg(tmp_path / "d", "env.tasks=[goal/3]")
    env = TabletopEnv(cfg.env, seed=0)
    try:
        spec = env.tasks()[0]
        executed, labels = [], []

        class Spy(Expert):
            def act(self):
                a = super().act()
                executed.append(a)
                labels.append(self.clean_action)
                return a

        traj = record_demo(env, Spy(env, noise=0.2, seed=1), spec, 0, 1, "t", label="clean")
    finally:
        env.close()
    recorded = traj.actions.reshape(-1, 7)[:traj.length]
    np.testing.assert_array_equal(recorded, np.stack(labels))
    assert np.abs(np.stack(executed) - recorded).max() > 0.05     # the env saw other actions
    assert np.abs(recorded).max() <= 1.0
