"""Actor logic against a real store in another process and a real weight publisher: complete
groups with consistent ids, versions swapped only between groups, behaviour log-probs that the
policy of that version recomputes, and blocking (not buffering) while the store is away."""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from actors.actor import Actor  # noqa: E402
from actors.envs.tabletop import TabletopEnv  # noqa: E402
from actors.rollout import VectorRollout  # noqa: E402
from actors.scheduler import FilterWindow, TaskScheduler  # noqa: E402
from common.config.schema import ModelConfig, TabletopEnvConfig  # noqa: E402
from common.models import build_policy  # noqa: E402
from common.models.policy import ObsBatch  # noqa: E402
from common.transport.trajectories import TrajectorySender  # noqa: E402
from common.transport.weights import WeightClient  # noqa: E402
from common.transport.weight_publisher import WeightPublisher  # noqa: E402
from tests.actors.helpers import StoreProcess, wait_for  # noqa: E402

TEMPERATURE = 1.6
ENV_CFG = TabletopEnvConfig(suite="goal", max_steps=16, num_train_init_states=5)


def micro_weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_policy(ModelConfig(preset="micro")).state_dict().items()}


def make_actor(policy, client, num_envs: int = 4, group_size: int = 2) -> Actor:
    envs = [TabletopEnv(ENV_CFG) for _ in range(num_envs)]
    tasks = envs[0].tasks()
    scheduler = TaskScheduler(tasks, {t.task_id: envs[0].train_init_state_ids(t.task_id)
                                      for t in tasks}, seed=0)
    return Actor(VectorRollout(envs, policy), scheduler, actor_id="test-actor",
                 group_size=group_size, temperature=TEMPERATURE, weight_client=client,
                 generator=torch.Generator().manual_seed(0))


class PublishMidRound:
    """Wraps the actor's real policy: on the first decision of a round it publishes the next
    version and waits until the client has fetched it, so a swap *could* happen mid-round."""

    def __init__(self, policy, publisher, client, versions):
        self.policy, self.publisher, self.client = policy, publisher, client
        self.versions = versions          # version -> state dict, published in order
        self.armed = False

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def sample(self, obs, temperature, generator=None):
        if self.armed:
            self.armed = False
            v = self.client.latest_fetched + 1
            self.publisher.publish(v, self.versions[v])
            wait_for(lambda: self.client.latest_fetched >= v, what=f"version {v} fetched")
        return self.policy.sample(obs, temperature, generator)


def recomputed_log_probs(traj, policy) -> np.ndarray:
    obs = ObsBatch(np.array(traj.images), np.array(traj.proprio),
                   [traj.instruction] * traj.num_decisions)
    with torch.no_grad():
        return policy.log_probs(obs, torch.from_numpy(traj.action_tokens.astype(np.int64)),
                                traj.temperature).numpy()


@pytest.mark.slow
def test_groups_versions_swaps_and_log_probs(tmp_path):
    versions = {v: micro_weights(v) for v in range(4)}
    policy = build_policy(ModelConfig(preset="micro")).eval()
    policy.load_state_dict(versions[0])      # the actor's own start: version 0
    store = StoreProcess(tmp_path / "store").start()
    try:
        with WeightPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", chunk_mb=0.05,
                             announce_every_s=0.2) as pub, \
                WeightClient(pub.weights_address, pub.announce_address, min_version=0) as client, \
                TrajectorySender(store.address, max_in_flight=8, resend_after_s=1.0) as sender:
            wrapped = PublishMidRound(policy, pub, client, versions)
            actor = make_actor(wrapped, client)
            actor.load_weights = policy.load_state_dict
            actor.run_round(sender.send)                  # learner away: version 0
            for _ in range(3):                            # v1, v2, v3 published mid-round
                wrapped.armed = True
                actor.run_round(sender.send)
            assert sender.flush(60), sender.stats()
        groups = store.groups()
    finally:
        store.stop()
    scorers = {v: build_policy(ModelConfig(preset="micro")).eval() for v in versions}
    for v, scorer in scorers.items():
        scorer.load_state_dict(versions[v])
    assert actor.stats.swaps == 2 and actor.stats.groups == 8 == len(groups)
    by_round = sorted(groups.values(), key=lambda g: g[0].created_at)
    # a version published during round r is used from round r + 1 on, never inside a group
    assert [g[0].policy_version for g in by_round] == [0, 0, 0, 0, 1, 1, 2, 2]
    for group in by_round:
        first = group[0]
        assert len(group) == first.group_size == 2
        assert sorted(t.trajectory_id for t in group) == [f"{first.group_id}.0",
                                                          f"{first.group_id}.1"]
        for t in group:
            assert (t.task_id, t.init_state_id, t.policy_version, t.actor_id, t.group_id) == \
                (first.task_id, first.init_state_id, first.policy_version, "test-actor",
                 first.group_id)
            assert t.init_state_id < 5 and t.temperature == TEMPERATURE
            assert set(t.timings) >= {"env_s", "inference_s", "wait_s"}
            again = recomputed_log_probs(t, scorers[t.policy_version])
            np.testing.assert_allclose(again, t.behaviour_log_probs, atol=1e-5, rtol=0)
            other = scorers[(t.policy_version + 1) % 4]
            assert np.abs(recomputed_log_probs(t, other) - t.behaviour_log_probs).max() > 1e-3


@pytest.mark.slow
def test_actor_blocks_while_store_is_away_then_delivers(tmp_path):
    store = StoreProcess(tmp_path / "store")          # not started yet
    policy = build_policy(ModelConfig(preset="micro")).eval()
    actor = make_actor(policy, client=None, num_envs=2, group_size=2)
    actor.groups_per_round = 3                        # 6 trajectories, window of 2
    with TrajectorySender(store.address, max_in_flight=2, resend_after_s=0.5) as sender:
        sent = []

        def send(traj):
            sender.send(traj)
            sent.append(traj.trajectory_id)

        worker = threading.Thread(target=actor.run_round, args=(send,), daemon=True)
        worker.start()
        wait_for(lambda: sender.in_flight == 2, what="a full send window")
        assert worker.is_alive() and len(sent) == 2     # blocked, nothing buffered beyond 2
        store.start()
        try:
            worker.join(120)
            assert not worker.is_alive()
            assert sender.flush(60)
            assert len(sent) == 6 and not store.missing(sent)
            assert len(store.groups()) == 3
        finally:
            store.stop()


def test_sync_mode_holds_rounds_while_the_learner_updates():
    policy = build_policy(ModelConfig(preset="micro")).eval()
    weights = micro_weights(1)
    with WeightPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", chunk_mb=0.05,
                         announce_every_s=0.1) as pub, \
            WeightClient(pub.weights_address, pub.announce_address, min_version=0) as client:
        actor = make_actor(policy, client, num_envs=1, group_size=1)
        assert actor.wait_for_learner(timeout_s=1.0)            # nothing announced: go
        pub.publish(1, weights)
        pub.pause()                                             # the learner is updating
        wait_for(lambda: client.paused, what="the pause announcement")
        assert not actor.wait_for_learner(timeout_s=0.5)        # held
        pub.resume()
        assert actor.wait_for_learner(timeout_s=30)             # released, on version 1
        assert actor.policy_version == 1 and actor.stats.swaps == 1
        for k, v in policy.state_dict().items():
            assert torch.equal(v, weights[k]), k


def test_actor_double_buffers_only_workers_that_step_in_the_background():
    from types import SimpleNamespace

    from actors.actor import double_buffer_for
    from common.config.schema import ActorConfig

    class Background:      # what a subprocess env worker says of itself
        steps_in_background = True

    in_process = VectorRollout([TabletopEnv(ENV_CFG) for _ in range(2)], None).workers
    on, off = SimpleNamespace(double_buffer=True), SimpleNamespace(double_buffer=False)
    assert not double_buffer_for(on, in_process)
    assert double_buffer_for(on, [Background(), Background()])
    assert double_buffer_for(ActorConfig(), [Background(), Background()])    # default on
    assert not double_buffer_for(off, [Background(), Background()])
    assert not double_buffer_for(on, [Background()])            # one env: nothing to overlap


def test_double_buffered_actor_sends_complete_consistent_groups():
    torch.manual_seed(0)
    actor = make_actor(build_policy(ModelConfig(preset="micro")).eval(), None, num_envs=4)
    actor.rollout.double_buffer = True
    sent = []
    assert [actor.run_round(sent.append) for _ in range(2)] == [2, 2]
    groups: dict[str, list] = {}
    for t in sent:
        groups.setdefault(t.group_id, []).append(t)
    assert len(groups) == 4 and all(len(g) == 2 for g in groups.values())
    for g in groups.values():
        assert len({(t.task_id, t.init_state_id, t.policy_version) for t in g}) == 1
        assert sorted(t.trajectory_id for t in g) == [f"{g[0].group_id}.{m}" for m in (0, 1)]
    assert actor.stats.episodes == 8 and actor.stats.env_steps == sum(t.length for t in sent)


def test_the_actor_tells_an_adaptive_scheduler_each_groups_outcomes():
    torch.manual_seed(0)
    actor = make_actor(build_policy(ModelConfig(preset="micro")).eval(), None, num_envs=4)
    window = FilterWindow(group_size=2, lo=0.1, hi=0.9, decay=0.5)
    actor.scheduler.window = window
    sent = []
    actor.run_round(sent.append)
    expected: dict[str, tuple[float, float]] = {}
    for gid in dict.fromkeys(t.group_id for t in sent):       # groups in the order recorded
        g = [t for t in sent if t.group_id == gid]
        s, n = expected.get(g[0].task_id, (0.5, 1.0))
        expected[g[0].task_id] = (0.5 * s + sum(t.success for t in g), 0.5 * n + len(g))
    assert expected
    for task, (s, n) in expected.items():
        assert actor.scheduler.success(task) == pytest.approx(s / n)


def test_async_actors_hold_a_round_only_while_the_learner_says_so():
    from actors.actor_process import holds_round
    with WeightPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", chunk_mb=0.05,
                         announce_every_s=0.1) as pub, \
            WeightClient(pub.weights_address, pub.announce_address, min_version=0) as client:
        pub.publish(1, micro_weights(1))
        wait_for(lambda: client.announced_version == 1, what="the first announcement")
        assert not holds_round("async", client) and holds_round("sync", client)
        pub.pause()                                 # the learner's backlog is full
        wait_for(lambda: holds_round("async", client), what="the hold announcement")
        pub.resume()
        wait_for(lambda: not holds_round("async", client), what="the release announcement")
    assert not holds_round("async", None)
