"""The watchdog on its own: a daemon SIGKILLed leaves nothing behind, one that ends cleanly leaves the
watchdog nothing to do, and the next daemon on the same plan waits until the cleaning up is done."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil

from tests.helpers import eventually

# A stand-in for `trader`: starts its watchdog, then a child in a session of its own (so it is not in the
# daemon's process tree any more, as PostgreSQL's postmaster is not), writes both pids, and either ends
# cleanly ("bye") or waits to be killed.
DAEMON = r"""
import subprocess, sys, time
from pathlib import Path
from liu.watchdog import Watchdog

state, grace, out, mode = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
w = Watchdog.start(state, None, grace=grace)
child = subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
    start_new_session=True,
)
out.write_text(f"{w.proc.pid} {child.pid}")
if mode == "bye":
    child.kill()
    w.close()
    sys.exit(0)
time.sleep(600)
"""


def _daemon(tmp_path: Path, name: str, mode: str, grace: float = 1.0) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / f"{name}.pids"
    err = open(tmp_path / f"{name}.err", "w")  # noqa: SIM115 - the children hold it
    proc = subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(tmp_path / "state"), str(grace), str(out), mode], stderr=err
    )
    err.close()
    return proc, out


def _pids(out: Path) -> list[int]:
    return [int(p) for p in eventually(lambda: out.exists() and out.read_text(), 60, out.name).split()]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def test_a_killed_daemon_leaves_nothing_and_the_next_one_waits_for_the_clean_up(tmp_path: Path) -> None:
    first, out1 = _daemon(tmp_path, "first", "wait", grace=2.0)
    watchdog, child = _pids(out1)
    tags = {psutil.Process(p).environ()["LIU_SESSION_TAG"] for p in (watchdog, child)}
    assert len(tags) == 1  # the child carries the session's tag, though it left the tree
    first.send_signal(signal.SIGKILL)
    first.wait()
    second, out2 = _daemon(tmp_path, "second", "bye")  # starts while the first watchdog waits out its grace
    _pids(out2)
    assert _gone(child), "the second daemon started before the first one's processes were gone"
    eventually(lambda: _gone(watchdog), 30, "the first watchdog exiting")
    assert second.wait(30) == 0
    err = (tmp_path / "first.err").read_text()
    assert f"trader (pid {first.pid}) ended without stopping: killed 1 processes left after 2s" in err


def test_a_daemon_that_ends_cleanly_leaves_its_watchdog_nothing_to_do(tmp_path: Path) -> None:
    proc, out = _daemon(tmp_path, "clean", "bye")
    watchdog, _ = _pids(out)
    assert proc.wait(30) == 0
    eventually(lambda: _gone(watchdog), 10, "the watchdog exiting on bye")
    assert "ended without stopping" not in (tmp_path / "clean.err").read_text()
