"""PostgreSQL killed under a running `trader` (real processes, real SIGKILL): nothing lost, nothing twice.

- Killed during heavy trading and restarted (by the daemon, for its embedded server): the session goes on,
  the rows that waited in the spool meanwhile arrive, and the database ends up with exactly the fills and
  orders the paper brokers made.
- Killed for good (a server the test started and passed as a DSN): the session still ends normally; the
  spool files hold every row the database lacks; the next start writes them, once.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from liu.store import EmbeddedPostgres, upgrade
from liu.store.spool import pending_run_ends, read_spool, spool_files
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
    wait_trader,
)
from tests.helpers import eventually

pytestmark = [pytest.mark.slow, pytest.mark.db]

TRADES = "SELECT count(*) FROM trades"


def _orders_placed(summary: dict) -> int:
    return sum(c["orders"] for c in summary["consumers"])


def test_postgres_killed_during_heavy_trading_is_restarted_and_every_row_arrives_once(tmp_path: Path) -> None:
    proc = start_trader(tmp_path, plan_text(tmp_path, CHURN, "Churn", "30s", rate=4000), "run")
    pgdata = tmp_path / ".liu" / "pgdata"
    first = eventually(lambda: postmaster(pgdata), 120, "trader's embedded PostgreSQL")
    dsn = socket_dsn(pgdata)
    before = eventually(lambda: (n := count(dsn, TRADES)) >= 300 and n, 120, "300 fills in the database")

    os.kill(first, signal.SIGKILL)
    eventually(lambda: postmaster(pgdata) not in (None, first), 60, "the daemon restarting PostgreSQL")
    eventually(lambda: count(dsn, TRADES) > before + 300, 60, "fills written after the restart")
    assert wait_trader(proc, tmp_path, "run") == 0, (tmp_path / "run.err").read_text()[-3000:]

    summary = json.loads((tmp_path / "run.json").read_text())
    log = (tmp_path / "run.err").read_text()
    assert summary["end_reason"] == "session end"
    assert summary["db_restarts"] >= 1 and summary["db_backlog"] == [0, 0]
    assert "spooling them to" in log and "the database takes writes again" in log  # the spool was used
    assert spool_files(tmp_path / ".liu" / "spool") == []  # and is empty at the end

    pg = EmbeddedPostgres.start(pgdata)  # trader stopped its server at the end
    try:
        batch = summary["batch_id"]
        broker = summary_fills(summary)
        assert sum(broker.values()) > 600
        assert stored_fills(pg.dsn, batch) == broker  # every fill, exactly once
        orders = fetch(pg.dsn, "SELECT client_order_id, status FROM orders WHERE batch_id = $1", batch)
        assert len(orders) == _orders_placed(summary)
        filled = {o["client_order_id"] for o in orders if o["status"] == "filled"}
        assert filled == {k[0] for k in broker}  # every fill's order ended filled, and only those
        runs = fetch(pg.dsn, "SELECT end_reason FROM algo_run WHERE batch_id = $1", batch)
        assert [r["end_reason"] for r in runs] == ["session end"] * 2
    finally:
        pg.stop()


def test_postgres_down_through_the_end_the_spool_holds_everything_and_the_next_start_writes_it(
    tmp_path: Path,
) -> None:
    pg = EmbeddedPostgres.start(tmp_path / "pg")
    try:
        upgrade(pg.dsn)
        plan = plan_text(tmp_path, CHURN, "Churn", "14s", dsn=pg.dsn)
        proc = start_trader(tmp_path, plan, "first")
        eventually(lambda: count(pg.dsn, TRADES) >= 200, 120, "200 fills in the database")
        os.kill(int((pg.data_dir / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
        assert wait_trader(proc, tmp_path, "first") == 0, (tmp_path / "first.err").read_text()[-3000:]

        summary = json.loads((tmp_path / "first.json").read_text())
        batch = summary["batch_id"]
        assert summary["end_reason"] == "session end"  # the session did not end because of the database
        assert sum(summary["db_backlog"]) > 0
        # The progress line said how many rows waited.
        assert "rows waiting in the spool" in (tmp_path / "first.err").read_text()
        spool = tmp_path / ".liu" / "spool"
        files = spool_files(spool)
        assert sorted(f.name for f in files) == [f"{batch}-consumer-0.log", f"{batch}-consumer-1.log"]
        units = [u for f in files for u in read_spool(f)[1]]
        # A spooled fill is a `trades` record: client_order_id, algo_run_id, batch_id, symbol, side, qty, price...
        spooled = Counter(
            (r[0], r[3], r[4], float(r[5]), round(float(r[6]), 6)) for u in units for r in u.fills
        )
        assert {r[2] for u in units for r in u.fills} == {batch}
        assert [(b, reason) for b, reason, _ in pending_run_ends(spool)] == [(batch, "session end")]

        pg.restart()  # the database is back; what it has is what was written before the kill
        broker = summary_fills(summary)
        missing = broker - stored_fills(pg.dsn, batch)
        assert sum(missing.values()) > 100
        assert not missing - spooled, "fills neither in the database nor in the spool"
        assert not spooled - broker, "the spool holds fills the brokers never made"
        runs = fetch(pg.dsn, "SELECT end_time FROM algo_run WHERE batch_id = $1", batch)
        assert [r["end_time"] for r in runs] == [None, None]  # its end is in the spool too

        plan = plan_text(tmp_path, CHURN, "Churn", "3s", dsn=pg.dsn)
        assert wait_trader(start_trader(tmp_path, plan, "second"), tmp_path, "second") == 0
        out = (tmp_path / "second.out").read_text()
        assert "rows that earlier sessions could not write are in the database now" in out
        assert "recorded the end of 1 session the database missed" in out
        assert stored_fills(pg.dsn, batch) == broker  # every fill, exactly once
        assert len(fetch(pg.dsn, "SELECT 1 FROM orders WHERE batch_id = $1", batch)) == _orders_placed(
            summary
        )
        runs = fetch(pg.dsn, "SELECT end_reason FROM algo_run WHERE batch_id = $1", batch)
        assert [r["end_reason"] for r in runs] == ["session end"] * 2  # not "crashed": its end was kept
        assert spool_files(spool) == [] and pending_run_ends(spool) == []
    finally:
        pg.stop()
