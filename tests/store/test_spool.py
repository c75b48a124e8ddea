"""The trade writer's spool: rows the database cannot take wait in a local file and reach it exactly once."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import pytest

from liu.events import Fill, Order
from liu.store import EmbeddedPostgres, TradeWriter, replay_spools, upgrade
from liu.store.db import dsn_for_database
from liu.store.spool import Spool, Unit, read_spool, spool_files
from tests.helpers import eventually

pytestmark = pytest.mark.db

BASE_NS = 1_700_000_000_000_000_000


def _order(i: int) -> Order:
    return Order(
        symbol=f"S{i % 7}",
        side="buy",
        qty=float(i % 5 + 1),
        strategy="momo",
        client_order_id=f"o-{i}",
        submitted_ts=BASE_NS + i * 1_000,
        status="accepted",
        indicators={"rsi": np.float64(30.5), "i": i},  # numpy values, as strategies put there
    )


def _fill(i: int) -> Fill:
    return Fill(
        f"o-{i}", "momo", f"S{i % 7}", "buy", float(i % 5 + 1), 100.0 + i / 100, 0.01, BASE_NS + i * 1_000 + 1
    )


def _filled(i: int) -> Order:
    o = _order(i)
    o.status, o.filled_qty, o.avg_fill_price, o.updated_ts = (
        "filled",
        o.qty,
        100.0 + i / 100,
        BASE_NS + i * 1_000 + 1,
    )
    return o


async def _rows(dsn: str) -> tuple[list, list]:
    conn = await asyncpg.connect(dsn)
    try:
        orders = await conn.fetch(
            "SELECT client_order_id, status, history FROM orders ORDER BY client_order_id"
        )
        fills = await conn.fetch("SELECT client_order_id, qty, price FROM trades ORDER BY client_order_id")
    finally:
        await conn.close()
    return orders, fills


def test_spool_file_keeps_units_and_ignores_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, "b1/c0", "b1", "c0")
    units = [
        Unit(1, [("o-1", np.int64(3), {"x": np.float64(1.5)})], [], []),
        Unit(2, [], [("o-1", "filled")], [("r",)]),
    ]
    spool.append(units)
    spool.close()
    size = spool.path.stat().st_size
    with open(spool.path, "ab") as f:  # a crash in the middle of the next append
        f.write(b"\x00\x00\x01\x00garbage")
    header, read, good = read_spool(spool.path)
    assert header == {"v": 1, "stream": "b1/c0", "batch_id": "b1"}
    assert [(u.seq, u.orders, u.updates, u.fills) for u in read] == [
        (1, [("o-1", 3, {"x": 1.5})], [], []),
        (2, [], [("o-1", "filled")], [("r",)]),
    ]
    assert good == size
    again = Spool.open(tmp_path, "b1/c0", "b1", "c0")  # a later process of the stream takes it over
    assert (again.units, again.rows, again.last_seq, again.path.stat().st_size) == (2, 3, 2, size)
    again.append([Unit(3, [("o-2",)], [], [])])
    assert [u.seq for u in again.read()] == [1, 2, 3]
    again.clear()
    assert spool_files(tmp_path) == []


async def test_rows_wait_in_the_spool_while_the_database_is_killed_and_arrive_once(tmp_path: Path) -> None:
    pg = EmbeddedPostgres.start(tmp_path / "pg")
    spool_dir = tmp_path / "spool"
    try:
        upgrade(pg.dsn)
        w = await TradeWriter.open(
            pg.dsn, "b1", {}, flush_interval=60, spool_dir=spool_dir, name="consumer-0"
        )
        seen: list[int] = []
        w.on_backlog = seen.append
        for i in range(10):
            w.add_order(_order(i))
        assert await w.flush()
        assert spool_files(spool_dir) == []  # nothing waited: no file at all

        os.kill(int((pg.data_dir / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
        eventually(lambda: not pg.running, 10, "the killed postmaster gone")
        for i in range(10):
            w.update_order(_filled(i))  # orders of the first unit, filled while the database is away
            w.add_fill(_fill(i))
        for i in range(10, 30):
            w.add_order(_order(i))
            w.add_fill(_fill(i))
            w.update_order(_filled(i))
            if i % 10 == 9:
                assert not await w.flush()
        assert w.backlog == 20 + 60 and seen[-1] == 80
        # The spool holds every row, fsynced, in the order they came.
        header, units, _ = read_spool(spool_dir / "b1-consumer-0.log")
        assert header["stream"] == "b1/consumer-0"
        assert [u.seq for u in units] == [2, 3]  # one unit per failed flush
        assert sum(len(u.fills) for u in units) == 30 and sum(len(u.orders) for u in units) == 20

        pg.restart()
        assert await w.flush()
        assert w.backlog == 0 and seen[-1] == 0
        assert spool_files(spool_dir) == []
        assert (w.orders_written, w.updates_written, w.fills_written) == (30, 30, 30)
        await w.close()
        orders, fills = await _rows(pg.dsn)
        assert len(orders) == 30 and len(fills) == 30
        assert {o["status"] for o in orders} == {"filled"}
        for o in orders:  # each change arrived once, after the insert
            assert [h["status"] for h in json.loads(o["history"])] == ["accepted", "filled"], o
    finally:
        pg.stop()


async def test_replay_skips_units_the_database_already_has(pg_dsn: str, tmp_path: Path) -> None:
    """A commit that went through but whose answer was lost: its unit is in the spool too, and is skipped."""
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60, spool_dir=tmp_path, name="c0")
    w.add_order(_order(1))
    w.add_fill(_fill(1))
    assert await w.flush()  # unit 1 committed (the mark moved with it)
    await w.close()
    # The same unit, as the writer had kept it when the connection died before the answer, then unit 2.
    again = TradeWriter(pg_dsn, "b1", {}, stream="b1/c0")
    again.add_order(_order(1))
    again.add_fill(_fill(1))
    unit1 = again._take()
    again.add_order(_order(2))
    again.add_fill(_fill(2))
    unit2 = again._take()
    assert (unit1.seq, unit2.seq) == (1, 2)
    Spool.open(tmp_path, "b1/c0", "b1", "c0").append([unit1, unit2])

    done = await replay_spools(pg_dsn, tmp_path)
    assert [(r.batch_id, r.rows, r.written) for r in done] == [("b1", 4, True)]
    orders, fills = await _rows(pg_dsn)
    assert [o["client_order_id"] for o in orders] == ["o-1", "o-2"]
    assert [f["client_order_id"] for f in fills] == ["o-1", "o-2"]
    assert spool_files(tmp_path) == []
    assert await replay_spools(pg_dsn, tmp_path) == []


async def test_a_database_refusing_writes_is_waited_for_not_dropped(pg_dsn: str, tmp_path: Path) -> None:
    """Read-only (or full, or out of connections) is the database refusing, not the rows: they wait."""
    db = urlsplit(pg_dsn).path.lstrip("/")
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60, spool_dir=tmp_path, name="c0")

    async def read_only(on: bool) -> None:
        conn = await asyncpg.connect(dsn_for_database(pg_dsn, "postgres"))
        try:
            await conn.execute(
                f'ALTER DATABASE "{db}" SET default_transaction_read_only = {"on" if on else "off"}'
            )
            await conn.execute(  # the writer's session must start again to see it
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                db,
            )
        finally:
            await conn.close()

    await read_only(True)
    for i in range(5):
        w.add_order(_order(i))
        w.add_fill(_fill(i))
    assert not await w.flush()
    assert w.rows_dropped == 0 and w.backlog == 10
    assert sum(u.rows for u in read_spool(tmp_path / "b1-c0.log")[1]) == 10
    await read_only(False)
    assert await w.flush()
    await w.close()
    orders, fills = await _rows(pg_dsn)
    assert (len(orders), len(fills), w.rows_dropped) == (5, 5, 0)


async def test_rows_the_database_refuses_are_kept_aside_not_retried(pg_dsn: str, tmp_path: Path) -> None:
    w = await TradeWriter.open(pg_dsn, "b1", {}, flush_interval=60, spool_dir=tmp_path, name="c0")
    w.add_order(_order(1))
    w.add_fill(_fill(1))
    w.add_fill(_fill(2))  # its order was never added: a foreign key violation
    assert await w.flush()
    assert (w.orders_written, w.fills_written, w.rows_dropped, w.backlog) == (1, 1, 1, 0)
    refused = [json.loads(line) for line in (tmp_path / "b1-c0.refused").read_text().splitlines()]
    assert [(r["kind"], r["row"][0]) for r in refused] == [("fill", "o-2")]
    assert "ForeignKeyViolation" in refused[0]["error"]
    assert spool_files(tmp_path) == []  # nothing waits to be replayed
    await w.close()
