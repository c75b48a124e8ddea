"""The conftest's reaper: a test that fails (or times out) leaves no process behind, wherever it went.

Each inner test starts a tree shaped like a failing `trader` session: a child with a grandchild, a
process in a session of its own whose parent has exited (so it belongs to no tree any more), and an
embedded PostgreSQL whose starter has exited (the postmaster runs on, daemonised). Then it fails on
purpose, in a pytest run of its own; afterwards none of those pids is alive.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO

INNER = r'''
import json, os, subprocess, sys, textwrap, time
from pathlib import Path

import pytest

OUT = Path(os.environ["REAPER_OUT"])

TREE = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    py = sys.executable
    sleeper = [py, "-c", "import time; time.sleep(600)"]
    grandchild = subprocess.Popen(sleeper)
    # A middle process starts a session leader and exits at once: the leader is orphaned.
    orphan = Path(str(out) + ".orphan")
    subprocess.run(
        [py, "-c", "import subprocess, sys; from pathlib import Path; "
                   "p = subprocess.Popen(sys.argv[2:], start_new_session=True, stdout=subprocess.DEVNULL, "
                   "stderr=subprocess.DEVNULL); Path(sys.argv[1]).write_text(str(p.pid))", str(orphan), *sleeper],
        check=True,
    )
    # An embedded PostgreSQL whose starter exits without stopping it (as a killed trader would).
    subprocess.run(
        [py, "-c", "import os, sys; from liu.store.db import EmbeddedPostgres; "
                   "EmbeddedPostgres.start(sys.argv[1], database='postgres'); os._exit(0)", str(out) + ".pg"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    postmaster = int((Path(str(out) + ".pg") / "postmaster.pid").read_text().split()[0])
    out.write_text(" ".join(map(str, [grandchild.pid, int(orphan.read_text()), postmaster])))
    time.sleep(600)
""")


def start_tree(name):
    out = OUT / name
    child = subprocess.Popen([sys.executable, "-c", TREE, str(out)])
    end = time.monotonic() + 60
    while not out.exists() or not out.read_text():
        assert child.poll() is None, "the tree's root died"
        assert time.monotonic() < end, "the tree did not start within 60s"
        time.sleep(0.05)
    pids = [child.pid, *map(int, out.read_text().split())]
    (OUT / (name + ".pids")).write_text(json.dumps(pids))


def test_fails_with_a_tree_running():
    start_tree("failed")
    assert False, "fails on purpose"


@pytest.mark.timeout(10)
def test_times_out_with_a_tree_running():
    start_tree("timed_out")
    time.sleep(600)
'''


def _identity(pid: int) -> tuple[int, float] | None:
    try:
        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE else (pid, p.create_time())
    except psutil.Error:
        return None


def test_failed_and_timed_out_tests_leave_no_process(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest("from tests.conftest import reap_processes  # noqa: F401\n")
    pytester.makepyfile(test_inner=INNER)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("REAPER_OUT", str(out))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio", timeout=240)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*fails on purpose*", "*Timeout*"])
    result.stdout.fnmatch_lines(["*killed processes the test left running*"])
    for name in ("failed", "timed_out"):
        started = out / f"{name}.pids"
        assert started.exists(), (
            f"{name}: the inner test never started its tree\n{result.stdout.str()[-3000:]}"
        )
        pids = json.loads(started.read_text())
        assert len(pids) == 4 and os.getpid() not in pids
        alive = [pid for pid in pids if _identity(pid) is not None]
        assert not alive, f"{name}: still running after the test: {alive}"
