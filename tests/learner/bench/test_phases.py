"""`pushcut bench update` (learner/bench/phases.py): one configured update, phase by phase,
beside the bare update on the same decisions and its FLOPs."""
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.calibration import Calibration
from common.config import load_config
from common.models import build_policy
from learner.batch import collate
from learner.bench.phases import bare_update, run
from learner.bench.update import make_groups


@pytest.mark.parametrize("epochs,mini_batches", [(1, 2), (2, 2)])
def test_every_optimiser_step_of_every_epoch_is_timed(epochs, mini_batches):
    cfg = load_config(["model.preset=micro", "algo.micro_batch_size=2", "algo.group_size=2",
                       "algo.groups_per_batch=2", f"algo.mini_batches={mini_batches}",
                       f"algo.epochs_per_batch={epochs}", "env.max_steps=3",
                       "learner.torch_threads=1", "bench.seconds=0.2"])
    f = run(cfg, calibration=Calibration(cores=2, gflops_1thread=50.0, cpu="test"))
    eager = f["eager"]
    assert eager["trajectories"] == 4
    assert len(eager["mini_batch_s"]) == epochs * mini_batches
    assert all(s > 0 for s in eager["mini_batch_s"])
    assert eager["proximal_s"] > 0 and eager["collate_s"] > 0 and eager["broadcast_s"] > 0
    # the steps are part of the update they were timed in
    assert sum(eager["mini_batch_s"]) + eager["proximal_s"] <= eager["update_s"] * 1.5
    assert eager["bare_gflop"] > 0 and eager["updates"] >= 2
    assert "compiled" not in f


def test_the_bare_update_makes_as_many_passes_as_the_epochs():
    cfg = load_config(["model.preset=micro", "algo.group_size=2", "env.max_steps=3"])
    policy = build_policy(cfg.model).eval()
    batch = collate(make_groups(policy, cfg, np.random.default_rng(0), trajectories=4))
    flops = []
    for epochs in (1, 2):
        update = bare_update(policy, batch, torch.optim.AdamW(policy.parameters()), 2, 2, epochs)
        with FlopCounterMode(display=False) as counter:
            update()
        flops.append(counter.get_total_flops())
    assert flops[1] == 2 * flops[0] > 0
