"""The network endpoints of a run, one row each: who binds it, who dials it, on which port.

Everything that names an endpoint derives from :data:`ENDPOINTS`: the address fields'
defaults and rules (:func:`server_address`, :func:`client_address`), the launchers' wiring
of servers to clients (deploy/roles.py), their port checks (deploy/checks.py) and the Ray
launcher's ports (``deploy.ports``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.config.rules import Rule, address, setting

__all__ = ["Endpoint", "ENDPOINTS", "LOCAL_HOST", "tcp_address", "default_ports",
           "server_address", "client_address", "port_table"]

LOCAL_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Endpoint:
    name: str
    """the key of ``deploy.ports``"""
    port: int
    """its default port"""
    bind_at: tuple[str, str]
    """(section, field) where the server binds it"""
    dial_at: tuple[str, str]
    """(section, field) of the actor's address that dials it"""
    socket: str
    """the server's ZeroMQ socket type"""
    what: str
    """what goes over it"""
    several: bool = False
    """the client may list several addresses, comma-separated (the same messages to each)"""

    @property
    def server(self) -> str:
        """The dotted key where the server binds it (``store.ingest_address``)."""
        return ".".join(self.bind_at)

    @property
    def client(self) -> str:
        """The dotted key of the actor's address that dials it."""
        return ".".join(self.dial_at)


ENDPOINTS = (
    Endpoint("store", 5555, ("store", "ingest_address"), ("actor", "store_address"), "ROUTER",
             "trajectories into the store's ingest, acknowledged one by one"),
    Endpoint("weights", 5556, ("learner", "weights_address"), ("actor", "weights_address"),
             "ROUTER", "the learner's weights, fetched in chunks (actors use DEALER)"),
    Endpoint("announce", 5557, ("learner", "announce_address"), ("actor", "announce_address"),
             "PUB", "the learner's new policy versions"),
    # a run's status board listens to the heartbeats too
    Endpoint("heartbeat", 5558, ("learner", "heartbeat_address"), ("actor", "heartbeat_address"),
             "PULL", "the actors' heartbeats and progress", several=True),
)
_BY_NAME = {e.name: e for e in ENDPOINTS}


def tcp_address(port: int, host: str = LOCAL_HOST) -> str:
    return f"tcp://{host}:{port}"


def default_ports() -> dict[str, int]:
    return {e.name: e.port for e in ENDPOINTS}


def server_address(name: str) -> Any:
    """The field where endpoint ``name``'s server binds: its default address and rule."""
    return setting(tcp_address(_BY_NAME[name].port), address(bind=True))


def client_address(name: str) -> Any:
    """The actor's field that dials endpoint ``name``: its default address and rule."""
    endpoint = _BY_NAME[name]
    return setting(tcp_address(endpoint.port), address(bind=False, several=endpoint.several))


def port_table() -> Rule:
    """``deploy.ports``: each endpoint's name mapped to a port 1-65535 of its own (the
    servers share a node)."""
    def ok(ports: Any) -> bool:
        return isinstance(ports, dict) and set(ports) == set(_BY_NAME) and all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535
            for p in ports.values()) and len(set(ports.values())) == len(ports)
    return Rule(ok, "a distinct port 1-65535 for each of " + ", ".join(_BY_NAME))
