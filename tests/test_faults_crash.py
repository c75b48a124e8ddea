"""The main `trader` process SIGKILLed with open paper positions and open gtc orders.

Nothing it started outlives it (its watchdog lets the children finish, kills the rest and stops the
embedded PostgreSQL), and the next start closes its runs as `crashed` and continues the paper account:
the same cash, the same positions with their average prices, the same open gtc orders.
"""

from __future__ import annotations

import json
import os
import signal
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from liu.store import EmbeddedPostgres
from liu.watchdog import TAG_VAR
from tests.fault_helpers import (
    HOLD,
    count,
    fetch,
    plan_text,
    postmaster,
    socket_dsn,
    start_trader,
    tagged,
    wait_trader,
)
from tests.helpers import alive, eventually

pytestmark = [pytest.mark.slow, pytest.mark.db]

CASH = 100_000.0  # [broker] cash by default
OPEN_GTC = "SELECT count(*) FROM orders WHERE tif = 'gtc' AND status = 'accepted'"


def _expected(dsn: str, batch: str) -> tuple[float, dict[str, tuple[float, float]]]:
    """The account after `batch`, from its fills alone: Hold only buys (its gtc sells rest far above)."""
    cash = CASH
    held: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # symbol -> [qty, cost]
    for f in fetch(dsn, "SELECT symbol, side, qty, price, fee FROM trades WHERE batch_id = $1", batch):
        assert f["side"] == "buy"
        cash -= f["qty"] * f["price"] + f["fee"]
        held[f["symbol"]][0] += f["qty"]
        held[f["symbol"]][1] += f["qty"] * f["price"]
    return cash, {s: (q, cost / q) for s, (q, cost) in held.items()}


def test_main_process_killed_nothing_outlives_it_and_the_next_start_continues_the_account(
    tmp_path: Path,
) -> None:
    proc = start_trader(tmp_path, plan_text(tmp_path, HOLD, "Hold", "10m"), "first")
    pgdata = tmp_path / ".liu" / "pgdata"
    pm = eventually(lambda: postmaster(pgdata), 120, "trader's embedded PostgreSQL")
    dsn = socket_dsn(pgdata)
    eventually(lambda: count(dsn, OPEN_GTC) >= 10, 120, "10 positions with their open gtc orders")
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    server = [psutil.Process(pm), *psutil.Process(pm).children()]
    (watchdog,) = [p for p in tree if "liu.watchdog" in p.cmdline()]
    tag = watchdog.environ()[TAG_VAR]  # the daemon set it after it started: its children carry it
    assert len(tree) >= 6 and all(p.environ().get(TAG_VAR) == tag for p in tree[1:])

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    eventually(
        lambda: not [p for p in tree + server if alive(p)] and not tagged(TAG_VAR, tag),
        60,
        "every process of the killed trader and its PostgreSQL gone",
    )
    err = (tmp_path / "first.err").read_text()
    assert f"trader (pid {proc.pid}) ended without stopping" in err
    assert f"PostgreSQL (pid {pm}) stopped" in err  # a clean shutdown, not a kill

    second = start_trader(tmp_path, plan_text(tmp_path, HOLD, "Hold", "4s"), "second")
    assert wait_trader(second, tmp_path, "second") == 0, (tmp_path / "second.err").read_text()[-3000:]
    summary = json.loads((tmp_path / "second.json").read_text())
    restored = summary["recovery"]["restored"]
    first_batch = restored["from_batch"]
    out = (tmp_path / "second.out").read_text()
    assert f"batch {first_batch} did not end cleanly: 2 runs closed as crashed" in out
    assert "paper account continues: cash" in out

    pg = EmbeddedPostgres.start(pgdata)
    try:
        runs = fetch(pg.dsn, "SELECT end_reason, end_time FROM algo_run WHERE batch_id = $1", first_batch)
        assert [(r["end_reason"], r["end_time"] is not None) for r in runs] == [("crashed", True)] * 2
        cash, positions = _expected(pg.dsn, first_batch)
        assert len(positions) >= 10
        # The second session started from exactly that account: in its summary and in the database.
        assert restored["cash"] == pytest.approx(cash)
        assert {sym: (q, pytest.approx(avg)) for _, sym, q, avg in restored["positions"]} == positions
        (account,) = fetch(pg.dsn, "SELECT * FROM accounts WHERE batch_id = $1", summary["batch_id"])
        assert (account["balance"], account["persist"], account["continues"]) == (
            pytest.approx(cash),
            True,
            first_batch,
        )
        start = fetch(pg.dsn, "SELECT * FROM account_positions WHERE batch_id = $1", summary["batch_id"])
        assert {r["symbol"]: (r["qty"], pytest.approx(r["avg_price"])) for r in start} == positions
        # Its open gtc orders continued too: each held position still has its resting sell, open now.
        gtc = fetch(pg.dsn, "SELECT * FROM orders WHERE batch_id = $1 AND tif = 'gtc'", first_batch)
        assert sorted(restored["orders"]) == sorted(o["client_order_id"] for o in gtc)
        assert {o["status"] for o in gtc} == {"accepted"}
        assert {o["symbol"]: o["qty"] for o in gtc} == {s: q for s, (q, _) in positions.items()}
        # The consumers traded on from there: what they hold at the end is the restored positions plus
        # the second session's own fills.
        held = {s: q for s, (q, _) in positions.items()}
        for f in fetch(
            pg.dsn, "SELECT symbol, side, qty FROM trades WHERE batch_id = $1", summary["batch_id"]
        ):
            held[f["symbol"]] = held.get(f["symbol"], 0.0) + (f["qty"] if f["side"] == "buy" else -f["qty"])
        reported: dict[str, float] = {}
        for c in summary["consumers"]:
            for sym, qty in c["strategies"]["hold"]["positions"].items():
                reported[sym] = reported.get(sym, 0.0) + qty
        assert reported == {s: q for s, q in held.items() if q}
    finally:
        pg.stop()
    assert not os.path.exists(tmp_path / ".liu" / "spool" / "run-ends.jsonl")
