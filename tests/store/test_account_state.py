"""Crash recovery in the database: crashed runs closed, stranded orders cancelled, the paper account continued
(cash, positions with their average price, open gtc orders) and restored into a paper broker."""

from __future__ import annotations

import asyncpg
import pytest

from liu.brokers.account import Account
from liu.brokers.base import Position
from liu.brokers.paper import PaperBroker
from liu.errors import ConfigError
from liu.events import Fill, Order
from liu.plan import parse_plan
from liu.store import SessionLock, TradeWriter, close_crashed_runs, close_runs, create_runs
from liu.store.account_state import load_previous, load_session, start_account
from liu.store.recovery import recover

pytestmark = pytest.mark.db

T0 = 1_700_000_000_000_000_000


def _order(cid: str, symbol: str, side: str, qty: float, **kw) -> Order:
    return Order(
        symbol, side, qty, strategy="s1", client_order_id=cid, submitted_ts=T0, status="accepted", **kw
    )


async def _session(dsn: str, batch: str, cash: float, persist: bool = True, previous=None) -> dict[str, int]:
    runs = await create_runs(dsn, batch, "PAPER", [("s1", 0, {})])
    await start_account(dsn, batch, cash, persist=persist, previous=previous)
    return {name: rid for (name, _), rid in runs.items()}


async def _first_session(dsn: str) -> None:
    """Batch A: buy 10 @ 10 (fee 1), sell 4 @ 12 (fee 1), short 5 of B @ 20; a gtc limit and a day limit
    still open; then the daemon dies (its run stays open)."""
    w = await TradeWriter.open(dsn, "A", await _session(dsn, "A", 1000.0), flush_interval=60)
    buy, sell = _order("A-1", "X", "buy", 10), _order("A-2", "X", "sell", 4)
    short = _order("A-3", "B", "sell", 5)
    gtc = _order("A-4", "X", "sell", 6, type="limit", limit_price=50.0, tif="gtc")
    day = _order("A-5", "X", "buy", 1, type="limit", limit_price=1.0)
    for o in (buy, sell, short, gtc, day):
        w.add_order(o)
    for cid, sym, side, qty, px in (
        ("A-1", "X", "buy", 10, 10.0),
        ("A-2", "X", "sell", 4, 12.0),
        ("A-3", "B", "sell", 5, 20.0),
    ):
        w.add_fill(Fill(cid, "s1", sym, side, qty, px, 1.0, T0 + 1))
    for o in (buy, sell, short):
        o.status, o.filled_qty, o.updated_ts = "filled", o.qty, T0 + 1
        w.update_order(o)
    assert await w.close()


async def _status(dsn: str) -> dict[str, tuple[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            r["client_order_id"]: (r["status"], r["reason"]) for r in await conn.fetch("SELECT * FROM orders")
        }
    finally:
        await conn.close()


async def test_crash_closes_runs_cancels_stranded_orders_and_the_account_continues(pg_dsn: str) -> None:
    await _first_session(pg_dsn)
    assert await close_crashed_runs(pg_dsn) == {"A": 1}
    assert await close_crashed_runs(pg_dsn) == {}  # closed once
    status = await _status(pg_dsn)
    assert status["A-5"] == ("cancelled", "session crashed")  # a day order cannot outlive its session
    assert status["A-4"][0] == "accepted"  # a gtc order of the persisted account waits for the next session

    prev = await load_previous(pg_dsn)
    assert prev is not None and prev.batch_id == "A"
    assert prev.cash == pytest.approx(1000 - 101 + 47 + 99)
    assert {k: (p.qty, p.avg_price, p.realized) for k, p in prev.positions.items()} == {
        ("s1", "X"): (6.0, 10.0, 0.0),
        ("s1", "B"): (-5.0, 20.0, 0.0),
    }
    assert [(o.client_order_id, o.type, o.limit_price, o.tif, o.strategy) for o in prev.orders] == [
        ("A-4", "limit", 50.0, "gtc", "s1")
    ]
    assert prev.prices == {"X": 12.0}

    # Session B continues it: its start is stored, and its consumers read the same state (plus its fills).
    runs = await _session(pg_dsn, "B", prev.cash, previous=prev)
    now = await load_session(pg_dsn, "B")
    assert (now.cash, now.positions.keys(), [o.client_order_id for o in now.orders]) == (
        prev.cash,
        prev.positions.keys(),
        ["A-4"],
    )
    w = await TradeWriter.open(pg_dsn, "B", runs, flush_interval=60)
    w.add_fill(Fill("A-4", "s1", "X", "sell", 6, 50.0, 0.0, T0 + 2))  # the restored order fills in B
    assert await w.close()
    assert (await load_session(pg_dsn, "B")).positions.keys() == {("s1", "B")}
    await close_runs(pg_dsn, "B", "session end")

    # A session that does not persist starts fresh and leaves the persisted account alone.
    await _session(pg_dsn, "C", 5000.0, persist=False)
    assert await load_session(pg_dsn, "C") is None
    latest = await load_previous(pg_dsn)
    assert latest.batch_id == "B" and latest.cash == pytest.approx(prev.cash + 300)
    assert {k: p.qty for k, p in latest.positions.items()} == {("s1", "B"): -5.0}


async def test_a_live_daemons_runs_are_not_called_crashed(pg_dsn: str) -> None:
    lock = SessionLock(pg_dsn, "live")
    assert await lock.keep()
    await create_runs(pg_dsn, "live", "PAPER", [("s1", 0, {})])
    await create_runs(pg_dsn, "dead", "PAPER", [("s1", 0, {}), ("s1", 1, {})])
    await create_runs(pg_dsn, "bt", "BACKTEST", [("s1", 0, {})])
    assert await close_crashed_runs(pg_dsn) == {"dead": 2}
    await lock.release()
    assert await close_crashed_runs(pg_dsn) == {"live": 1}


def test_paper_broker_restores_positions_and_orders() -> None:
    account = Account(1000.0)
    broker = PaperBroker(account, persist=True)
    entry = Order(
        "Y",
        "buy",
        2,
        "limit",
        limit_price=100.0,
        strategy="s1",
        client_order_id="e",
        tif="gtc",
        status="accepted",
        legs=("e-sl",),
        order_class="bracket",
        stop=90.0,
    )
    leg = Order(
        "Y",
        "sell",
        2,
        "stop",
        trigger_price=90.0,
        strategy="s1",
        client_order_id="e-sl",
        tif="gtc",
        status="held",
        parent_id="e",
        leg="stop_loss",
        order_class="bracket",
    )
    orphan = Order(
        "Z",
        "sell",
        1,
        "stop",
        trigger_price=5.0,
        strategy="s1",
        client_order_id="o-sl",
        tif="gtc",
        status="held",
        parent_id="gone",
        leg="stop_loss",
    )
    trail = Order(
        "W",
        "sell",
        1,
        "trailing_stop",
        trail_percent=5.0,
        strategy="s1",
        client_order_id="t",
        tif="gtc",
        status="accepted",
    )
    updates = broker.restore(
        {("s1", "B"): Position(-5.0, 20.0), ("s1", "X"): Position(6.0, 10.0)},
        [entry, leg, orphan, trail],
        {},
        7,
    )
    # The short holds proceeds and margin again (2 x 100), the limit buy its cash (2 x 100).
    assert account.reserved == pytest.approx(200 + 200)
    assert broker.position("s1", "X").qty == 6.0 and broker.positions("s1") == {"B": -5.0, "X": 6.0}
    assert sorted(o.client_order_id for o in broker.open_orders()) == ["e", "e-sl"]
    assert [(u.order.client_order_id, u.event, u.order.reason) for u in updates] == [
        ("o-sl", "cancelled", "not restored: entry gone not restored"),
        ("t", "cancelled", "not restored: no price seen yet for W"),
    ]
    # The restored entry fills like one placed here, and its leg starts working.
    out = broker.on_trade("Y", T0, 99.0, 10)
    assert [type(u).__name__ for u in out][:2] == ["Fill", "OrderUpdate"]
    assert broker.position("s1", "Y").qty == 2.0
    assert [o.status for o in broker.open_orders() if o.client_order_id == "e-sl"] == ["accepted"]
    # A persisted account's gtc orders outlive the session; without persist they would be cancelled.
    assert broker.end_session(T0 + 1) == []
    assert [o.client_order_id for o in broker.open_orders()] == ["e-sl"]
    fresh = PaperBroker(Account(1000.0))
    fresh.restore(
        {},
        [
            Order(
                "Y",
                "buy",
                1,
                "limit",
                limit_price=1.0,
                strategy="s1",
                client_order_id="g",
                tif="gtc",
                status="accepted",
            )
        ],
        {},
        0,
    )
    assert [u.event for u in fresh.end_session(T0)] == ["cancelled"]


def test_plan_persist_defaults_to_paper_trading_only() -> None:
    assert parse_plan({}).broker.persists("PAPER")
    assert not parse_plan({}).broker.persists("BACKTEST")
    assert not parse_plan({"broker": {"persist": False}}).broker.persists("PAPER")
    assert not parse_plan({"broker": {"kind": "alpaca"}}).broker.persists("PAPER")
    with pytest.raises(
        ConfigError, match=r"\[broker\] persist=true applies to the paper broker; kind='alpaca'"
    ):
        parse_plan({"broker": {"kind": "alpaca", "persist": True}})


async def test_a_running_sessions_account_is_not_taken_twice(pg_dsn: str, tmp_path) -> None:
    lock = SessionLock(pg_dsn, "L")
    assert await lock.keep()
    await _session(pg_dsn, "L", 1000.0)  # a persisted session, alive on this database
    with pytest.raises(ConfigError, match="in use by batch L"):
        await recover(pg_dsn, tmp_path, persist=True)
    assert (await recover(pg_dsn, tmp_path, persist=False)).account is None  # a fresh one may run beside it
    await lock.release()  # it dies: the next start closes it and continues its account
    rec = await recover(pg_dsn, tmp_path, persist=True)
    assert rec.crashed == {"L": 1} and rec.account.batch_id == "L" and rec.account.cash == 1000.0
