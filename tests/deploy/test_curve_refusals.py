"""Refused CURVE handshakes are counted and logged (common/transport/curve.py), with real
ZeroMQ sockets over TCP: a client without keys and a client whose key is not authorized are
refused, counted by reason and named in a log line; an authorized client gets through and is
not counted."""
from __future__ import annotations

import logging

import zmq
import zmq.auth

from common.transport.curve import (
    CurveClientKeys, CurveServerKeys, apply_client_keys, apply_server_keys, generate_keypair,
)
from tests.waiting import wait_until

PLAIN = {"no_curve", "hung_up"}     # the reasons a client without keys is refused with


def _dealer(ctx: zmq.Context, address: str, keys: CurveClientKeys | None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if keys is not None:
        apply_client_keys(sock, keys)
    sock.connect(address)
    return sock


def _send(sock: zmq.Socket, payload: bytes) -> None:
    """Queue one message (a refused client never has a peer: nothing blocks, nothing goes)."""
    try:
        sock.send(payload, zmq.NOBLOCK)
    except zmq.Again:
        pass


def test_unkeyed_and_unlisted_clients_are_refused_counted_and_logged(tmp_path, caplog):
    keys = tmp_path / "keys"
    server_pub, server_secret = generate_keypair(keys, "server")
    _, good_secret = generate_keypair(keys, "good")
    stranger_pub, stranger_secret = generate_keypair(keys, "stranger")
    (tmp_path / "authorized").mkdir()
    (tmp_path / "authorized" / "good.key").write_bytes((keys / "good.key").read_bytes())
    stranger_key = zmq.auth.load_certificate(str(stranger_pub))[0].decode()

    server_ctx, client_ctx = zmq.Context(), zmq.Context()
    server = server_ctx.socket(zmq.ROUTER)
    server.linger = 0
    auth = apply_server_keys(server, CurveServerKeys(str(server_secret),
                                                     str(tmp_path / "authorized")))
    address = f"tcp://127.0.0.1:{server.bind_to_random_port('tcp://127.0.0.1')}"
    clients = []
    caplog.set_level(logging.WARNING, logger="pushcut.curve")
    try:
        good = _dealer(client_ctx, address, CurveClientKeys(str(good_secret), str(server_pub)))
        clients.append(good)
        good.send(b"from good")
        assert wait_until(lambda: server.poll(100) and server.recv_multipart(), 30,
                          "the authorized client's message")[-1] == b"from good"
        assert auth.refusals.total == 0

        clients.append(_dealer(client_ctx, address, None))               # plain TCP
        _send(clients[-1], b"from plain")
        # the server sees the mismatch (no_curve) or the client first and hangs up (hung_up)
        wait_until(lambda: auth.refusals.counts().keys() & PLAIN, 30,
                   "the client without keys to be refused")
        clients.append(_dealer(client_ctx, address,
                               CurveClientKeys(str(stranger_secret), str(server_pub))))
        _send(clients[-1], b"from stranger")
        wait_until(lambda: auth.refusals.counts().get("unknown_key", 0) >= 1, 30,
                   "the unlisted client to be refused")

        assert not server.poll(200), "a refused client's message reached the server"
        good.send(b"still served")
        assert wait_until(lambda: server.poll(100) and server.recv_multipart(), 30,
                          "the authorized client, served on")[-1] == b"still served"
        assert set(auth.refusals.counts()) - PLAIN == {"unknown_key"}
    finally:
        for sock in clients:
            sock.close(0)
        server.close(0)
        auth.stop()
        server_ctx.term()
        client_ctx.term()

    lines = [r.getMessage() for r in caplog.records if r.name == "pushcut.curve"]
    unlisted = [ln for ln in lines if "unknown_key" in ln]
    assert unlisted and "127.0.0.1" in unlisted[0] and stranger_key in unlisted[0], lines
    assert any(any(r in ln for r in PLAIN) and address in ln for ln in lines), lines
    assert all("refused on this server so far" in ln for ln in lines), lines
