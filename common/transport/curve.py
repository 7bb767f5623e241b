"""CurveZMQ keys: generate them (``pushcut keys DIR NAME...``) and switch sockets onto them.

A server (the store's ingest, the learner's weight server) holds a secret key file and
optionally a directory of client public keys it accepts; a client (an actor) holds its own
secret key file and the server's public key file. Without keys every socket stays plain TCP,
which is what a single machine or a trusted network needs. Key files are the ZeroMQ
certificate format written by :func:`zmq.auth.create_certificates`
(``NAME.key`` public, ``NAME.key_secret`` secret).

In: paths to key files. Out: configured sockets, and for servers a running ZAP
authenticator (stop it with ``.stop()`` when the socket closes).

Refused handshakes are visible: a :class:`CurveAuthenticator` counts them by reason
(``.refusals.counts()``, ``.refusals.total``) and logs them on the ``pushcut.curve`` logger
(WARNING; the store's and the learner's logs show them): ``unknown_key`` (a CURVE client
whose public key is not authorized; ZAP gives its IP address and the line names the key),
``no_curve`` (a client without CURVE: plain TCP, mechanism mismatch), ``hung_up`` (a client
that closed the connection before the handshake ended: typically one without CURVE that saw
the server's greeting first, or a port scanner), ``bad_crypto`` (a client with the wrong
server key) and ``bad_handshake`` (any other protocol error). The last four are seen by a
monitor of the server socket; ZeroMQ does not report a peer address for them, so the line
gives the address when the connection could still be asked for it and otherwise says it is
unknown. A peer that keeps knocking is logged once per
:data:`LOG_EVERY_S` with the count since its previous line.
"""
from __future__ import annotations

import logging
import os
import socket as pysocket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("pushcut.curve")
LOG_EVERY_S = 10.0
# monitor events of a failed handshake (ZAP refusals are counted by the authenticator)
PROTOCOL_REASONS = {zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "no_curve",
                    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "bad_crypto"}


@dataclass
class CurveServerKeys:
    """Server side: its secret key file; ``authorized_dir`` holds the client public keys it
    accepts (None: any client that speaks CURVE, i.e. encryption without a client list)."""
    secret_key_file: str
    authorized_dir: Optional[str] = None


@dataclass
class CurveClientKeys:
    """Client side: its own secret key file and the server's public key file."""
    secret_key_file: str
    server_public_key_file: str


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600) into
    ``directory``; returns (public, secret) paths."""
    if not name or "/" in name:
        raise ValueError(f"key name {name!r}: must be a plain, non-empty file name")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def _load(path: str, need_secret: bool) -> tuple[bytes, Optional[bytes]]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"CurveZMQ key file {path!r} does not exist "
                                "(create keys with `pushcut keys DIR NAME`)")
    public, secret = zmq.auth.load_certificate(path)
    if need_secret and not secret:
        raise ValueError(f"CurveZMQ key file {path!r} holds no secret key (use NAME.key_secret)")
    return public, secret


class Refusals:
    """Thread-safe counts of refused handshakes by reason, and their rate-limited log lines."""

    def __init__(self, endpoint: str = "?"):
        self.endpoint = endpoint          # the server socket's address, for the log lines
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}   # (peer, reason) -> (t, n)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        """reason -> refused handshakes since start."""
        with self._lock:
            return dict(self._counts)

    def add(self, reason: str, host: Optional[str] = None, port: Optional[int] = None,
            key: Optional[str] = None) -> None:
        """Count one refusal of a client at ``host`` (None: unknown) and ``port``; log it
        unless this host was logged for this reason in the last LOG_EVERY_S (the next line
        then says how many came meanwhile)."""
        now, limit = time.monotonic(), (host or "?", reason)
        who = f"{host}:{port}" if host and port else host or "an unknown address"
        with self._lock:
            self._counts[reason] += 1
            total = sum(self._counts.values())
            last_t, missed = self._last.get(limit, (-LOG_EVERY_S, 0))
            if now - last_t < LOG_EVERY_S:
                self._last[limit] = (last_t, missed + 1)
                return
            self._last[limit] = (now, 0)
        log.warning("CURVE refused a client from %s on %s: %s%s%s; %d refused on this server "
                    "so far", who, self.endpoint, reason, f" (public key {key})" if key else "",
                    f", {missed + 1} times since the last line" if missed else "", total)


class CurveAuthenticator(ThreadAuthenticator):
    """The ZAP handler of a context (a thread), counting what it refuses in ``refusals``,
    plus a monitor of one server socket for handshakes that fail before ZAP is asked."""

    def __init__(self, context: zmq.Context, refusals: Refusals):
        super().__init__(context)
        self.refusals = refusals
        self._status: Optional[bytes] = None
        self._watch: Optional[HandshakeWatch] = None

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        """ZAP frames: version, request id, domain, address, identity, mechanism, creds."""
        self._status = None
        await super().handle_zap_message(msg)
        if self._status != b"200" and len(msg) >= 6:
            key = z85.encode(msg[6]).decode() if len(msg) > 6 and len(msg[6]) == 32 else None
            self.refusals.add("unknown_key", msg[3].decode(errors="replace") or None, key=key)

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous"):
        self._status = status_code
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    def watch(self, socket: zmq.Socket) -> None:
        """Monitor ``socket`` (call before it binds, from the thread that owns it)."""
        self._watch = HandshakeWatch(socket, self.refusals)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        super().stop()


class HandshakeWatch:
    """A thread reading the monitor of one server socket: failed handshakes are refusals;
    the bound address names the server in the log lines. Ends when the socket closes."""

    EVENTS = (zmq.EVENT_LISTENING | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_MONITOR_STOPPED)

    def __init__(self, socket: zmq.Socket, refusals: Refusals):
        self.refusals = refusals
        self._monitor = socket.get_monitor_socket(self.EVENTS)
        self._stop = threading.Event()
        self._peers: dict[int, tuple] = {}    # fd -> its peer (host, port), accept to close
        self._failed: Optional[str] = None            # reason, until its connection closes
        self._thread = threading.Thread(target=self._run, name="curve-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._monitor.poll(100):
                    continue
                event = recv_monitor_message(self._monitor)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    break
                self._handle(event)
        finally:
            self._monitor.close(0)
            if self._failed:
                self.refusals.add(self._failed, None)

    def _handle(self, event: dict) -> None:
        """A failed handshake is followed by the DISCONNECTED event of its connection (one
        engine emits both), whose descriptor names the peer resolved when it was accepted
        (best effort: a connection refused within microseconds is closed before that)."""
        kind, value = event["event"], event["value"]
        if kind == zmq.EVENT_LISTENING:
            self.refusals.endpoint = event["endpoint"].decode(errors="replace")
        elif kind == zmq.EVENT_ACCEPTED:
            self._peers[value] = _peer_of(value)
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self._failed = PROTOCOL_REASONS.get(value, "bad_handshake")
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._failed = "hung_up"
        elif kind == zmq.EVENT_DISCONNECTED:
            peer = self._peers.pop(value, ())
            if self._failed:
                self.refusals.add(self._failed, *peer)
                self._failed = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _peer_of(fd: int) -> tuple:
    """(host, port) of an accepted connection's file descriptor (a duplicate of it is
    asked), () once it is closed."""
    try:
        with pysocket.socket(fileno=os.dup(fd)) as sock:    # family detected from the fd
            return tuple(sock.getpeername()[:2])
    except OSError:
        return ()


def apply_server_keys(socket: zmq.Socket, keys: CurveServerKeys) -> CurveAuthenticator:
    """Make ``socket`` (not yet bound) a CURVE server. The returned authenticator runs in a
    thread of the socket's context, counts and logs refused clients (``.refusals``) and
    must be stopped after the socket is closed."""
    public, secret = _load(keys.secret_key_file, need_secret=True)
    auth = CurveAuthenticator(socket.context, Refusals())
    auth.start()
    if keys.authorized_dir is None:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    else:
        if not Path(keys.authorized_dir).is_dir():
            auth.stop()
            raise FileNotFoundError(f"authorized keys directory {keys.authorized_dir!r} "
                                    "does not exist")
        auth.configure_curve(domain="*", location=str(keys.authorized_dir))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    auth.watch(socket)
    return auth


def apply_client_keys(socket: zmq.Socket, keys: CurveClientKeys) -> None:
    """Make ``socket`` (not yet connected) a CURVE client of the server whose public key
    file is given."""
    public, secret = _load(keys.secret_key_file, need_secret=True)
    server_public, _ = _load(keys.server_public_key_file, need_secret=False)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public


def main(cfg, args: list[str]) -> int:
    """``pushcut keys DIR NAME [NAME ...]``: one key pair per NAME in DIR."""
    if len(args) < 2:
        print("usage: pushcut keys DIR NAME [NAME ...]\n\n"
              "Writes DIR/NAME.key (public: give it to the peers) and DIR/NAME.key_secret "
              "(secret: keep it on the machine that uses it).", file=sys.stderr)
        return 2
    directory, names = args[0], args[1:]
    for name in names:
        public, secret = generate_keypair(directory, name)
        print(f"{name}: public {public}  secret {secret}")
    return 0
