"""Run bookkeeping: algo_run rows, account cash, trending tickers, strategy keystore, and the runs a
crashed daemon left open.

These run a few times per trading run (not on the hot path), so each call opens
its own short connection (but `SessionLock`, which holds one for the session).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg

from liu.events import OPEN_STATUSES
from liu.store.db import close_quietly, connection

log = logging.getLogger(__name__)

ENVS = ("PAPER", "BACKTEST", "LIVE")
LOCK_SPACE = 0x6C6975  # "liu": the first key of the sessions' advisory locks (the second: the batch)
CRASHED = "crashed"


async def create_runs(
    dsn: str, batch_id: str, env: str, entries: list[tuple[str, int, dict]]
) -> dict[tuple[str, int], int]:
    """Insert one algo_run row per (algo_name, consumer, parameters); return their ids.

    One statement for all rows so startup costs one round trip however many strategies run.
    """
    env = env.upper()
    if env not in ENVS:
        raise ValueError(f"env must be one of {ENVS}, got {env!r}")
    if not entries:
        return {}
    names = [e[0] for e in entries]
    consumers = [int(e[1]) for e in entries]
    params = [json.dumps(e[2] or {}, default=str) for e in entries]
    async with connection(dsn) as conn:
        rows = await conn.fetch(
            """
            INSERT INTO algo_run (batch_id, algo_name, consumer, env, parameters)
            SELECT $1, n, c, $2, p::jsonb
            FROM unnest($3::text[], $4::int[], $5::text[]) WITH ORDINALITY AS u(n, c, p, i)
            ORDER BY i
            RETURNING id, algo_name, consumer
            """,
            batch_id,
            env,
            names,
            consumers,
            params,
        )
    return {(r["algo_name"], r["consumer"]): r["id"] for r in rows}


async def close_runs(
    dsn: str, batch_id: str, reason: str, consumer: int | None = None, end_time: datetime | None = None
) -> int:
    """Set end_time/end_reason on the batch's still-open runs (optionally one consumer's); return count.

    Only open rows are touched, so the first recorded reason (e.g. a crash) is kept. `end_time` (default
    now) is for an end recorded later than it happened (see `liu.store.spool.save_run_end`).
    """
    async with connection(dsn) as conn:
        status = await conn.execute(
            """
            UPDATE algo_run SET end_time = COALESCE($4, now()), end_reason = $2
            WHERE batch_id = $1 AND end_time IS NULL AND ($3::int IS NULL OR consumer = $3)
            """,
            batch_id,
            reason,
            consumer,
            end_time,
        )
    return int(status.split()[-1])


# Orders a crashed session left open can no longer fill: cancelled, with a history entry, except the
# good-till-cancelled orders of a persisted paper account, which the next persisted session restores.
CANCEL_STRANDED = """
UPDATE orders o SET status = 'cancelled', reason = 'session crashed',
    history = o.history || jsonb_build_array(jsonb_build_object(
        'status', 'cancelled', 'ts', NULL, 'filled_qty', o.filled_qty,
        'filled_avg_price', o.filled_avg_price, 'reason', 'session crashed'))
WHERE o.batch_id = ANY($1::text[]) AND o.status = ANY($2::text[])
  AND NOT (o.tif = 'gtc' AND EXISTS (SELECT 1 FROM accounts a WHERE a.batch_id = o.batch_id AND a.persist))
  -- an order sent to Alpaca lives on at the broker: the gateway's reconciliation restores or settles it
  AND NOT EXISTS (SELECT 1 FROM broker_orders b WHERE b.client_order_id = o.client_order_id)
"""


async def close_crashed_runs(dsn: str) -> dict[str, int]:
    """Close the runs of daemons that died without closing them: reason `crashed`; {batch_id: runs closed}.

    A batch whose `SessionLock` is held belongs to a daemon that is alive (another plan on a shared
    database) and is left alone, and so are backtests (they run in one process, with no daemon). The
    orders such a session left open are cancelled ("session crashed"), but the good-till-cancelled
    orders of a persisted paper account, which the next persisted session restores.
    """
    async with connection(dsn) as conn, conn.transaction():
        open_batches = await conn.fetch(
            "SELECT DISTINCT batch_id FROM algo_run WHERE end_time IS NULL AND env <> 'BACKTEST'"
        )
        crashed = [
            r["batch_id"]
            for r in open_batches
            if await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))", LOCK_SPACE, r["batch_id"]
            )
        ]
        if not crashed:
            return {}
        rows = await conn.fetch(
            """
            UPDATE algo_run SET end_time = now(), end_reason = $2
            WHERE batch_id = ANY($1::text[]) AND end_time IS NULL RETURNING batch_id
            """,
            crashed,
            CRASHED,
        )
        await conn.execute(CANCEL_STRANDED, crashed, sorted(OPEN_STATUSES))
    return dict(Counter(r["batch_id"] for r in rows))


class SessionLock:
    """A running daemon's claim on its batch: a session-level advisory lock, on a connection of its own.

    `close_crashed_runs` leaves a batch alone while its lock is held, so a daemon starting on a shared
    database never closes the runs of another that is alive. The lock goes with its connection: when the
    daemon dies (and its runs are then crashed ones), and when the server restarts (`keep` takes it again).
    """

    def __init__(self, dsn: str, batch_id: str) -> None:
        self.dsn = dsn
        self.batch_id = batch_id
        self._conn: asyncpg.Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def keep(self, timeout: float = 2.0) -> bool:
        """Hold the lock (again, after its connection was lost); False while the database is away."""
        try:
            if self._conn is not None and not self._conn.is_closed():
                await asyncio.wait_for(self._conn.fetchval("SELECT 1"), timeout)
                return True
        except Exception:  # noqa: BLE001 - the connection is gone: take the lock again below
            self._conn.terminate()  # type: ignore[union-attr]
        self._conn = None
        try:
            conn = await asyncpg.connect(self.dsn, timeout=timeout)
        except Exception:  # noqa: BLE001 - the database is away; the caller tries again later
            return False
        try:
            got = await asyncio.wait_for(
                conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_SPACE, self.batch_id),
                timeout,
            )
        except Exception:  # noqa: BLE001
            conn.terminate()
            return False
        if not got:  # cannot happen for a fresh batch id; never claim what another holds
            await conn.close()
            log.warning("session lock of batch %s is held by another connection", self.batch_id)
            return False
        self._conn = conn
        return True

    async def release(self) -> None:
        if self._conn is not None:
            await close_quietly(self._conn)
            self._conn = None


# A run's account size; shared with `liu.store.account_state.start_account`.
UPSERT_PORTFOLIO = """
INSERT INTO portfolio (batch_id, account_id, size, parameters) VALUES ($1, $2, $3, '{}'::jsonb)
ON CONFLICT (batch_id) DO UPDATE SET account_id = EXCLUDED.account_id, size = EXCLUDED.size
"""


async def record_account(dsn: str, batch_id: str, cash: float, details: dict | None = None) -> int:
    """Record the run's starting cash (accounts row + portfolio row); return the account id."""
    async with connection(dsn) as conn, conn.transaction():
        account_id = await conn.fetchval(
            "INSERT INTO accounts (batch_id, balance, details) VALUES ($1, $2, $3::jsonb) RETURNING account_id",
            batch_id,
            float(cash),
            json.dumps(details or {}, default=str),
        )
        await conn.execute(UPSERT_PORTFOLIO, batch_id, account_id, float(cash))
    return account_id


async def add_trending(dsn: str, batch_id: str, scanner: str, symbols: Iterable[str]) -> None:
    """Record the symbols a scanner picked (one executemany)."""
    rows = [(batch_id, s, scanner) for s in symbols]
    if not rows:
        return
    async with connection(dsn) as conn:
        await conn.executemany(
            "INSERT INTO trending_tickers (batch_id, symbol, scanner_name) VALUES ($1, $2, $3)", rows
        )


async def load_keystore(dsn: str, algo_name: str) -> dict[str, Any]:
    """A strategy's persisted key/values (JSON-decoded)."""
    async with connection(dsn) as conn:
        rows = await conn.fetch("SELECT key, value FROM keystore WHERE algo_name = $1", algo_name)
    return {r["key"]: json.loads(r["value"]) if r["value"] is not None else None for r in rows}


async def save_keystore(dsn: str, algo_name: str, items: dict[str, Any]) -> None:
    """Upsert a strategy's key/values in one batch; values must be JSON-serialisable."""
    if not items:
        return
    rows = [(algo_name, k, json.dumps(v)) for k, v in items.items()]
    async with connection(dsn) as conn:
        await conn.executemany(
            """
            INSERT INTO keystore (algo_name, key, value) VALUES ($1, $2, $3::jsonb)
            ON CONFLICT (algo_name, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
            """,
            rows,
        )
