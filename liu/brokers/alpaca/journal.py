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

    async def record_missed(self) -> list[str]: ...

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

    async def record_missed(self) -> list[str]:
        return []  # no database: no orders or trades rows to bring up to date

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

    async def record_missed(self) -> list[str]:
        """At a start, before any order: what Alpaca reported that no consumer was there to record (a fill of
        an order in flight when the gateway died, an update that came after its consumer had gone) goes into
        `orders` and `trades` as the journal has it, in one transaction with nothing else; the fill rows are
        the difference between the journal's filled quantity and the order's `trades` rows, so running it
        again adds nothing. Returns a line per order brought up to date."""
        async with self.lock, self.conn.transaction():
            stale = await self.conn.fetch(_STALE_ORDERS)
            lines = []
            for r in stale:
                have, value = r["have_qty"], r["have_value"]
                missing = r["filled_qty"] - have
                if missing > 1e-9:
                    price = (r["filled_qty"] * (r["filled_avg_price"] or 0.0) - value) / missing
                    await self.conn.execute(
                        _INSERT_FILL,
                        r["client_order_id"],
                        r["algo_run_id"],
                        r["batch_id"],
                        r["symbol"],
                        r["side"],
                        missing,
                        price,
                        r["updated_at"],
                    )
                    lines.append(
                        f"fill of {r['client_order_id']} ({r['side']} {missing:g} {r['symbol']} @ {price:.4f}) "
                        "made while no consumer listened: recorded"
                    )
                else:
                    lines.append(
                        f"order {r['client_order_id']}: {r['status']} (as Alpaca reported it): recorded"
                    )
                await self.conn.execute(_SETTLE_ORDER, r["client_order_id"])
        return lines

    async def close(self) -> None:
        async with self.lock:
            await self.conn.close()


_TEXT = frozenset({"parent_id", "leg", "broker_id", "reason"})

# Journaled orders whose `trades` rows or final state lag behind what Alpaca reported (the journal has it, settled
# with Alpaca just before); only ever forward: an `orders` row already final is left as it is.
_STALE_ORDERS = """
SELECT b.client_order_id, b.status, b.filled_qty, b.filled_avg_price, b.updated_at,
       o.algo_run_id, o.batch_id, o.symbol, o.side,
       COALESCE(t.qty, 0) AS have_qty, COALESCE(t.value, 0) AS have_value
FROM broker_orders b
JOIN orders o ON o.client_order_id = b.client_order_id
LEFT JOIN (SELECT client_order_id, sum(qty) AS qty, sum(qty * price) AS value FROM trades
           WHERE client_order_id IN (SELECT client_order_id FROM broker_orders) GROUP BY client_order_id) t
       ON t.client_order_id = b.client_order_id
WHERE b.filled_qty > COALESCE(t.qty, 0) + 1e-9
   OR (b.status IN ('filled', 'cancelled', 'expired', 'rejected', 'replaced')
       AND o.status NOT IN ('filled', 'cancelled', 'expired', 'rejected', 'replaced'))
ORDER BY b.created_at
"""
_INSERT_FILL = """INSERT INTO trades (client_order_id, algo_run_id, batch_id, symbol, side, qty, price, fee, filled_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)"""
_SETTLE_ORDER = """
UPDATE orders o SET status = b.status, filled_qty = b.filled_qty, filled_avg_price = b.filled_avg_price,
    reason = COALESCE(b.reason, o.reason), updated_at = b.updated_at,
    history = o.history || jsonb_build_array(jsonb_build_object(
        'status', b.status, 'ts', (extract(epoch FROM b.updated_at) * 1e9)::bigint, 'filled_qty', b.filled_qty,
        'filled_avg_price', b.filled_avg_price, 'reason', COALESCE(b.reason, '')))
FROM broker_orders b WHERE b.client_order_id = o.client_order_id AND o.client_order_id = $1
"""


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
