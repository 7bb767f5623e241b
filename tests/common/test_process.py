"""The role-process shell (common/process.py) in real OS processes: a first SIGTERM sets stop
and the role ends cleanly, a second signal sets hurry (or, with exit_on_hurry, ends the
process at once), an unexpected argument is one line on stderr and exit status 2, and log
lines go to stderr while stdout keeps only what the role prints."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]

# a role main as the roles write theirs; "--drain" waits for hurry after stop, as an actor
# waits for its acks; "--exit-on-hurry" never ends by itself once stopped
ROLE = """
import logging, sys, threading
from common.process import USAGE_ERROR, StopSignals, setup_logging, unexpected_arguments

def main(args):
    if unexpected_arguments("probe", args, allowed=["--drain", "--exit-on-hurry"],
                            expected="only --drain, --exit-on-hurry"):
        return USAGE_ERROR
    setup_logging()
    log = logging.getLogger("probe")
    signals = StopSignals(log, stopping="probing",
                          exit_on_hurry="--exit-on-hurry" in args).install()
    log.info("a log line")
    print("ready", flush=True)
    if not signals.stop.wait(120):
        return 3
    print("stop", flush=True)
    if "--drain" in args and signals.hurry.wait(120):
        print("hurry", flush=True)
    if "--exit-on-hurry" in args:
        threading.Event().wait(120)
        return 4
    print("stopped", signals.received, flush=True)
    return 0

sys.exit(main(sys.argv[1:]))
"""


class Role:
    """The probe role as a child process, its stdout and stderr in files."""

    def __init__(self, tmp_path: Path, *args: str):
        self.out, self.err = tmp_path / "stdout", tmp_path / "stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", ROLE, *args], cwd=REPO,
                                         stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.out.read_text()

    def wait_printed(self, word: str) -> None:
        wait_until(lambda: word in self.stdout().split(), 60, f"{word!r} on stdout",
                   proc=self.proc)

    def send(self, sig: int, then: str | None = None) -> None:
        """``sig`` once the handlers are in place; then wait until ``then`` is printed (the
        signal was handled, so that a next one is never merged into it by the kernel)."""
        self.wait_printed("ready")
        self.proc.send_signal(sig)
        if then is not None:
            self.wait_printed(then)

    def exit_code(self) -> int:
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def start_role(tmp_path):
    """-> start(*args): a Role, killed at the end of the test if it still runs."""
    started: list[Role] = []
    yield lambda *args: started.append(Role(tmp_path, *args)) or started[-1]
    for role in started:
        role.kill()


def test_sigterm_sets_stop_and_the_role_ends_cleanly(start_role):
    role = start_role()
    role.send(signal.SIGTERM)
    assert role.exit_code() == 0
    assert role.stdout().split("\n")[:3] == ["ready", "stop", f"stopped [{signal.SIGTERM}]"]
    err = role.err.read_text()
    assert "a log line" in err and "signal SIGTERM: probing" in err
    assert "a log line" not in role.stdout()     # stdout is the role's own


def test_a_second_signal_sets_hurry(start_role):
    role = start_role("--drain")
    role.send(signal.SIGTERM, then="stop")
    assert "hurry" not in role.stdout()
    role.send(signal.SIGINT)
    assert role.exit_code() == 0
    assert role.stdout().split("\n")[2:4] == [
        "hurry", f"stopped [{signal.SIGTERM}, {signal.SIGINT}]"]
    assert "signal SIGINT again: hurrying" in role.err.read_text()


def test_exit_on_hurry_leaves_at_once_with_128_plus_the_signal(start_role):
    role = start_role("--exit-on-hurry")
    role.send(signal.SIGINT, then="stop")
    role.send(signal.SIGTERM)
    assert role.exit_code() == 128 + signal.SIGTERM
    assert "Traceback" not in role.err.read_text()


def test_an_unexpected_argument_is_one_line_and_exit_status_2(start_role):
    role = start_role("--drain", "stray")
    assert role.exit_code() == 2
    assert role.err.read_text() == ("pushcut probe: unexpected argument(s) "
                                    "['--drain', 'stray'] (only --drain, --exit-on-hurry)\n")
    assert role.stdout() == ""
