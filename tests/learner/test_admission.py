"""learner/admission.py: the declaration a learner makes of its policy, and the groups it sets
aside, each alone with its own reason, whatever its place in the batch; then a real
``pushcut learner`` over a store filled before any declaration."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from common.config import load_config
from common.synthetic import make_trajectory
from common.wire.declaration import TrainingDeclaration
from learner.admission import training_declaration, untrainable_groups
from learner.batch import collate
from learner.filter import Selection
from learner.store import TrajectoryStore
from tests.learner.helpers import TEMPERATURE, micro_policy, sampled_group
from tests.learner.test_learner_process import fill_store, learner_args, run_to_the_end, updates

DECLARED = TrainingDeclaration(num_bins=256, chunk_size=8, action_dim=7, num_views=1,
                               image_size=8, proprio_dim=8, temperatures=(1.6,),
                               policy_version=10, version_margin=3)


def put_group(store: TrajectoryStore, name: str, rng, **kw) -> str:
    kw = {"image_size": 8, "length": 16, "policy_version": 10, **kw}
    for i in range(2):
        store.put(make_trajectory(rng, trajectory_id=f"{name}.{i}", group_id=name, group_size=2,
                                  success=i == 0, **kw))
    return name


def selection(store: TrajectoryStore, names: list[str]) -> Selection:
    return Selection(groups=[store.read_group(n) for n in names],
                     infos=[store.group_info(n) for n in names])


def test_each_untrainable_group_is_set_aside_alone_wherever_it_stands(tmp_path):
    rng = np.random.default_rng(0)
    with TrajectoryStore(str(tmp_path / "store"), accept_expert=True) as store:
        names = [put_group(store, "cold", rng, temperature=0.7),
                 put_group(store, "good", rng),
                 put_group(store, "shape", rng, image_size=32, cameras=2, proprio_dim=17),
                 put_group(store, "future", rng, policy_version=2 ** 63 - 1),
                 put_group(store, "expert", rng, policy_version=-1),
                 put_group(store, "also_good", rng, temperature=1.6 * (1 + 5e-7))]
        expected = {"cold": "temperature_mismatch", "shape": "shape_mismatch",
                    "future": "future_version", "expert": "quarantined"}
        for order in (names, names[::-1]):
            bad = untrainable_groups(selection(store, order), DECLARED, adv_eps=1e-6)
            assert {g: err.reason for g, err in bad.items()} == expected
        assert "sampled at temperature 0.7" in bad["cold"].detail
        assert "expert demonstration" in bad["expert"].detail
        assert untrainable_groups(selection(store, ["good", "also_good"]), DECLARED, 1e-6) == {}
        # what was admitted within the tolerance shares a batch; the batch takes the first's
        batch = collate([store.read_group("good"), store.read_group("also_good")])
        assert batch.temperature == 1.6
        with pytest.raises(ValueError, match="several temperatures"):
            collate([store.read_group("good"), store.read_group("cold")])


def test_where_the_policy_leaves_a_dimension_open_the_batch_keeps_its_most_common_shape(tmp_path):
    rng = np.random.default_rng(1)
    open_obs = dataclasses.replace(DECLARED, num_views=None, image_size=None, proprio_dim=None)
    with TrajectoryStore(str(tmp_path / "store")) as store:
        names = [put_group(store, "wide", rng, image_size=16), put_group(store, "a", rng),
                 put_group(store, "b", rng)]
        bad = untrainable_groups(selection(store, names), open_obs, 1e-6)
    assert list(bad) == ["wide"] and bad["wide"].reason == "shape_mismatch"


def test_the_declaration_of_a_policy():
    cfg = load_config(["algo.temperature=0.7", "learner.checkpoint_every=5"])
    declared = training_declaration(micro_policy(0), cfg, policy_version=3)
    assert declared == TrainingDeclaration(
        num_bins=256, chunk_size=8, action_dim=7, num_views=1, image_size=64, proprio_dim=8,
        temperatures=(0.7,), policy_version=3, version_margin=5)
    # a policy that resizes its images and takes no proprio (OpenVLA-OFT) fixes neither
    resizing = SimpleNamespace(num_bins=256, chunk_size=8, action_dim=7,
                               config=SimpleNamespace(image_size=224))
    declared = training_declaration(resizing, cfg, policy_version=0)
    assert (declared.num_views, declared.image_size, declared.proprio_dim) == (None, None, None)


@pytest.mark.slow
def test_the_learner_trains_the_valid_groups_around_one_sampled_at_another_temperature(tmp_path):
    """Stored before any declaration: 4 valid groups, and in front of them (fresher, the
    same task as a valid one) a group sampled at T=0.7 and one of other shapes. The learner
    sets those two aside with their own reasons and trains on every valid group."""
    good = fill_store(tmp_path / "store", 4)
    rng = np.random.default_rng(7)
    with TrajectoryStore(str(tmp_path / "store")) as store:
        cold = sampled_group(micro_policy(0), rng, [True, False, True, False], policy_version=1,
                             group_id="cold", length=10)
        for t in cold:
            t.temperature = 0.7
            store.put(t)
        for i in range(4):
            store.put(make_trajectory(rng, trajectory_id=f"shape.{i}", group_id="shape",
                                      group_size=4, length=10, policy_version=1,
                                      success=i % 2 == 0, image_size=32, cameras=2,
                                      proprio_dim=17, temperature=TEMPERATURE))
    args = learner_args(tmp_path, **{"learner.max_versions": 2, "learner.torch_threads": 1})
    run_to_the_end(args, tmp_path / "learner.log")
    rows = updates(tmp_path)
    assert [r["policy_version"] for r in rows] == [1, 2]
    assert sorted(g for r in rows for g in r["group_ids"]) == sorted(good)
    assert all(r["quarantined_group_ids"] == [] for r in rows)
    assert rows[-1]["dropped_temperature_mismatch"] == rows[-1]["dropped_shape_mismatch"] == 1
    with TrajectoryStore(str(tmp_path / "store"), readonly=True) as store:
        marks, declared = store.consumption_marks(), store.declaration()
    assert marks == {**{g: "trained" for g in good}, "cold": "temperature_mismatch",
                     "shape": "shape_mismatch"}
    assert declared.policy_version == 2 and declared.temperatures == (TEMPERATURE,)
    assert "group cold temperature_mismatch" in (tmp_path / "learner.log").read_text()
