"""`trader` stopped by a signal under load (real processes, real signals, real PostgreSQL).

SIGTERM to the main process, and SIGINT to its whole process group (what a terminal's Ctrl-C sends), in
the middle of heavy trading: the daemon exits 0 within 10 s, the session ends once with the signal as
its reason, every fill and order the paper brokers made is in the database exactly once, the runs are
closed, and no process of the session is left.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from liu.events import OPEN_STATUSES
from liu.store import EmbeddedPostgres
from liu.watchdog import TAG_VAR
from tests.fault_helpers import (
    CHURN,
    count,
    fetch,
    plan_text,
    postmaster,
    socket_dsn,
    start_trader,
    stored_fills,
    summary_fills,
    tagged,
    wait_trader,
)
from tests.helpers import alive, eventually

pytestmark = [pytest.mark.slow, pytest.mark.db]

EXIT_WITHIN = 10.0  # seconds from the signal to the daemon's exit
UNDER_WAY = 1000  # fills in the database when the signal is sent: the consumers trade and write flat out
FILLS = "SELECT count(*) FROM trades"


def _stop_under_load(tmp_path: Path, send: str) -> None:
    """Start a heavily trading session meant to run 10 minutes, stop it with a signal once 1,000 fills are
    in the database (`send`: "SIGTERM" to the main process, "SIGINT" to its process group), check all."""
    sig = signal.Signals[send]
    proc = start_trader(
        tmp_path, plan_text(tmp_path, CHURN, "Churn", "10m", rate=4000), "run", own_group=True
    )
    pgdata = tmp_path / ".liu" / "pgdata"
    pm = eventually(lambda: postmaster(pgdata), 120, "trader's embedded PostgreSQL")
    dsn = socket_dsn(pgdata)
    eventually(lambda: count(dsn, FILLS) >= UNDER_WAY, 120, f"{UNDER_WAY} fills in the database")

    # The session's processes: the daemon, its watchdog, the forkserver, producer, consumers and
    # market-data server, and the PostgreSQL server with its backends (in a session of its own).
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    server = [psutil.Process(pm), *psutil.Process(pm).children()]
    (watchdog,) = [p for p in tree if "liu.watchdog" in p.cmdline()]
    tag = watchdog.environ()[TAG_VAR]
    assert len(tree) >= 6, [p.cmdline() for p in tree]
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)  # a group of its own, not the test's

    signalled = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # every process of the group, as Ctrl-C in a terminal
    else:
        proc.send_signal(sig)
    code = wait_trader(proc, tmp_path, "run", timeout=60)
    took = time.monotonic() - signalled
    out, err = (tmp_path / "run.out").read_text(), (tmp_path / "run.err").read_text()
    assert code == 0, err[-3000:]
    assert took < EXIT_WITHIN, f"exited {took:.1f}s after {send}; its log ends:\n{err[-3000:]}"

    # The session ended once, for the signal, without a traceback anywhere.
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["end_reason"] == send
    assert out.count("session ended:") == 1 and f"session ended: {send};" in out, out[-3000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err[-5000:]
    assert "ended without stopping" not in err  # the daemon stopped everything itself, not its watchdog
    assert summary["server_sent_events"] is not None  # the market-data server lived to answer its Stop
    for c, sent in zip(summary["consumers"], summary["sent_per_consumer"], strict=True):
        assert c["received"] == c["processed"] + c["stale"] + c["malformed"] == sent  # nothing lost in flight

    # Nothing of the session is left running: not its processes, not PostgreSQL.
    eventually(
        lambda: not [p for p in tree + server if alive(p)] and not tagged(TAG_VAR, tag),
        EXIT_WITHIN,
        f"every process of the session gone after {send}",
    )

    pg = EmbeddedPostgres.start(pgdata)  # trader stopped its server at the end: read what it left
    try:
        batch = summary["batch_id"]
        broker = summary_fills(summary)
        assert sum(broker.values()) >= UNDER_WAY
        assert stored_fills(pg.dsn, batch) == broker  # every fill, exactly once
        orders = fetch(
            pg.dsn, "SELECT client_order_id, status, tif, parent_id FROM orders WHERE batch_id = $1", batch
        )
        assert len(orders) == sum(c["orders"] for c in summary["consumers"])  # every order, one row
        assert max(Counter(o["client_order_id"] for o in orders).values()) == 1
        assert {o["client_order_id"] for o in orders if o["status"] == "filled"} == {k[0] for k in broker}
        assert not [o for o in orders if o["status"] in OPEN_STATUSES and o["tif"] != "gtc"]
        runs = fetch(pg.dsn, "SELECT end_reason, end_time FROM algo_run WHERE batch_id = $1", batch)
        assert [(r["end_reason"], r["end_time"] is not None) for r in runs] == [(send, True)] * 2
    finally:
        pg.stop()


def test_sigterm_under_load_exits_0_within_10s_with_every_row_written(tmp_path: Path) -> None:
    _stop_under_load(tmp_path, "SIGTERM")


def test_ctrl_c_to_the_process_group_under_load_exits_0_within_10s_with_every_row_written(
    tmp_path: Path,
) -> None:
    _stop_under_load(tmp_path, "SIGINT")
