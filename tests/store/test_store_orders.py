"""TradeWriter and the order lifecycle: every order row ends with its latest state and full history."""

from __future__ import annotations

import dataclasses
import json
import logging

import asyncpg
import pytest

from liu.events import Fill, Order
from liu.store import TradeWriter
from liu.store.writer import ns_to_datetime

T0 = 1_700_000_000_123_456_789


def _entry(status: str, ts: int, qty: float = 0.0, avg: float | None = None, reason: str = "") -> dict:
    return {"status": status, "ts": ts, "filled_qty": qty, "filled_avg_price": avg, "reason": reason}


async def _rows(dsn: str, table: str = "orders") -> dict[str, dict]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f"SELECT * FROM {table} ORDER BY id" if table == "trades" else "SELECT * FROM orders"
        )
    finally:
        await conn.close()
    out: dict[str, dict] = {}
    for r in rows:
        d = dict(r)
        if "history" in d:
            d["history"] = json.loads(d["history"])
            out[d["client_order_id"]] = d
        else:
            out.setdefault(d["client_order_id"], []).append(d)
    return out


def _bracket_steps() -> tuple[list[tuple[str, object]], dict]:
    """A bracket entry accepted, filled in two pieces, and its legs activated: the calls a runner makes,
    each with a snapshot of the order at that moment."""
    entry = Order(
        "AAPL",
        "buy",
        10.0,
        type="limit",
        limit_price=100.0,
        stop=98.0,
        target=104.0,
        strategy="momo",
        client_order_id="e-1",
        submitted_ts=T0,
        tif="gtc",
        order_class="bracket",
        indicators={"rsi": 28},
    )
    legs = {
        name: Order(
            "AAPL",
            "sell",
            10.0,
            type=typ,
            limit_price=104.0 if name == "take_profit" else None,
            trigger_price=98.0 if name == "stop_loss" else None,
            strategy="momo",
            client_order_id=f"e-1-{name}",
            submitted_ts=T0 + 1,
            status="held",
            tif="gtc",
            order_class="bracket",
            parent_id="e-1",
            leg=name,
            updated_ts=T0 + 1,
        )
        for name, typ in (("stop_loss", "stop"), ("take_profit", "limit"))
    }
    fills = [
        Fill("e-1", "momo", "AAPL", "buy", 4.0, 99.9, 0.01, T0 + 2, 98.0, 104.0),
        Fill("e-1", "momo", "AAPL", "buy", 6.0, 100.0, 0.01, T0 + 3, 98.0, 104.0),
    ]
    avg = (4 * 99.9 + 6 * 100.0) / 10
    steps: list[tuple[str, object]] = [("add", dataclasses.replace(entry))]

    def change(order: Order, **fields) -> None:
        for k, v in fields.items():
            setattr(order, k, v)
        steps.append(("update", dataclasses.replace(order)))

    change(entry, status="accepted", updated_ts=T0 + 1, legs=tuple(o.client_order_id for o in legs.values()))
    steps += [("add", dataclasses.replace(o)) for o in legs.values()]
    steps.append(("fill", fills[0]))
    change(entry, status="partially_filled", filled_qty=4.0, avg_fill_price=99.9, updated_ts=T0 + 2)
    steps.append(("fill", fills[1]))
    change(entry, status="filled", filled_qty=10.0, avg_fill_price=avg, updated_ts=T0 + 3)
    for leg in legs.values():
        change(leg, status="accepted", updated_ts=T0 + 3)
    expected = {
        "entry": _entry("new", T0),
        "history": [
            _entry("new", T0),
            _entry("accepted", T0 + 1),
            _entry("partially_filled", T0 + 2, 4.0, 99.9),
            _entry("filled", T0 + 3, 10.0, avg),
        ],
        "avg": avg,
        "fills": fills,
    }
    return steps, expected


@pytest.mark.parametrize(
    "flush_after",
    ["end", "every call", "adds"],
    ids=["one batch", "a batch per call", "added, then updated in a later batch"],
)
async def test_bracket_lifecycle_rows_and_history(pg_dsn: str, flush_after: str) -> None:
    steps, want = _bracket_steps()
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60)
    for i, (kind, item) in enumerate(steps):
        {"add": w.add_order, "update": w.update_order, "fill": w.add_fill}[kind](item)
        if flush_after == "every call" or (flush_after == "adds" and i == 3):
            assert await w.flush()
    assert await w.close()
    assert (w.orders_written, w.updates_written, w.fills_written, w.rows_dropped) == (3, 5, 2, 0)
    if flush_after == "end":  # updates folded into the inserted rows: no row was ever updated
        conn = await asyncpg.connect(pg_dsn)
        try:
            assert sorted(r[0] for r in await conn.fetch("SELECT ctid::text FROM orders")) == [
                "(0,1)",
                "(0,2)",
                "(0,3)",
            ]
        finally:
            await conn.close()

    orders = await _rows(pg_dsn)
    assert set(orders) == {"e-1", "e-1-stop_loss", "e-1-take_profit"}
    e = orders["e-1"]
    assert (e["status"], e["filled_qty"], e["filled_avg_price"], e["reason"]) == (
        "filled",
        10.0,
        want["avg"],
        "",
    )
    assert (e["order_type"], e["limit_price"], e["stop_price"], e["target_price"]) == (
        "limit",
        100.0,
        98.0,
        104.0,
    )
    assert (e["tif"], e["order_class"], e["parent_id"], e["leg"]) == ("gtc", "bracket", None, None)
    assert e["legs"] == ["e-1-stop_loss", "e-1-take_profit"]
    assert e["submitted_at"] == ns_to_datetime(T0)
    assert e["updated_at"] == ns_to_datetime(T0 + 3)
    assert e["history"] == want["history"]

    for name, typ, trigger, limit in (
        ("stop_loss", "stop", 98.0, None),
        ("take_profit", "limit", None, 104.0),
    ):
        leg = orders[f"e-1-{name}"]
        assert (leg["parent_id"], leg["leg"], leg["order_class"], leg["legs"]) == (
            "e-1",
            name,
            "bracket",
            None,
        )
        assert (leg["side"], leg["order_type"], leg["trigger_price"], leg["limit_price"]) == (
            "sell",
            typ,
            trigger,
            limit,
        )
        assert (leg["status"], leg["filled_qty"], leg["filled_avg_price"]) == ("accepted", 0.0, None)
        assert leg["history"] == [_entry("held", T0 + 1), _entry("accepted", T0 + 3)]
        assert leg["updated_at"] == ns_to_datetime(T0 + 3)

    trades = await _rows(pg_dsn, "trades")
    assert list(trades) == ["e-1"]  # fills are written once, for the entry only
    assert [(t["qty"], t["price"], t["filled_at"]) for t in trades["e-1"]] == [
        (f.qty, f.price, ns_to_datetime(f.ts)) for f in want["fills"]
    ]


async def test_add_order_writes_every_field(pg_dsn: str) -> None:
    trailing = Order(
        "MSFT",
        "sell",
        5.0,
        type="trailing_stop",
        trail_percent=1.5,
        trail_price=None,
        strategy="momo",
        client_order_id="t-1",
        submitted_ts=T0,
        tif="day",
        status="accepted",
        updated_ts=T0 + 7,
        replaces="t-0",
    )
    stop_limit = Order(
        "MSFT",
        "buy",
        3.0,
        type="stop_limit",
        trigger_price=301.0,
        limit_price=302.5,
        trail_price=2.0,
        strategy="momo",
        client_order_id="t-2",
        submitted_ts=T0 + 1,
        tif="ioc",
        status="rejected",
        reason="risk max_order_notional: order notional 907.50 > limit 500.00",
    )
    w = await TradeWriter.open(pg_dsn, "b1", {"momo": None}, flush_interval=60)
    w.add_order(trailing)
    w.add_order(stop_limit)
    assert await w.close()
    rows = await _rows(pg_dsn)
    t = rows["t-1"]
    assert (t["order_type"], t["trail_percent"], t["trail_price"], t["trigger_price"], t["tif"]) == (
        "trailing_stop",
        1.5,
        None,
        None,
        "day",
    )
    assert (t["replaces"], t["replaced_by"], t["order_class"]) == ("t-0", None, "simple")
    assert t["updated_at"] == ns_to_datetime(T0 + 7)
    assert t["history"] == [_entry("accepted", T0 + 7)]
    s = rows["t-2"]
    assert (s["order_type"], s["trigger_price"], s["limit_price"], s["trail_price"], s["tif"]) == (
        "stop_limit",
        301.0,
        302.5,
        2.0,
        "ioc",
    )
    assert (s["status"], s["reason"]) == ("rejected", stop_limit.reason)
    assert s["updated_at"] == ns_to_datetime(T0 + 1)  # no status change yet: the submit time
    assert s["history"] == [_entry("rejected", T0 + 1, reason=stop_limit.reason)]


async def test_replace_links_both_orders_and_links_stay(pg_dsn: str) -> None:
    old = Order("AAPL", "buy", 10.0, type="limit", limit_price=99.0, client_order_id="r-1", submitted_ts=T0)
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60)
    w.add_order(old)
    assert await w.flush()
    stale = dataclasses.replace(old, status="accepted", updated_ts=T0 + 1)  # taken before the replace
    old.status, old.replaced_by, old.updated_ts = "replaced", "r-2", T0 + 2
    new = dataclasses.replace(
        old, client_order_id="r-2", limit_price=99.5, status="accepted", replaced_by="", replaces="r-1"
    )
    w.update_order(stale)
    w.update_order(old)
    w.add_order(new)
    assert await w.flush()
    w.update_order(dataclasses.replace(old, replaced_by="", reason="late report", updated_ts=T0 + 3))
    assert await w.close()
    rows = await _rows(pg_dsn)
    assert (rows["r-1"]["status"], rows["r-1"]["replaced_by"], rows["r-1"]["replaces"]) == (
        "replaced",
        "r-2",
        None,
    )
    assert [h["status"] for h in rows["r-1"]["history"]] == ["new", "accepted", "replaced", "replaced"]
    assert rows["r-1"]["history"][-1]["reason"] == "late report"
    assert (rows["r-2"]["replaces"], rows["r-2"]["replaced_by"], rows["r-2"]["limit_price"]) == (
        "r-1",
        None,
        99.5,
    )


@pytest.mark.parametrize("flush_between", [False, True], ids=["same batch", "across batches"])
async def test_a_snapshot_without_links_keeps_the_links_set_before(pg_dsn: str, flush_between: bool) -> None:
    leg = Order(
        "AAPL",
        "sell",
        1.0,
        client_order_id="l-1",
        submitted_ts=T0,
        status="held",
        order_class="bracket",
        parent_id="e-9",
        leg="stop_loss",
        legs=("x",),
        replaces="l-0",
        replaced_by="l-2",
    )
    unlinked = dict(parent_id="", leg="", legs=(), replaces="", replaced_by="")
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60)
    w.add_order(leg)
    if flush_between:
        assert await w.flush()
    w.update_order(dataclasses.replace(leg, status="accepted", updated_ts=T0 + 1, **unlinked))
    w.update_order(dataclasses.replace(leg, status="cancelled", updated_ts=T0 + 2, **unlinked))
    assert await w.flush()
    w.update_order(
        dataclasses.replace(leg, status="cancelled", reason="again", updated_ts=T0 + 3, **unlinked)
    )
    assert await w.close()
    row = (await _rows(pg_dsn))["l-1"]
    assert (row["parent_id"], row["leg"], row["legs"], row["replaces"], row["replaced_by"]) == (
        "e-9",
        "stop_loss",
        ["x"],
        "l-0",
        "l-2",
    )
    assert [(h["status"], h["reason"]) for h in row["history"]] == [
        ("held", ""),
        ("accepted", ""),
        ("cancelled", ""),
        ("cancelled", "again"),
    ]


@pytest.mark.parametrize("flush_between", [False, True], ids=["same batch", "across batches"])
async def test_a_change_reported_twice_is_one_history_entry(pg_dsn: str, flush_between: bool) -> None:
    o = Order(
        "AAPL", "buy", 1.0, client_order_id="d-1", submitted_ts=T0, status="accepted", updated_ts=T0 + 1
    )
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60)
    w.add_order(o)
    if flush_between:
        assert await w.flush()
    w.update_order(o)  # the same state the add already recorded
    w.update_order(o)
    assert await w.flush()
    w.update_order(o)
    o.reason = "now with a reason"
    w.update_order(o)
    assert await w.close()
    assert w.updates_written == 4
    assert (await _rows(pg_dsn))["d-1"]["history"] == [
        _entry("accepted", T0 + 1),
        _entry("accepted", T0 + 1, reason="now with a reason"),
    ]


async def test_refused_update_is_dropped_without_blocking_others(pg_dsn: str, caplog) -> None:
    a = Order("AAPL", "buy", 1.0, client_order_id="a", submitted_ts=T0)
    b = Order("AAPL", "buy", 2.0, client_order_id="b", submitted_ts=T0)
    c = Order("MSFT", "buy", 3.0, client_order_id="c", submitted_ts=T0, status="accepted")
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60)
    w.add_order(a)
    w.add_order(b)
    assert await w.flush()
    w.update_order(dataclasses.replace(a, status=None, updated_ts=T0 + 1))  # status is NOT NULL
    w.update_order(
        dataclasses.replace(b, status="filled", filled_qty=2.0, avg_fill_price=50.0, updated_ts=T0 + 2)
    )
    w.add_order(c)
    w.update_order(
        dataclasses.replace(c, status="filled", filled_qty=3.0, avg_fill_price=10.0, updated_ts=T0 + 3)
    )
    w.add_fill(Fill("c", "", "MSFT", "buy", 3.0, 10.0, 0.0, T0 + 3))
    with caplog.at_level(logging.ERROR, logger="liu.store.writer"):
        assert await w.flush()
    assert w.rows_dropped == 1
    assert sum("dropped a row" in r.getMessage() for r in caplog.records) == 1
    assert (w.orders_written, w.updates_written, w.fills_written) == (3, 2, 1)
    w.update_order(dataclasses.replace(a, status="cancelled", updated_ts=T0 + 4))
    assert await w.close()
    rows = await _rows(pg_dsn)
    assert [h["status"] for h in rows["a"]["history"]] == ["new", "cancelled"]
    assert (rows["b"]["status"], rows["b"]["filled_qty"], rows["b"]["filled_avg_price"]) == (
        "filled",
        2.0,
        50.0,
    )
    assert rows["c"]["history"] == [_entry("accepted", T0), _entry("filled", T0 + 3, 3.0, 10.0)]
    assert len((await _rows(pg_dsn, "trades"))["c"]) == 1
