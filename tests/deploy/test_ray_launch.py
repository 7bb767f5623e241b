"""``pushcut deploy`` on a real local Ray head: placement, restarts and scaling.

A Ray head is started on this machine (``ray start --head`` on 127.0.0.1), the deploy driver
runs as its own OS process, and the test watches the real role processes: trajectories reach
the store and the learner advances versions; an actor whose process is SIGKILLed comes back
(by its RoleHost) and so does one whose Ray worker is SIGKILLed (by Ray), each generating
with the version current at its restart; ``pushcut deploy scale`` changes the live actor count.
"""
from __future__ import annotations

import bisect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from common.config.endpoints import ENDPOINTS
from tests.deploy.test_chaos import _all, learner_versions
from tests.ingest_helpers import REPO, wait_until
from tests.waiting import free_port

RAY = str(Path(sys.executable).with_name("ray"))


class RayHead:
    """A real Ray head in its own session; :meth:`stop` ends exactly its processes."""

    def __init__(self):
        self.port = free_port()
        # Ray's unix socket paths must stay short, so not under pytest's long tmp_path
        self.temp_dir = tempfile.mkdtemp(prefix="pcray", dir="/tmp")
        self.log = open(Path(self.temp_dir) / "ray-start.log", "wb")
        self.starter = subprocess.Popen(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
             "--num-cpus=4", "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={self.temp_dir}"], stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pgid = self.starter.pid
        code = self.starter.wait(180)
        assert code == 0, f"ray start failed:\n{self.output()}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return (Path(self.temp_dir) / "ray-start.log").read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """Every process of this head: its session's group and all their descendants."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == self.pgid:
                    found[proc.pid] = proc
                    found.update((c.pid, c) for c in proc.children(recursive=True))
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        return [p for p in found.values() if _running(p)]

    def stop(self) -> None:
        # `ray stop --force` would end every Ray on this shared machine: end only this head's
        kill_all(self.processes())
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_all(procs: list[psutil.Process], grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``grace_s``; waits until all are gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        procs = [p for p in alive if _running(p)]
        if not procs:
            return
    raise AssertionError(f"processes survive SIGKILL: {[p.pid for p in procs]}")


def role_processes(run_dir: Path, role: str) -> dict[str, psutil.Process]:
    """Live ``pushcut <role>`` processes of this run, by name (actor_id for actors)."""
    out = {}
    for proc in psutil.process_iter():
        try:
            argv = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if argv[2:4] != ["deploy.cli", role] or f"run_dir={run_dir}" not in argv \
                or not _running(proc):
            continue
        # deploy/roles.py passes ``++actor.actor_id='actor-<i>'``
        ids = [a.split("=", 1)[1].strip("'") for a in argv
               if a.lstrip("+").startswith("actor.actor_id=")]
        out[ids[-1] if ids else role] = proc
    return out


def deploy_overrides(tmp: Path, head: RayHead) -> list[str]:
    over = {"run_dir": tmp, "wandb": "false", "num_actors": 2, "store.path": tmp / "store",
            "learner.checkpoint_dir": tmp / "ckpt", "learner.poll_s": 0.05,
            "model.preset": "micro", "env.suite": "spatial", "env.max_steps": 16,
            "actor.num_envs": 2, "actor.resend_after_s": 1.0, "actor.weights_wait_s": 20,
            "actor.flush_timeout_s": 5,
            "algo.group_size": 2, "algo.groups_per_batch": 2, "algo.micro_batch_size": 4,
            "algo.success_lo": 0.0, "algo.success_hi": 1.0, "algo.max_staleness": 1000,
            "deploy.address": head.address, "deploy.namespace": f"pushcut-test-{head.port}",
            "deploy.advertise_host": "127.0.0.1", "deploy.bind_host": "127.0.0.1",
            **{f"deploy.ports.{e.name}": free_port() for e in ENDPOINTS},
            "deploy.status_every_s": 1}
    return [f"{k}={v}" for k, v in over.items()]


def pushcut(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", *args], cwd=REPO, **kw)


def version_at(run_dir: Path, t: float) -> int:
    times, versions = zip(*learner_versions(run_dir))
    i = bisect.bisect_right(times, t)
    return versions[i - 1] if i else 0


def first_after(run_dir: Path, actor_id: str, t: float):
    mine = [tr for tr in _all(run_dir) if tr.actor_id == actor_id and tr.created_at > t]
    return min(mine, key=lambda tr: tr.created_at) if mine else None


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_deploy_on_a_local_ray_head_restarts_and_scales_actors(tmp_path):
    t = time.monotonic()
    head = RayHead()
    print(f"ray head up in {time.monotonic() - t:.1f}s")
    over = deploy_overrides(tmp_path, head)
    driver_log = open(tmp_path / "driver.log", "wb")
    driver = pushcut("deploy", *over, stdout=driver_log, stderr=subprocess.STDOUT,
                     start_new_session=True)
    try:
        _check_deployment(tmp_path, head, over, driver)
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGINT)   # the driver stops every RoleHost it placed
            try:
                driver.wait(90)
            except subprocess.TimeoutExpired:
                driver.kill()
        def live_roles() -> list[psutil.Process]:
            return [p for role in ("store", "learner", "actor")
                    for p in role_processes(tmp_path, role).values()]
        # the roles are told to stop as the driver exits and take a moment to flush and go
        try:
            wait_until(lambda: not live_roles(), 60, "the role processes to exit")
        except AssertionError:
            pass
        leftovers = live_roles()
        kill_all(leftovers)
        head.stop()
        driver_log.close()
    assert not leftovers, f"role processes outlived the driver: {[p.pid for p in leftovers]}"
    assert not head.processes(), "Ray processes left behind"


def _check_deployment(tmp: Path, head: RayHead, over: list[str], driver) -> None:
    started = time.monotonic()

    def phase(what: str) -> None:   # shown by pytest on failure: where the time went
        print(f"{time.monotonic() - started:6.1f}s {what}")

    def alive_driver() -> None:
        assert driver.poll() is None, (tmp / "driver.log").read_text(errors="replace")[-3000:]

    def actors_up(n: int):
        alive_driver()
        procs = role_processes(tmp, "actor")
        return procs if len(procs) == n else None

    # placement: store + learner on the head RoleHost, two actors; data flows, versions advance
    wait_until(lambda: actors_up(2), 120, "two actor processes")
    wait_until(lambda: alive_driver() or (learner_versions(tmp) and
                                          learner_versions(tmp)[-1][1] >= 2), 240,
               "learner version 2 from trajectories sent through the deployment")
    assert _all(tmp), "the store holds no trajectories"
    phase("deployed: trajectories stored, learner at version 2")

    # a SIGKILLed actor process is restarted by its RoleHost
    old = role_processes(tmp, "actor")
    hosts = {name: proc.ppid() for name, proc in old.items()}   # the RoleHost workers
    old["actor-0"].kill()
    new0 = wait_until(lambda: (p := actors_up(2)) and p.get("actor-0") and
                      p["actor-0"].pid != old["actor-0"].pid and p["actor-0"], 60,
                      "actor-0 restarted after SIGKILL")

    # a SIGKILLed RoleHost (the Ray worker) is restarted by Ray, with a fresh actor process
    os.kill(hosts["actor-1"], signal.SIGKILL)
    new1 = wait_until(lambda: (p := actors_up(2)) and p.get("actor-1") and
                      p["actor-1"].pid != old["actor-1"].pid and p["actor-1"], 120,
                      "actor-1 restarted by Ray after its worker was SIGKILLed")
    assert new1.ppid() != hosts["actor-1"], "actor-1 came back under the dead worker"
    assert not psutil.pid_exists(old["actor-1"].pid) or not _running(
        psutil.Process(old["actor-1"].pid)), "the dead worker's actor process lingers"
    assert new0.ppid() == hosts["actor-0"], "actor-0 should come back under its RoleHost"
    phase("actor-0 restarted by its RoleHost, actor-1 by Ray")

    # each restarted actor generates with (at least) the version current at its restart; the
    # replacement's start time, since the SIGTERMed predecessor may still flush a group
    for actor_id, t in (("actor-0", new0.create_time()), ("actor-1", new1.create_time())):
        first = wait_until(lambda: alive_driver() or first_after(tmp, actor_id, t), 180,
                           f"a trajectory from {actor_id} after its restart")
        assert first.policy_version >= version_at(tmp, t), (
            f"{actor_id} restarted at version {version_at(tmp, t)} "
            f"but generated with {first.policy_version}")
    phase("restarted actors generated with the version current at their restart")

    # scaling while running
    address = [o for o in over if o.startswith(("deploy.address=", "deploy.namespace="))]
    for n in (3, 1):
        scale = pushcut("deploy", "scale", str(n), *address, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT)
        out, _ = scale.communicate(timeout=120)
        assert scale.returncode == 0 and f"desired actors: {n}" in out.decode(), out.decode()
        procs = wait_until(lambda: actors_up(n), 120, f"{n} live actor processes")
        phase(f"scaled to {n}")
    assert sorted(procs) == ["actor-0"], f"scaling down should keep actor-0, left {sorted(procs)}"
    assert set(role_processes(tmp, "learner")) == {"learner"}
    assert set(role_processes(tmp, "store")) == {"store"}
