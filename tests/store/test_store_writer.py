"""TradeWriter: batched COPY writes, ordering, ns → timestamptz, surviving a database outage."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import UTC, datetime

import asyncpg
import pytest

from liu.events import Fill, Order
from liu.store import EmbeddedPostgres, TradeWriter, create_runs, upgrade
from liu.store.writer import ns_to_datetime
from tests.helpers import eventually_async

pytestmark = pytest.mark.db

BASE_NS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


def _order(i: int, strategy: str = "momo") -> Order:
    return Order(
        symbol=f"S{i % 50}",
        side="buy" if i % 2 == 0 else "sell",
        qty=float(i % 7 + 1),
        type="limit" if i % 3 == 0 else "market",
        limit_price=100.0 + i / 100 if i % 3 == 0 else None,
        stop=99.0,
        target=105.5,
        strategy=strategy,
        client_order_id=f"o-{i}",
        submitted_ts=BASE_NS + i * 1_001,
        status="new",
        indicators={"rsi": i % 100, "i": i},
    )


def _fill(i: int, strategy: str = "momo") -> Fill:
    return Fill(
        client_order_id=f"o-{i}",
        strategy=strategy,
        symbol=f"S{i % 50}",
        side="buy" if i % 2 == 0 else "sell",
        qty=float(i % 7 + 1),
        price=100.0 + i / 1000,
        fee=0.01,
        ts=BASE_NS + i * 1_001 + 500,
        stop=99.0,
        target=105.5,
        indicators={"i": i} if i % 2 else None,
    )


def test_ns_to_datetime() -> None:
    assert ns_to_datetime(BASE_NS) == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert ns_to_datetime(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert ns_to_datetime(1_999) == datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)


async def test_writes_10k_orders_and_fills(pg_dsn: str) -> None:
    runs = await create_runs(pg_dsn, "b1", "BACKTEST", [("momo", 0, {}), ("revert", 0, {})])
    run_ids = {name: rid for (name, _c), rid in runs.items()}
    w = await TradeWriter.open(pg_dsn, "b1", run_ids, flush_interval=0.05, max_batch=2000)
    n = 10_000
    for i in range(n):
        strategy = "momo" if i % 4 else "revert"
        order = _order(i, strategy)
        w.add_order(order)
        if i % 10 == 0:
            order.status, order.reason = "rejected", "no buying power"
        else:
            fill = _fill(i, strategy)
            order.status, order.filled_qty, order.avg_fill_price = "filled", fill.qty, fill.price
            w.add_fill(fill)
        order.updated_ts = order.submitted_ts + 500
        w.update_order(order)
        if i % 1000 == 0:
            await asyncio.sleep(0)  # let the background flusher run between bursts
    assert await w.close()
    assert w.orders_written == n
    assert w.fills_written == n - n // 10
    assert w.updates_written == n
    assert w.pending == 0

    conn = await asyncpg.connect(pg_dsn)
    try:
        orders = {r["client_order_id"]: r for r in await conn.fetch("SELECT * FROM orders")}
        fills = {r["client_order_id"]: r for r in await conn.fetch("SELECT * FROM trades")}
    finally:
        await conn.close()
    assert len(orders) == n and len(fills) == n - n // 10
    for i in (0, 1, 3, 10, 4_999, 9_999):
        o, src = orders[f"o-{i}"], _order(i, "momo" if i % 4 else "revert")
        assert o["algo_run_id"] == run_ids[src.strategy]
        assert o["batch_id"] == "b1"
        assert (o["symbol"], o["side"], o["qty"], o["order_type"]) == (
            src.symbol,
            src.side,
            src.qty,
            src.type,
        )
        assert o["limit_price"] == src.limit_price
        assert (o["stop_price"], o["target_price"]) == (99.0, 105.5)
        assert o["submitted_at"] == ns_to_datetime(src.submitted_ts)
        assert o["submitted_at"].microsecond == (src.submitted_ts // 1000) % 1_000_000
        assert o["status"] == ("rejected" if i % 10 == 0 else "filled")
        assert o["reason"] == ("no buying power" if i % 10 == 0 else "")
        assert o["filled_qty"] == (0.0 if i % 10 == 0 else src.qty)
        assert o["updated_at"] == ns_to_datetime(src.submitted_ts + 500)
        assert [h["status"] for h in json.loads(o["history"])] == ["new", o["status"]]
        if i % 10:
            f, fsrc = fills[f"o-{i}"], _fill(i, src.strategy)
            assert f["algo_run_id"] == run_ids[src.strategy]
            assert (f["qty"], f["price"], f["fee"]) == (fsrc.qty, fsrc.price, fsrc.fee)
            assert f["filled_at"] == ns_to_datetime(fsrc.ts)
            assert f["filled_at"].timestamp() * 1e6 == pytest.approx(fsrc.ts // 1000, abs=1)
            assert (f["indicators"] is None) == (fsrc.indicators is None)


async def test_fill_in_same_batch_as_its_order(pg_dsn: str) -> None:
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60)
    w.add_order(_order(1, "unknown"))  # strategy without a run id: algo_run_id NULL
    w.add_fill(_fill(1, "unknown"))
    assert w.pending == 2
    assert await w.flush()
    assert (w.orders_written, w.fills_written) == (1, 1)
    await w.close()


async def test_order_snapshot_taken_at_add(pg_dsn: str) -> None:
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60)
    o = _order(7)
    w.add_order(o)
    o.status = "mutated"
    await w.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT status FROM orders WHERE client_order_id = 'o-7'") == "new"
    finally:
        await conn.close()


async def test_keeps_rows_while_database_is_down(tmp_path, caplog) -> None:
    data = tmp_path / "pg"
    pg = EmbeddedPostgres.start(data)
    try:
        upgrade(pg.dsn)
        w = await TradeWriter.open(pg.dsn, "b1", {}, flush_interval=60)
        w.add_order(_order(0))
        assert await w.flush()

        pg.stop()
        for i in range(1, 101):
            w.add_order(_order(i))
            w.add_fill(_fill(i))
        w.update_order(dataclasses.replace(_order(0), status="filled", filled_qty=1.0, avg_fill_price=100.0))
        with caplog.at_level(logging.ERROR, logger="liu.store.writer"):
            assert not await w.flush()
            assert not await w.flush()
        assert w.pending == 201
        assert w.orders_written == 1 and w.fills_written == 0
        assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1  # once per streak

        w.add_fill(_fill(0))  # arrives while down, after the failed flushes
        pg = EmbeddedPostgres.start(data)
        assert await w.flush()
        assert w.pending == 0
        assert (w.orders_written, w.updates_written, w.fills_written) == (101, 1, 101)
        await w.close()

        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM orders") == 101
            assert await conn.fetchval("SELECT count(*) FROM trades") == 101
            row = await conn.fetchrow("SELECT status, history FROM orders WHERE client_order_id = 'o-0'")
            assert row["status"] == "filled"
            assert [h["status"] for h in json.loads(row["history"])] == ["new", "filled"]
        finally:
            await conn.close()
    finally:
        pg.stop()


async def test_background_flush_without_explicit_flush(pg_dsn: str) -> None:
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=0.05)
    w.add_order(_order(1))
    w.add_fill(_fill(1))
    conn = await asyncpg.connect(pg_dsn)
    try:

        async def in_database() -> bool:
            return (
                await conn.fetchval("SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM trades)")
                == 2
            )

        # The event itself: both rows in PostgreSQL, put there by the flusher alone (no flush() called).
        await eventually_async(in_database, 30, "the background flusher writing the order and its fill")
    finally:
        await conn.close()
    assert (w.orders_written, w.fills_written, w.pending) == (1, 1, 0)
    await w.close()


async def test_bad_row_is_dropped_not_blocking(pg_dsn: str, caplog) -> None:
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60)
    w.add_order(_order(1))
    w.add_fill(_fill(1))
    w.add_fill(_fill(2))  # its order was never added: foreign key violation
    w.add_order(_order(1))  # duplicate client_order_id
    with caplog.at_level(logging.ERROR, logger="liu.store.writer"):
        assert await w.flush()
    assert (w.orders_written, w.fills_written, w.rows_dropped) == (1, 1, 2)
    assert sum("dropped a row" in r.getMessage() for r in caplog.records) == 2
    w.add_order(_order(3))
    w.add_fill(_fill(3))
    assert await w.flush()
    assert (w.orders_written, w.fills_written, w.pending) == (2, 2, 0)
    await w.close()
