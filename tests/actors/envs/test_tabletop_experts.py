"""Success rates of the tabletop suite: the noiseless scripted expert solves >= 95 % of 20
training initial states of every task; a uniformly random policy solves < 10 % (the tasks
are not trivial). Unrendered, to keep the suite fast."""
import numpy as np
import pytest

from actors.envs.tabletop import FAMILIES, Expert, TabletopEnv
from common.config.schema import TabletopEnvConfig


def _run(env: TabletopEnv, task_id: str, init_state_id: int, policy) -> tuple[bool, int]:
    env.reset(task_id, init_state_id)
    while True:
        result = env.step(policy(), render=False)
        if result.done:
            return result.success, env.steps


@pytest.mark.slow
def test_noiseless_expert_solves_95_percent_of_20_training_states_per_task():
    env = TabletopEnv(TabletopEnvConfig(image_size=16))   # reset() renders; keep that cheap
    lengths = {}
    try:
        for spec in env.tasks():
            ids = env.train_init_state_ids(spec.task_id)[:20]
            outcomes = []
            for i in ids:
                expert = Expert(env)
                outcomes.append(_run(env, spec.task_id, i, expert.act))
            rate = np.mean([ok for ok, _ in outcomes])
            assert rate >= 0.95, f"{spec.task_id}: expert success {rate:.2f}"
            lengths[spec.task_id] = np.mean([n for _, n in outcomes])
            # the step limit leaves the expert at least 1.5x its typical length, and not
            # much more: a failed episode costs no more than it must
            assert lengths[spec.task_id] <= spec.max_steps / 1.5, (spec.task_id, lengths)
            assert lengths[spec.task_id] >= spec.max_steps / 3, (spec.task_id, lengths)
    finally:
        env.close()
    assert all(lengths[f"long/{i}"] > 80 for i in range(4)), lengths   # two chained goals


@pytest.mark.slow
def test_uniform_random_policy_mostly_fails():
    env = TabletopEnv(TabletopEnvConfig(image_size=16))
    rng = np.random.default_rng(0)
    per_family = {f: [] for f in FAMILIES}
    try:
        for spec in env.tasks():
            for i in env.train_init_state_ids(spec.task_id)[:8]:
                ok, _ = _run(env, spec.task_id, i, lambda: rng.uniform(-1, 1, 7))
                per_family[spec.family].append(ok)
    finally:
        env.close()
    rates = {f: float(np.mean(v)) for f, v in per_family.items()}
    assert all(r < 0.1 for r in rates.values()), rates
