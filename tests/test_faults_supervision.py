"""Supervision under real SIGKILLs: a dead consumer or producer is started again and the session goes on.

- A consumer killed mid-session: restarted, its symbols come back, its strategy continues its positions
  and open orders from the database (a forgetful restart would buy past the strategy's limit), what was
  routed to it meanwhile is counted as lost, and the session exits 0.
- The producer killed: restarted, subscribed again, the consumers read its new channels, the gap is
  reported.
- Past `[consumers] restarts`: the dead consumer stays dead and trading halts, and the summary says so.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections import defaultdict
from pathlib import Path

import pytest

from liu.store import EmbeddedPostgres
from tests.fault_helpers import (
    CYCLE,
    count,
    fetch,
    plan_text,
    postmaster,
    socket_dsn,
    start_trader,
    wait_trader,
)
from tests.helpers import ORDER_SEQ, eventually

pytestmark = [pytest.mark.slow, pytest.mark.db]

TRADES = "SELECT count(*) FROM trades"


def _pid(tmp_path: Path, tag: str, pattern: str) -> int:
    """A child's pid from the daemon's log line (`consumer 0 started (pid N)`, `producer started (pid N)`)."""

    def found() -> int | None:
        m = re.findall(pattern, (tmp_path / f"{tag}.err").read_text())
        return int(m[0]) if m else None

    return eventually(found, 120, f"the log line {pattern!r}")


def _started(tmp_path: Path, tag: str) -> str:
    """Wait until trading is under way (fills in the embedded database); return its DSN."""
    pgdata = tmp_path / ".liu" / "pgdata"
    eventually(lambda: postmaster(pgdata), 120, "trader's embedded PostgreSQL")
    dsn = socket_dsn(pgdata)
    eventually(lambda: count(dsn, TRADES) >= 200, 120, "200 fills in the database")
    return dsn


def _identity(summary: dict) -> None:
    """Every event routed to a consumer is accounted for, lost ones included."""
    for c, sent in zip(summary["consumers"], summary["sent_per_consumer"], strict=True):
        assert c["received"] == sent == c["processed"] + c["stale"] + c["malformed"] + c["lost"], c


def _positions_stay_within_the_strategy(dsn: str, batch: str) -> int:
    """Replay the batch's fills per symbol in order: Cycle never holds more than 10 shares nor goes short.
    Return the number of fills."""
    held: dict[str, float] = defaultdict(float)
    fills = fetch(dsn, "SELECT symbol, side, qty FROM trades WHERE batch_id = $1 ORDER BY id", batch)
    for f in fills:
        held[f["symbol"]] += f["qty"] if f["side"] == "buy" else -f["qty"]
        assert -1e-9 <= held[f["symbol"]] <= 10 + 1e-9, f"{f['symbol']}: position {held[f['symbol']]}"
    return len(fills)


def test_a_killed_consumer_is_restarted_and_continues_its_positions(tmp_path: Path) -> None:
    proc = start_trader(tmp_path, plan_text(tmp_path, CYCLE, "Cycle", "40s"), "run")
    victim = _pid(tmp_path, "run", r"consumer 0 started \(pid (\d+)\)")
    _started(tmp_path, "run")
    os.kill(victim, signal.SIGKILL)
    second = eventually(
        lambda: (
            (m := re.findall(r"consumer 0 started \(pid (\d+)\)", (tmp_path / "run.err").read_text()))[1:]
            and int(m[1])
        ),
        60,
        "consumer 0 started again",
    )
    assert second != victim
    assert wait_trader(proc, tmp_path, "run") == 0, (tmp_path / "run.err").read_text()[-3000:]

    summary = json.loads((tmp_path / "run.json").read_text())
    log = (tmp_path / "run.err").read_text()
    assert summary["end_reason"] == "session end"
    assert summary["restarts"] == {"consumer 0": 1}
    c0, c1 = summary["consumers"]
    assert (c0["restarts"], c1["restarts"]) == (1, 0)
    assert c0["lost"] > 0 and c1["lost"] == 0  # the events routed to it while it was down
    _identity(summary)
    assert "consumer 0 restarted and ready" in log
    assert "paper account: " in log  # the restarted consumer restored positions from the database

    pg = EmbeddedPostgres.start(tmp_path / ".liu" / "pgdata")
    try:
        batch = summary["batch_id"]
        assert _positions_stay_within_the_strategy(pg.dsn, batch) > 400
        # It traded again after the restart (its orders are numbered from 10⁹), on its own symbols.
        later = fetch(
            pg.dsn,
            "SELECT count(*) FROM orders WHERE batch_id = $1 AND client_order_id ~ '-0-1[0-9]{9}$'",
            batch,
        )[0][0]
        assert later > 0
        ids = [r[0] for r in fetch(pg.dsn, "SELECT client_order_id FROM orders WHERE batch_id = $1", batch)]
        assert len(ids) == len(set(ids))  # no order id twice
        runs = fetch(pg.dsn, "SELECT end_reason FROM algo_run WHERE batch_id = $1", batch)
        assert [r["end_reason"] for r in runs] == ["session end"] * 2
    finally:
        pg.stop()


def test_a_killed_producer_is_restarted_and_the_gap_reported(tmp_path: Path) -> None:
    proc = start_trader(tmp_path, plan_text(tmp_path, CYCLE, "Cycle", "40s"), "run")
    victim = _pid(tmp_path, "run", r"producer started \(pid (\d+)\)")
    dsn = _started(tmp_path, "run")
    os.kill(victim, signal.SIGKILL)
    eventually(
        lambda: "producer restarted" in (tmp_path / "run.err").read_text(), 60, "the producer restarted"
    )
    after = count(dsn, TRADES)
    eventually(lambda: count(dsn, TRADES) > after + 100, 60, "fills after the producer's restart")
    assert wait_trader(proc, tmp_path, "run") == 0, (tmp_path / "run.err").read_text()[-3000:]

    summary = json.loads((tmp_path / "run.json").read_text())
    log = (tmp_path / "run.err").read_text()
    assert summary["end_reason"] == "session end"
    assert summary["restarts"] == {"producer": 1}
    assert len(summary["gaps"]) == 1 and summary["gaps"][0] > 0
    assert log.count("reading the restarted producer's channel") == 2  # both consumers
    _identity(summary)
    assert all(c["restarts"] == 0 for c in summary["consumers"])


def test_past_the_restart_limit_trading_halts_and_the_session_goes_on(tmp_path: Path) -> None:
    plan = plan_text(tmp_path, CYCLE, "Cycle", "25s", consumers="restarts = 0")
    proc = start_trader(tmp_path, plan, "run")
    victim = _pid(tmp_path, "run", r"consumer 1 started \(pid (\d+)\)")
    _started(tmp_path, "run")
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: "trading halted" in (tmp_path / "run.err").read_text(), 60, "the halt")
    assert wait_trader(proc, tmp_path, "run") == 0, (tmp_path / "run.err").read_text()[-3000:]

    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["end_reason"] == "session end"
    assert summary["restarts"] == {}
    c0, c1 = summary["consumers"]
    assert c1["lost"] > 0 and c0["lost"] == 0
    _identity(summary)
    pg = EmbeddedPostgres.start(tmp_path / ".liu" / "pgdata")
    try:
        batch = summary["batch_id"]
        # Halted: consumer 0 goes on trading its symbols, and every buy it tries is refused. So no buy it
        # placed after its first refusal may have filled (its order ids number its orders as placed).
        own = f"{batch[:8]}-0-%"
        first, refused = fetch(
            pg.dsn,
            f"SELECT min({ORDER_SEQ}), count(*) FROM orders WHERE batch_id = $1 AND status = 'rejected' "
            "AND reason LIKE $2 AND client_order_id LIKE $3",
            batch,
            "risk halted%",
            own,
        )[0]
        assert refused >= 10  # on event after event: the session went on
        after = fetch(
            pg.dsn,
            "SELECT o.side, count(t.id) AS fills FROM orders o LEFT JOIN trades t USING (client_order_id) "
            f"WHERE o.batch_id = $1 AND client_order_id LIKE $2 AND {ORDER_SEQ} >= $3 GROUP BY o.side",
            batch,
            own,
            first,
        )
        fills = {r["side"]: r["fills"] for r in after}
        assert fills.get("buy", 0) == 0, fills
        runs = fetch(pg.dsn, "SELECT end_reason FROM algo_run WHERE batch_id = $1 ORDER BY id", batch)
        assert sorted(r["end_reason"] for r in runs) == ["consumer 1 died (exit code -9)", "session end"]
    finally:
        pg.stop()
