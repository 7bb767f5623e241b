"""CurveZMQ keys: generate them (``pushcut keys DIR NAME...``) and switch sockets onto them.

A server (the store's ingest, the learner's weight server) holds a secret key file and
optionally a directory of client public keys it accepts; a client (an actor) holds its own
secret key file and the server's public key file. Without keys every socket stays plain TCP,
which is what a single machine or a trusted network needs. Key files are the ZeroMQ
certificate format written by :func:`zmq.auth.create_certificates`
(``NAME.key`` public, ``NAME.key_secret`` secret).

In: paths to key files. Out: configured sockets, and for servers a running ZAP
authenticator (stop it with ``.stop()`` when the socket closes).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


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


def apply_server_keys(socket: zmq.Socket, keys: CurveServerKeys) -> ThreadAuthenticator:
    """Make ``socket`` (not yet bound) a CURVE server. The returned authenticator runs in a
    thread of the socket's context and must be stopped after the socket is closed."""
    public, secret = _load(keys.secret_key_file, need_secret=True)
    auth = ThreadAuthenticator(socket.context)
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
