"""``pushcut deploy``: the store, the learner and N rollout actors placed on a Ray cluster.

Start Ray on every node first (``ray start --head`` on the learner node, ``ray start
--address=HEAD:6379`` on the others), then on any node:

    pushcut deploy num_actors=16 deploy.actor_cpus=2 deploy.learner_gpus=1 \\
        env=tabletop model.checkpoint=/shared/sft learner.world_size=1
    pushcut deploy scale 32        # from another shell: change the actor count while running

In: the composed config (every role gets the same overrides, plus the addresses and actor
identities of deploy/roles.py) and a Ray cluster. Out: the roles as OS processes, each inside
a Ray actor (:class:`RoleHost`) that supervises it. The store (unless the learner hosts it)
and the learner share one RoleHost (the learner reads the store's LMDB files, so they
must share a node), placed with ``deploy.learner_gpus``/``deploy.head_resource``; each rollout
actor gets its own with ``deploy.actor_cpus``/``deploy.actor_gpus``. A role process that dies
is restarted by its RoleHost; a RoleHost whose node or worker dies is restarted by Ray
(``max_restarts``). A restarted actor fetches the learner's current weights before it
generates. Ray appears nowhere outside ``deploy/``.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from typing import Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from common.config import PushcutConfig
from deploy.roles import RoleCommand, cluster_addresses, role_commands, role_process

log = logging.getLogger("pushcut.deploy")
SCALE_ACTOR = "pushcut-desired-actors"


@ray.remote(max_concurrency=4)
class RoleHost:
    """Supervises one or more pushcut role processes on the node Ray placed it on."""

    def __init__(self, roles: dict[str, RoleCommand], env: dict[str, str], log_dir: str,
                 cwd: Optional[str] = None):
        # Ray restarts this actor in a new worker after a SIGKILL; the children of the dead
        # worker get SIGTERM from the kernel (die_with_parent), and the pid files let this
        # incarnation finish off any that linger before it starts their replacements.
        cwd = cwd if cwd and os.path.isdir(cwd) else None
        self.sups = {name: role_process(name, command, log_dir, env=env, cwd=cwd,
                                        die_with_parent=True,
                                        pid_file=f"{log_dir}/{name}.pid").start()
                     for name, command in roles.items()}
        self._stopping = False

    def node(self) -> tuple[str, str]:
        """-> (node IP, Ray node id) of the node this host runs on."""
        return ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()

    def watch(self, poll_s: float = 0.5) -> dict:
        """Blocks, restarting dead children, until stop() or every child finished with 0."""
        while not self._stopping:
            alive = [s.poll() for s in self.sups.values()]
            if not any(alive) and all(s.proc.returncode == 0 for s in self.sups.values()):
                break
            time.sleep(poll_s)  # a supervision tick, not synchronisation with anything
        return self.status()

    def status(self) -> dict:
        return {name: asdict(s.status()) for name, s in self.sups.items()}

    def kill(self, name: str, sig: int = 9) -> None:
        self.sups[name].kill(sig)

    def stop(self, timeout_s: float = 30.0) -> dict:
        self._stopping = True
        for s in self.sups.values():
            s.stop(timeout_s)
        return self.status()


@ray.remote
class DesiredActors:
    """The target actor count, set by ``pushcut deploy scale N`` from any shell."""

    def __init__(self, n: int):
        self.n = n

    def set(self, n: int) -> int:
        self.n = max(0, int(n))
        return self.n

    def get(self) -> int:
        return self.n


class Deployment:
    """The driver side: places RoleHosts, keeps the actor count at the desired number."""

    def __init__(self, cfg: PushcutConfig, overrides: list[str]):
        self.cfg, self.overrides = cfg, [o for o in overrides if not o.startswith("deploy.")]
        self.env: dict[str, str] = {}   # on top of deploy.roles.ROLE_ENV
        # relative paths in the config mean the driver's directory, wherever Ray starts workers
        self.cwd = os.getcwd()
        self.log_dir = os.path.abspath(f"{cfg.run_dir}/logs")
        self.head = None
        self.actors: dict[str, tuple[ray.actor.ActorHandle, ray.ObjectRef]] = {}
        self.next_index = 0
        self.desired = None
        self.addresses: dict[str, list[str]] = {}

    def start(self) -> None:
        d = self.cfg.deploy
        head_opts = dict(num_cpus=d.learner_cpus, num_gpus=d.learner_gpus,
                         max_restarts=d.max_restarts, max_task_retries=-1)
        if d.head_resource:
            head_opts["resources"] = {d.head_resource: 0.001}
        # The probe finds a node with the head's resources; the head is then pinned to it, so
        # the address advertised to actors is where the store and learner really listen.
        probe = RoleHost.options(**head_opts).remote({}, self.env, self.log_dir)
        host_ip, node_id = ray.get(probe.node.remote())
        ray.kill(probe)
        head_opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
        self.addresses = cluster_addresses(self.cfg, d.advertise_host or host_ip, d.bind_host)
        servers = role_commands(self.cfg, self.overrides, self.addresses, actors=())
        self.head = RoleHost.options(**head_opts).remote(servers, self.env, self.log_dir,
                                                         self.cwd)
        self.head_watch = self.head.watch.remote()
        self.desired = DesiredActors.options(name=SCALE_ACTOR, namespace=d.namespace,
                                             get_if_exists=True).remote(self.cfg.num_actors)
        ray.get(self.desired.set.remote(self.cfg.num_actors))
        self.reconcile()

    def _add_actor(self) -> None:
        d = self.cfg.deploy
        roles = role_commands(self.cfg, self.overrides, self.addresses, [self.next_index],
                              servers=False)
        self.next_index += 1
        host = RoleHost.options(num_cpus=d.actor_cpus, num_gpus=d.actor_gpus,
                                max_restarts=d.max_restarts, max_task_retries=-1
                                ).remote(roles, self.env, self.log_dir, self.cwd)
        (name,) = roles
        self.actors[name] = (host, host.watch.remote())

    def _remove_actor(self) -> None:
        name = max(self.actors, key=lambda n: int(n.split("-")[1]))
        host, _ = self.actors.pop(name)
        ray.get(host.stop.remote())
        ray.kill(host)

    def reconcile(self) -> int:
        """Add or remove actors until the count matches ``pushcut deploy scale``'s target."""
        want = ray.get(self.desired.get.remote())
        while len(self.actors) < want:
            self._add_actor()
        while len(self.actors) > want:
            self._remove_actor()
        return want

    def status(self) -> dict:
        out = {"head": ray.get(self.head.status.remote())}
        for name, (host, _) in self.actors.items():
            out.update(ray.get(host.status.remote()))
        return out

    def stop(self) -> None:
        for name in list(self.actors):
            self._remove_actor()
        if self.head is not None:
            ray.get(self.head.stop.remote())
            ray.kill(self.head)


def _connect(cfg: PushcutConfig) -> None:
    ray.init(address=cfg.deploy.address, namespace=cfg.deploy.namespace,
             log_to_driver=False, configure_logging=False)


def status_line(status: dict) -> str:
    head = status.pop("head")
    parts = [f"{n}: {'up' if s['alive'] else 'down'} r{s['restarts']}" for n, s in head.items()]
    parts += [f"{n}: {'up' if s['alive'] else ('done' if s['last_exit'] == 0 else 'down')}"
              f" r{s['restarts']}" for n, s in sorted(status.items())]
    return " | ".join(parts)


def main(cfg: PushcutConfig, args: list[str], overrides: Optional[list[str]] = None) -> int:
    import sys
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = list(overrides or [])
    if args[:1] == ["scale"] and len(args) == 2:
        _connect(cfg)
        try:
            desired = ray.get_actor(SCALE_ACTOR, namespace=cfg.deploy.namespace)
        except ValueError:
            print(f"pushcut deploy scale: no running deployment in Ray namespace "
                  f"{cfg.deploy.namespace!r} at {cfg.deploy.address}", file=sys.stderr)
            return 1
        n = ray.get(desired.set.remote(int(args[1])))
        print(f"desired actors: {n}")
        return 0
    if args:
        print("usage: pushcut deploy [key=value ...] | pushcut deploy scale N", file=sys.stderr)
        return 2
    _connect(cfg)
    dep = Deployment(cfg, overrides)
    started = time.monotonic()
    try:
        dep.start()
        while cfg.deploy.duration_s is None or time.monotonic() - started < cfg.deploy.duration_s:
            dep.reconcile()
            log.info(status_line(dep.status()))
            time.sleep(cfg.deploy.status_every_s)  # status refresh period
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        dep.stop()
    return 0
