"""The gateway's journal: each order is written before it is sent, and every change after.

`PgJournal` keeps it in PostgreSQL (`broker_orders`, migration 0005) over one connection of the
gateway's own, so the write before a send is one INSERT that does not wait for any consumer's buffered
writer. `MemoryJournal` is for runs without a database (nothing survives the process there).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from liu.events import Order
from liu.store.db import open_connection


@dataclass
class Row:
    """One journal row: who owns the order, what was asked, what the broker last said."""

    client_order_id: str
    batch_id: str
    consumer: int
    strategy: str
    symbol: str
    side: str
    qty: float
    parent_id: str = ""
    leg: str = ""
    request: dict | None = None
    broker_id: str = ""
    status: str = "new"
    filled_qty: float = 0.0
    filled_avg_price: float = 0.0
    reason: str = ""


class Journal(Protocol):
    async def add(self, row: Row) -> None: ...

    async def update(self, order: Order, broker_id: str) -> None: ...

    async def rows(self) -> list[Row]: ...

    async def close(self) -> None: ...


def row_of(order: Order, batch_id: str, consumer: int, request: dict | None) -> Row:
    return Row(
        order.client_order_id,
        batch_id,
        consumer,
        order.strategy,
        order.symbol,
        order.side,
        order.qty,
        order.parent_id,
        order.leg,
        request,
        status=order.status,
    )


class MemoryJournal:
    def __init__(self) -> None:
        self.data: dict[str, Row] = {}

    async def add(self, row: Row) -> None:
        self.data[row.client_order_id] = row

    async def update(self, order: Order, broker_id: str) -> None:
        row = self.data.get(order.client_order_id)
        if row is not None:
            row.broker_id = broker_id or row.broker_id
            row.status, row.reason = order.status, order.reason
            row.filled_qty, row.filled_avg_price = order.filled_qty, order.avg_fill_price

    async def rows(self) -> list[Row]:
        return list(self.data.values())

    async def close(self) -> None:
        pass


_INSERT = """INSERT INTO broker_orders (client_order_id, batch_id, consumer, strategy, symbol, side, qty,
    parent_id, leg, request, broker_id, status, filled_qty, filled_avg_price, reason)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULLIF($11, ''), $12, $13, $14, $15)
    ON CONFLICT (client_order_id) DO NOTHING"""
_UPDATE = """UPDATE broker_orders SET broker_id = COALESCE(NULLIF($2, ''), broker_id), status = $3,
    filled_qty = $4, filled_avg_price = $5, reason = $6, updated_at = now() WHERE client_order_id = $1"""


class PgJournal:
    """The journal in PostgreSQL; one connection, statements one at a time in call order (a lock: asyncpg
    refuses a second statement while one runs, and asyncio's lock wakes waiters first come first served)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, dsn: str) -> PgJournal:
        return cls(await open_connection(dsn, jsonb=True))

    async def add(self, row: Row) -> None:
        async with self.lock:
            await self.conn.execute(_INSERT, *_values(row))

    async def update(self, order: Order, broker_id: str) -> None:
        values = (
            order.client_order_id,
            broker_id,
            order.status,
            order.filled_qty,
            order.avg_fill_price,
            order.reason,
        )  # taken now: the order may change before the statement runs
        async with self.lock:
            await self.conn.execute(_UPDATE, *values)

    async def rows(self) -> list[Row]:
        async with self.lock:
            records = await self.conn.fetch(
                "SELECT client_order_id, batch_id, consumer, strategy, symbol, side, qty, parent_id, leg, request,"
                " broker_id, status, filled_qty, filled_avg_price, reason FROM broker_orders ORDER BY created_at"
            )
        out = [
            Row(**{k: ("" if v is None and k in _TEXT else v) for k, v in r.items()})  # type: ignore[arg-type]
            for r in records
        ]
        for row in out:
            row.filled_avg_price = row.filled_avg_price or 0.0
        return out

    async def close(self) -> None:
        async with self.lock:
            await self.conn.close()


_TEXT = frozenset({"parent_id", "leg", "broker_id", "reason"})


def _values(row: Row) -> tuple[Any, ...]:
    return (
        row.client_order_id,
        row.batch_id,
        row.consumer,
        row.strategy,
        row.symbol,
        row.side,
        row.qty,
        row.parent_id or None,
        row.leg or None,
        row.request,
        row.broker_id,
        row.status,
        row.filled_qty,
        row.filled_avg_price or None,
        row.reason or None,
    )
