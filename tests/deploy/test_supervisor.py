"""ProcessSupervisor with real child processes: restarts, and no orphans when the supervisor
itself is SIGKILLed (the Ray worker case): ``die_with_parent`` and ``pid_file``; the restart
policy (restarts in a row or within a sliding window, growing backoff, a new row after a
healthy run, services restarted after a clean exit), the group of a dead child cleared
before its restart, and a stop cut short by ``hurry`` (a second SIGTERM to the child)."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from deploy.supervisor import ProcessSupervisor, reap_stale
from tests.ingest_helpers import REPO, wait_until

# a child that runs until it is signalled
IDLE = [sys.executable, "-c", "import signal; signal.pause()"]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_child_is_restarted_and_a_clean_exit_is_not(tmp_path):
    sup = ProcessSupervisor("idle", IDLE, backoff_s=0.1).start()
    first = sup.pid
    try:
        sup.kill()
        wait_until(lambda: sup.poll() and sup.pid != first, 30, "a restarted child")
        assert sup.restarts == 1 and sup.status().exits == [-signal.SIGKILL]
    finally:
        sup.stop(10)
    done = ProcessSupervisor("done", [sys.executable, "-c", "pass"]).start()
    done.proc.wait(30)
    assert done.poll() is False and done.restarts == 0


def test_a_new_supervisor_reaps_the_child_its_predecessor_left(tmp_path):
    pid_file = str(tmp_path / "idle.pid")
    orphan = ProcessSupervisor("idle", IDLE, pid_file=pid_file).start()
    successor = ProcessSupervisor("idle", IDLE, pid_file=pid_file)
    try:
        successor.start()   # as after a Ray restart: the old child must go first
        wait_until(lambda: gone(orphan.pid), 30, "the orphaned child to be killed")
        assert successor.alive and successor.pid != orphan.pid
        assert reap_stale(str(tmp_path / "missing.pid")) is None
    finally:
        successor.stop(10)
        orphan.stop(10)


def test_reap_stale_ignores_a_reused_pid(tmp_path):
    other = subprocess.Popen(IDLE)
    try:
        (tmp_path / "x.pid").write_text(f"{other.pid} 12345.0\n")   # same pid, other start time
        assert reap_stale(str(tmp_path / "x.pid")) is None
        assert other.poll() is None
    finally:
        other.kill()
        other.wait(10)


def test_children_die_with_a_sigkilled_supervisor(tmp_path):
    body = textwrap.dedent(f"""
        from deploy.supervisor import ProcessSupervisor
        import signal, sys
        sup = ProcessSupervisor("idle", {IDLE!r}, die_with_parent=True).start()
        print(sup.pid, flush=True)
        signal.pause()
    """)
    host = subprocess.Popen([sys.executable, "-c", body], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    child = int(host.stdout.readline())
    try:
        assert not gone(child)
        host.kill()            # no stop(), no finally: only the kernel can tell the child
        host.wait(30)
        wait_until(lambda: gone(child), 30, "the child of the SIGKILLed supervisor to exit")
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)


# a child that starts a grandchild, says so, and on SIGTERM exits 0 without stopping it
GRACEFUL = [sys.executable, "-c", textwrap.dedent("""
    import signal, subprocess, sys
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    grandchild = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    print("grandchild", grandchild.pid, flush=True)
    signal.pause()
""")]


def test_stop_lets_the_child_exit_cleanly_then_clears_its_group(tmp_path):
    sup = ProcessSupervisor("graceful", GRACEFUL, log_path=str(tmp_path / "logs" / "g.log"),
                            max_restarts=0).start()
    try:
        line = wait_until(lambda: sup.tail().strip(), 30, "the child's first line")
        grandchild = int(line.split()[1])
        assert sup.alive and sup.returncode is None
        assert sup.stop(30) == 0 and sup.returncode == 0     # its SIGTERM handler ran
        wait_until(lambda: gone(grandchild), 30, "the grandchild to be killed with the group")
        assert sup.tail(5) == (line + "\n")[-5:]
    finally:
        sup.stop(10)


# a role that drains after the first SIGTERM until a second one tells it to hurry
DRAINING = [sys.executable, "-c", textwrap.dedent("""
    from common.process import StopSignals
    signals = StopSignals().install()
    print("ready", flush=True)
    signals.stop.wait(120)
    print("draining", flush=True)
    print("hurried" if signals.hurry.wait(120) else "drained", flush=True)
""")]


def test_hurry_during_stop_sends_a_second_sigterm(tmp_path):
    sup = ProcessSupervisor("draining", DRAINING, log_path=str(tmp_path / "d.log"),
                            max_restarts=0, cwd=str(REPO)).start()
    hurry = threading.Event()

    def second_ctrl_c() -> None:     # the launcher's second signal, while stop() waits
        wait_until(lambda: "draining" in sup.tail(), 60, "the child to drain")
        hurry.set()
    try:
        wait_until(lambda: "ready" in sup.tail(), 60, "the child to install its handlers")
        threading.Thread(target=second_ctrl_c, daemon=True).start()
        started = time.monotonic()
        assert sup.stop(300, hurry=hurry) == 0
        assert time.monotonic() - started < 120           # not the 300 s of a clean stop
        assert sup.tail_lines(1) == ["hurried"]
    finally:
        sup.stop(10)


def test_a_crash_loop_gives_up_after_max_restarts_in_a_row_with_growing_backoff(tmp_path):
    crash = [sys.executable, "-c", "import sys; print('boom', flush=True); sys.exit(3)"]
    sup = ProcessSupervisor("crash", crash, log_path=str(tmp_path / "crash.log"),
                            max_restarts=2, backoff_s=0.05, max_backoff_s=0.1).start()
    backoffs = []
    try:
        def gave_up():
            sup.poll()
            if sup.restarting and len(backoffs) == sup.restarts:   # the wait before each
                backoffs.append(sup.next_backoff_s())
            return sup.gave_up
        wait_until(gave_up, 60, "the supervisor to give up")
        assert sup.restarts == 2 and sup.exits == [3, 3, 3] and sup.state == "failed"
        assert backoffs == [0.05, 0.1]                 # doubled, then capped
        assert sup.tail_lines(2) == ["boom", "boom"]
        assert sup.poll() is False and sup.restarts == 2   # no further restart
    finally:
        sup.stop(10)


def test_a_child_that_ran_long_enough_starts_a_new_row(tmp_path):
    sup = ProcessSupervisor("idle", IDLE, max_restarts=1, backoff_s=0.05,
                            healthy_after_s=0.5).start()
    try:
        for round_ in range(3):           # three deaths, each after a healthy run
            wait_until(lambda: time.time() - sup.started_at >= 0.5, 30, "a healthy run")
            first = sup.pid
            sup.kill()
            wait_until(lambda: sup.poll() and sup.pid != first, 30, "a restart")
            assert sup.in_a_row == 1 and not sup.gave_up
        assert sup.restarts == 3
        first = sup.pid
        sup.kill()                        # at once: a second death in a row
        wait_until(lambda: not sup.poll() and sup.gave_up, 30, "the supervisor to give up")
        assert sup.restarts == 3 and sup.state == "failed"
    finally:
        sup.stop(10)


def kill_and_see_restarted(sup: ProcessSupervisor) -> None:
    first = sup.pid
    sup.kill()
    wait_until(lambda: sup.poll() and sup.pid != first, 30, "a restart")


def test_restarts_within_the_window_count_and_one_more_death_retires_the_child(tmp_path):
    sup = ProcessSupervisor("idle", IDLE, max_restarts=2, window_s=600, backoff_s=0.05,
                            max_backoff_s=0.1).start()
    try:
        assert sup.next_backoff_s() == 0.05
        kill_and_see_restarted(sup)
        assert sup.counted_restarts() == 1 and sup.next_backoff_s() == 0.1   # doubled
        kill_and_see_restarted(sup)
        assert sup.counted_restarts() == 2 and sup.next_backoff_s() == 0.1   # capped
        sup.kill()
        wait_until(lambda: not sup.poll() and sup.gave_up, 30, "the supervisor to give up")
        assert sup.restarts == 2 and sup.state == "failed" and len(sup.exits) == 3
    finally:
        sup.stop(10)


def test_restarts_older_than_the_window_no_longer_count(tmp_path):
    sup = ProcessSupervisor("idle", IDLE, max_restarts=1, window_s=0.5,
                            backoff_s=0.05).start()
    try:
        for _ in range(3):        # one restart allowed in the window, three in all
            wait_until(lambda: sup.counted_restarts() == 0, 30, "the window to pass")
            kill_and_see_restarted(sup)
            assert not sup.gave_up
        assert sup.restarts == 3
    finally:
        sup.stop(10)


def test_a_service_is_restarted_after_a_clean_exit_too(tmp_path):
    marker = tmp_path / "runs"
    once = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    sup = ProcessSupervisor("svc", once, max_restarts=2, backoff_s=0.05,
                            restart_clean_exit=True).start()
    try:
        wait_until(lambda: not sup.poll() and sup.gave_up, 60, "two restarts, then give up")
        assert marker.read_text() == "xxx" and sup.exits == [0, 0, 0]
    finally:
        sup.stop(10)


def test_a_restart_clears_what_the_dead_child_left_in_its_group(tmp_path):
    sup = ProcessSupervisor("graceful", GRACEFUL, log_path=str(tmp_path / "g.log"),
                            backoff_s=0.05).start()
    try:
        line = wait_until(lambda: sup.tail().strip(), 30, "the child's first line")
        grandchild = int(line.split()[1])
        first = sup.pid
        sup.kill()                        # the child alone: its grandchild lives on ...
        wait_until(lambda: sup.poll() and sup.pid != first, 30, "a restart")
        wait_until(lambda: gone(grandchild), 30, "... until its death is seen: group cleared")
        assert sup.state == "running"
    finally:
        sup.stop(10)


def test_placement_pins_the_child_and_what_it_starts(tmp_path):
    import os
    cores = sorted(os.sched_getaffinity(0))
    code = ("import os, subprocess, sys; print(sorted(os.sched_getaffinity(0)), flush=True); "
            "subprocess.run([sys.executable, '-c', "
            "'import os; print(sorted(os.sched_getaffinity(0)))'])")
    sup = ProcessSupervisor("pinned", [sys.executable, "-c", code], max_restarts=0,
                            log_path=str(tmp_path / "pinned.log"), cpus=[cores[-1]]).start()
    wait_until(lambda: not sup.alive, 30, "the pinned child to finish")
    assert sup.returncode == 0
    lines = (tmp_path / "pinned.log").read_text().split()
    assert lines == [f"[{cores[-1]}]", f"[{cores[-1]}]"]     # the child and its own child


def test_nice_lowers_the_childs_priority_and_what_it_starts(tmp_path):
    base = os.nice(0)
    code = ("import os, subprocess, sys; print(os.nice(0), flush=True); "
            "subprocess.run([sys.executable, '-c', 'import os; print(os.nice(0))'])")
    sup = ProcessSupervisor("niced", [sys.executable, "-c", code], max_restarts=0,
                            log_path=str(tmp_path / "niced.log"), nice=5).start()
    wait_until(lambda: not sup.alive, 30, "the niced child to finish")
    assert sup.returncode == 0
    expected = str(min(base + 5, 19))
    assert (tmp_path / "niced.log").read_text().split() == [expected, expected]


def test_nice_holds_for_the_childs_autogroup(tmp_path):
    """Each child starts its own autogroup (setsid); under autogroup scheduling that
    group's nice is what ranks it against the other roles, so it must carry the value too."""
    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if not enabled.exists() or enabled.read_text().strip() != "1":
        pytest.skip("this kernel does not schedule by autogroup")
    code = "print(open('/proc/self/autogroup').read().split()[-1])"
    sup = ProcessSupervisor("niced", [sys.executable, "-c", code], max_restarts=0,
                            log_path=str(tmp_path / "niced.log"), nice=7).start()
    wait_until(lambda: not sup.alive, 30, "the niced child to finish")
    assert sup.returncode == 0
    assert (tmp_path / "niced.log").read_text().split() == [str(min(os.nice(0) + 7, 19))]


def test_role_commands_carry_each_roles_cores():
    from common.config import load_config
    from deploy.roles import placement_text, role_commands
    cfg = load_config(["num_actors=2", "placement.learner=[0]", "placement.actors=[1]",
                       "placement.actors_nice=0"])
    commands = role_commands(cfg, [], {}, range(2))
    assert {n: c.cpus for n, c in commands.items()} == {
        "store": (), "learner": (0,), "actor-0": (1,), "actor-1": (1,)}
    assert placement_text(commands) == "learner cpus 0, actor-0 cpus 1, actor-1 cpus 1"
    niced = role_commands(load_config(["num_actors=1", "placement.actors_nice=10"]), [], {},
                          range(1))
    assert {n: c.nice for n, c in niced.items()} == {"store": 0, "learner": 0, "actor-0": 10}
    assert placement_text(niced) == "actor-0 nice 10"
    hosted = load_config(["learner.host_store=true", "placement.learner=[0]",
                          "placement.store=[1]"])
    assert role_commands(hosted, [], {}, [])["learner"].cpus == (0, 1)
