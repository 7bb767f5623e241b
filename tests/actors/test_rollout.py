"""VectorRollout on the real tabletop MuJoCo suite: batched decisions, chunked stepping with
sparse rendering, finished envs stop, success flags from the env, log-probs the policy
recomputes, and subprocess env workers; double buffering (two halves of the envs taking
turns) gives the same episodes and keeps the bookkeeping and the crash recovery."""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from actors.env_workers import SubprocessWorker, make_workers  # noqa: E402
from actors.envs.tabletop import TabletopEnv  # noqa: E402
from actors.expert_policy import ExpertPolicy  # noqa: E402
from actors.rollout import EpisodeRequest, VectorRollout, steps_in_background  # noqa: E402
from common.config.schema import ModelConfig, TabletopEnvConfig  # noqa: E402
from common.models import build_policy  # noqa: E402
from common.models.policy import ObsBatch  # noqa: E402

C, D = 8, 7


class CountingEnv:
    """A real TabletopEnv that also counts what the rollout asks of it."""

    def __init__(self, env: TabletopEnv):
        self.env = env
        self.steps = self.renders = 0

    def __getattr__(self, name):
        return getattr(self.env, name)

    def step(self, action, render=True):
        self.steps += 1
        self.renders += bool(render)
        return self.env.step(action, render)


class CountingPolicy:
    """A real policy that also records the batch size of every forward pass."""

    def __init__(self, policy):
        self.policy = policy
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def sample(self, obs, temperature, generator=None):
        self.batches.append(len(obs))
        return self.policy.sample(obs, temperature, generator)


def replay(env: TabletopEnv, task_id: str, init_state_id: int, actions: np.ndarray):
    """Execute actions [N, D] from the initial state -> (steps until done, success)."""
    env.reset(task_id, init_state_id)
    for k, a in enumerate(actions, start=1):
        res = env.step(a, render=False)
        if res.done:
            return k, res.success
    return len(actions), False


def test_expert_episodes_succeed_as_the_env_says():
    envs = [TabletopEnv(TabletopEnvConfig()) for _ in range(3)]
    rollout = VectorRollout(envs, ExpertPolicy(envs))
    requests = [EpisodeRequest(t, i, f"g{n}") for n, (t, i) in
                enumerate([("goal/3", 0), ("spatial/1", 2), ("goal/3", 1), ("object/0", 0)])]
    episodes = rollout.run(requests, temperature=1.6)     # 4 requests on 3 envs: a refill
    assert [e.request for e in episodes] == requests
    fresh = TabletopEnv(TabletopEnvConfig())
    for ep in episodes:
        T = math.ceil(ep.length / C)
        assert ep.images.shape == (T, 1, 64, 64, 3) and ep.tokens.shape == (T, C * D)
        assert ep.valid_mask.sum() == ep.length * D
        assert ep.valid_mask[-1].sum() == (ep.length - (T - 1) * C) * D
        executed = ep.actions.reshape(-1, D)[:ep.length]
        assert replay(fresh, ep.request.task_id, ep.request.init_state_id, executed) == \
            (ep.length, ep.success)
        assert ep.success, f"the scripted expert failed {ep.request}"
        assert ep.length < fresh.tasks()[0].max_steps
        assert ep.timings["env_s"] > 0


def test_one_forward_per_decision_sparse_renders_and_finished_envs_stop():
    envs = [CountingEnv(TabletopEnv(TabletopEnvConfig())) for _ in range(2)]
    policy = CountingPolicy(ExpertPolicy([e.env for e in envs]))
    # goal/3 (short) next to spatial/0 (longer): the short one ends first and stops stepping
    requests = [EpisodeRequest("goal/3", 0, "a"), EpisodeRequest("spatial/0", 0, "b")]
    short, long_ = VectorRollout(envs, policy).run(requests, temperature=1.0)
    t_short, t_long = math.ceil(short.length / C), math.ceil(long_.length / C)
    assert t_short < t_long
    # one forward pass per decision step, over the envs still running
    assert policy.batches == [2] * t_short + [1] * (t_long - t_short)
    for env, ep, T in ((envs[0], short, t_short), (envs[1], long_, t_long)):
        assert env.steps == ep.length          # nothing stepped after the end
        assert env.renders == T - 1 + (ep.length % C == 0)  # only when a decision follows


def test_policy_log_probs_recompute_and_step_limit():
    torch.manual_seed(0)
    policy = build_policy(ModelConfig(preset="micro")).eval()
    env_cfg = TabletopEnvConfig(max_steps=20)          # 3 decisions: 8 + 8 + 4 steps
    envs = [TabletopEnv(env_cfg) for _ in range(2)]
    requests = [EpisodeRequest("spatial/0", 3, "g")] * 2 + [EpisodeRequest("long/2", 1, "h")]
    episodes = VectorRollout(envs, policy).run(requests, 1.6, torch.Generator().manual_seed(1))
    assert len(episodes) == 3
    for ep in episodes:
        assert not ep.success and ep.length == 20
        assert ep.tokens.shape == (3, C * D) and ep.valid_mask[-1].sum() == 4 * D
        np.testing.assert_array_equal(ep.actions, policy.tokens_to_actions(ep.tokens))
        obs = ObsBatch(ep.images, ep.proprio, [ep.instruction] * len(ep.images))
        with torch.no_grad():
            again = policy.log_probs(obs, torch.from_numpy(ep.tokens), 1.6).numpy()
        np.testing.assert_allclose(again, ep.log_probs, atol=1e-5, rtol=0)
    # same group, same start, different samples
    assert not np.array_equal(episodes[0].tokens, episodes[1].tokens)
    np.testing.assert_array_equal(episodes[0].images[0], episodes[1].images[0])


def test_stop_drops_running_episodes_and_video_has_every_step():
    envs = [TabletopEnv(TabletopEnvConfig()) for _ in range(2)]
    policy = CountingPolicy(ExpertPolicy(envs))
    rollout = VectorRollout(envs, policy)
    cut = rollout.run([EpisodeRequest("goal/3", 0, "a")] * 2, 1.0,
                      should_stop=lambda: len(policy.batches) >= 2)
    assert cut == []
    ep, = rollout.run([EpisodeRequest("goal/3", 0, "v", record_video=True)], 1.0)
    assert len(ep.frames) == ep.length + 1 and ep.frames[0].shape == (64, 64, 3)
    np.testing.assert_array_equal(ep.frames[0], ep.images[0, 0])


@pytest.mark.slow
def test_subprocess_workers_match_in_process():
    torch.manual_seed(0)
    policy = build_policy(ModelConfig(preset="micro")).eval()
    env_cfg = TabletopEnvConfig(max_steps=20)
    requests = [EpisodeRequest("object/1", 2, "g")] * 2
    workers = [SubprocessWorker(env_cfg, seed=i, wait=False) for i in range(2)]
    try:
        for w in workers:
            w.wait_ready()
        sub = VectorRollout(workers, policy).run(requests, 1.6, torch.Generator().manual_seed(4))
        assert workers[0].heldout_init_state_ids("object/1") == \
            TabletopEnv(env_cfg).heldout_init_state_ids("object/1")
    finally:
        for w in workers:
            w.close()
    local = VectorRollout([TabletopEnv(env_cfg) for _ in range(2)], policy).run(
        requests, 1.6, torch.Generator().manual_seed(4))
    for a, b in zip(sub, local):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        assert (a.length, a.success) == (b.length, b.success)
    assert all(w.proc.poll() is not None for w in workers)


# ------------------------------------------------------------------ double buffering

def test_halves_take_turns_only_when_double_buffered():
    envs = [TabletopEnv(TabletopEnvConfig()) for _ in range(3)]
    assert VectorRollout(envs, ExpertPolicy(envs)).halves() == [[0, 1, 2]]
    assert VectorRollout(envs, ExpertPolicy(envs), double_buffer=True).halves() == [[0, 1], [2]]
    assert VectorRollout(envs[:1], ExpertPolicy(envs[:1]), double_buffer=True).halves() == [[0]]
    assert not steps_in_background(VectorRollout(envs, ExpertPolicy(envs)).workers)


def test_double_buffer_gives_the_same_sampled_episodes():
    """Same seed, same requests: the two halves' forward passes draw the same random numbers
    in the same order as one pass over all envs, so the episodes are the same."""
    torch.manual_seed(0)
    policy = CountingPolicy(build_policy(ModelConfig(preset="micro")).eval())
    env_cfg = TabletopEnvConfig(max_steps=20)          # 3 decisions each
    requests = [EpisodeRequest(t, i, f"g{n // 2}") for n, (t, i) in enumerate(
        [("spatial/0", 3), ("spatial/0", 3), ("long/2", 1), ("long/2", 1), ("goal/1", 0),
         ("goal/1", 0)])]                      # 6 requests on 4 envs: refills
    runs = {}
    for double in (False, True):
        policy.batches = []
        envs = [TabletopEnv(env_cfg) for _ in range(4)]
        runs[double] = VectorRollout(envs, policy, double_buffer=double).run(
            requests, 1.6, torch.Generator().manual_seed(3))
        runs[double, "batches"] = policy.batches
    assert runs[False, "batches"] == [4, 4, 4, 2, 2, 2]
    assert runs[True, "batches"] == [2, 2] * 3 + [2] * 3     # the second half ends idle
    assert [e.request for e in runs[True]] == requests
    for a, b in zip(runs[False], runs[True]):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(a.images, b.images)
        assert (a.length, a.success) == (b.length, b.success)
        np.testing.assert_array_equal(a.valid_mask, b.valid_mask)


def test_double_buffer_keeps_the_bookkeeping_of_uneven_episodes():
    """Expert episodes of different lengths: envs finish at different decisions and take the
    next request; both schedules give the same episodes, renders and step counts."""
    requests = [EpisodeRequest(t, i, f"g{n}") for n, (t, i) in enumerate(
        [("goal/3", 0), ("spatial/0", 0), ("goal/3", 1), ("object/0", 0), ("goal/3", 2)])]
    runs, counts = {}, {}
    for double in (False, True):
        envs = [CountingEnv(TabletopEnv(TabletopEnvConfig())) for _ in range(3)]
        policy = CountingPolicy(ExpertPolicy([e.env for e in envs]))
        rollout = VectorRollout(envs, policy, double_buffer=double)
        runs[double] = rollout.run(requests, temperature=1.0)
        counts[double] = ([e.steps for e in envs], [e.renders for e in envs],
                          rollout.env_steps, sum(policy.batches))
        if double:
            assert max(policy.batches) <= 2     # halves of 2 and 1 envs
    assert counts[False] == counts[True]
    assert [e.request for e in runs[True]] == requests
    for a, b in zip(runs[False], runs[True]):
        assert (a.length, a.success) == (b.length, b.success) and a.success
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.tokens, b.tokens)


def test_double_buffer_stops_and_records_videos():
    envs = [TabletopEnv(TabletopEnvConfig()) for _ in range(2)]
    policy = CountingPolicy(ExpertPolicy(envs))
    rollout = VectorRollout(envs, policy, double_buffer=True)
    cut = rollout.run([EpisodeRequest("goal/3", 0, "a")] * 2, 1.0,
                      should_stop=lambda: len(policy.batches) >= 3)
    assert cut == [] and len(policy.batches) == 3
    # every worker's reply was read: the next run starts cleanly
    ep, other = rollout.run([EpisodeRequest("goal/3", 0, "v", record_video=True),
                             EpisodeRequest("goal/3", 1, "w")], 1.0)
    assert len(ep.frames) == ep.length + 1 and not other.frames
    np.testing.assert_array_equal(ep.frames[0], ep.images[0, 0])


class KillAtDecision:
    """A real policy that SIGKILLs subprocess worker ``victim`` before forward pass ``nth``."""

    def __init__(self, policy, worker: SubprocessWorker, nth: int):
        self.policy, self.worker, self.nth, self.calls = policy, worker, nth, 0

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def sample(self, obs, temperature, generator=None):
        self.calls += 1
        if self.calls == self.nth:
            self.worker.proc.kill()
            self.worker.proc.wait(10)
        return self.policy.sample(obs, temperature, generator)


def test_double_buffer_restarts_a_dead_worker_and_drops_its_group():
    """Subprocess workers, double-buffered: worker 0 dies while its chunk is in flight and the
    other half infers; its group is dropped (no re-runs allowed), including the member that
    was stepping on the other worker, and the next group completes on the restarted worker."""
    torch.manual_seed(0)
    policy = build_policy(ModelConfig(preset="micro")).eval()
    env_cfg = TabletopEnvConfig(suite="goal", max_steps=16, num_train_init_states=5)   # 2 chunks
    workers = make_workers(env_cfg, 2, seed=0, use_subprocess=True)
    try:
        assert steps_in_background(workers)
        rollout = VectorRollout(workers, KillAtDecision(policy, workers[0], nth=2),
                                double_buffer=True)
        rollout.max_reruns = 0
        requests = [EpisodeRequest("goal/0", 1, g) for g in ("g", "g", "h", "h")]
        episodes = rollout.run(requests, 1.6, torch.Generator().manual_seed(0))
        assert all(w.proc.poll() is None for w in workers)
        again = rollout.run(requests[2:], 1.6, torch.Generator().manual_seed(0))
    finally:
        for w in workers:
            w.close()
    assert [e.request.group_id for e in episodes] == ["h", "h"]
    assert [e.request.group_id for e in again] == ["h", "h"]
    assert (rollout.worker_restarts, rollout.rerun_episodes, rollout.dropped_groups) == (1, 0, 1)
