"""Heartbeats: validated on decode, sent to every listed address, live/stalled/dead told
apart, env steps/s over the rate window, and CURVE on the receiving side."""
import msgpack
import pytest
import zmq

from common.transport.curve import CurveClientKeys, CurveServerKeys, generate_keypair
from common.transport.heartbeats import HealthMonitor, HeartbeatSender, heartbeat_addresses
from common.wire.errors import WireError
from common.wire.heartbeat import MAX_HEARTBEAT_BYTES, decode_heartbeat, encode_heartbeat
from tests.waiting import wait_until


ANY_PORT = "tcp://127.0.0.1:*"


def test_live_stalled_and_dead_are_told_apart():
    mon = HealthMonitor(ANY_PORT, timeout_s=1.0, stall_s=0.6)
    addr = mon.address
    a, b = HeartbeatSender(addr), HeartbeatSender(addr)
    try:
        steps = {"a": 0}

        def beat_both():
            steps["a"] += 10
            a.beat("a", 3, steps["a"], 1)
            b.beat("b", 3, 500, 1)          # never progresses
            mon.poll(0.05)
            return {h.actor_id: h.state for h in mon.report()}

        assert wait_until(lambda: beat_both() == {"a": "live", "b": "stalled"})
        # a stops beating: dead after the timeout, b keeps beating and stays stalled
        def b_only():
            b.beat("b", 3, 500, 1)
            mon.poll(0.05)
            return {h.actor_id: h.state for h in mon.report()}
        assert wait_until(lambda: b_only() == {"a": "dead", "b": "stalled"})
        assert mon.counts() == {"live": 0, "stalled": 1, "dead": 1}
    finally:
        a.close(), b.close(), mon.close()


def test_malformed_heartbeats_are_counted_and_dropped():
    mon = HealthMonitor(ANY_PORT)
    addr = mon.address
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(addr)
    try:
        import msgpack
        good = encode_heartbeat("ok", 1, 1, 1)
        empty_id = msgpack.packb({**msgpack.unpackb(good), "actor_id": ""})
        for raw in (b"\xc1garbage", b"\x93\x01\x02\x03", empty_id):
            push.send(raw)
        push.send(good)
        assert wait_until(lambda: (mon.poll(0.05), [h.actor_id for h in mon.report()])[1] == ["ok"])
        assert mon.rejected == 3
    finally:
        push.close(0), mon.close()


def test_decode_rejects_wrong_types():
    import msgpack
    bad = msgpack.packb({"v": 1, "actor_id": "x", "policy_version": "1", "env_steps": 0,
                         "episodes": 0, "sent_at": 0.0})
    try:
        decode_heartbeat(bad)
    except ValueError as exc:
        assert "policy_version" in str(exc)
    else:
        raise AssertionError("a string policy_version was accepted")


def test_curve_monitor_ignores_clients_without_an_accepted_key(tmp_path):
    generate_keypair(tmp_path / "server", "learner")
    generate_keypair(tmp_path / "authorized", "good")
    generate_keypair(tmp_path / "other", "stranger")
    mon = HealthMonitor(ANY_PORT, curve=CurveServerKeys(
        str(tmp_path / "server/learner.key_secret"), str(tmp_path / "authorized")))
    addr = mon.address
    server_pub = str(tmp_path / "server/learner.key")
    good = HeartbeatSender(addr, CurveClientKeys(str(tmp_path / "authorized/good.key_secret"), server_pub))
    bad = HeartbeatSender(addr, CurveClientKeys(str(tmp_path / "other/stranger.key_secret"), server_pub))
    try:
        def beat():
            bad.beat("stranger", 0, 0, 0)
            good.beat("good", 0, 0, 0)
            mon.poll(0.05)
            return [h.actor_id for h in mon.report()]
        assert wait_until(lambda: beat() == ["good"])
        for _ in range(20):
            beat()
        assert [h.actor_id for h in mon.report()] == ["good"]
    finally:
        good.close(), bad.close(), mon.close()


def test_decode_names_each_broken_rule():
    good = msgpack.unpackb(encode_heartbeat("x", 1, 2, 3, sent_at=5.0))
    assert decode_heartbeat(msgpack.packb(good)) == good and good["sent_at"] == 5.0
    cases = {"too_large": b"\x00" * (MAX_HEARTBEAT_BYTES + 1),
             "not_a_map": msgpack.packb([1, 2]),
             "missing_field": msgpack.packb({k: v for k, v in good.items() if k != "episodes"}),
             "extra_field": msgpack.packb({**good, "successes": 1}),
             "wrong_type": msgpack.packb({**good, "env_steps": True}),
             "unknown_version": msgpack.packb({**good, "v": 2}),
             "bad_value": msgpack.packb({**good, "actor_id": "a" * 129})}
    for reason, raw in cases.items():
        with pytest.raises(WireError) as err:
            decode_heartbeat(raw)
        assert err.value.reason == reason


def test_a_sender_beats_every_listed_address():
    learner, status = HealthMonitor(ANY_PORT), HealthMonitor(ANY_PORT)
    assert heartbeat_addresses(f" {learner.address}, {status.address}") == \
        [learner.address, status.address]
    sender = HeartbeatSender(f"{learner.address},{status.address}")
    try:
        def heard() -> bool:
            sender.beat("a", 2, 10, 1)
            return all((m.poll(0.05), [h.actor_id for h in m.report()])[1] == ["a"]
                       for m in (learner, status))
        assert wait_until(heard)
    finally:
        sender.close(), learner.close(), status.close()


def test_env_steps_per_s_over_the_rate_window():
    mon = HealthMonitor(ANY_PORT, rate_window_s=4.0)
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(mon.address)

    def report_after(*beats: tuple[float, int]):
        for sent_at, steps in beats:
            push.send(encode_heartbeat("a", 1, steps, 0, sent_at=sent_at))
        last = beats[-1][1]
        wait_until(lambda: (mon.poll(0.05), [h.env_steps for h in mon.report()])[1] == [last])
        return mon.report()[0]

    try:
        assert report_after((100.0, 0)).env_steps_per_s is None     # one heartbeat: no rate
        assert report_after((101.0, 50)).env_steps_per_s == 50.0
        # over the last 4 s of heartbeats (and the newest one before them): 102..106
        assert report_after((102.0, 60), (104.0, 260), (106.0, 460)).env_steps_per_s == 100.0
        # the actor restarted under the same id: counting starts again
        assert report_after((107.0, 5)).env_steps_per_s is None
        assert report_after((108.0, 25)).env_steps_per_s == 20.0
    finally:
        push.close(0), mon.close()
