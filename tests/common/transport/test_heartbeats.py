
import zmq

from common.transport.heartbeats import HealthMonitor, HeartbeatSender, decode_heartbeat, encode_heartbeat
from common.transport.curve import CurveClientKeys, CurveServerKeys, generate_keypair
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
