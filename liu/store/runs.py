"""Run bookkeeping: algo_run rows, account cash, trending tickers, strategy keystore.

These run a few times per trading run (not on the hot path), so each call opens
its own short connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from liu.store.db import connection

ENVS = ("PAPER", "BACKTEST", "LIVE")


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


async def close_runs(dsn: str, batch_id: str, reason: str, consumer: int | None = None) -> int:
    """Set end_time/end_reason on the batch's still-open runs (optionally one consumer's); return count.

    Only open rows are touched, so the first recorded reason (e.g. a crash) is kept.
    """
    async with connection(dsn) as conn:
        status = await conn.execute(
            """
            UPDATE algo_run SET end_time = now(), end_reason = $2
            WHERE batch_id = $1 AND end_time IS NULL AND ($3::int IS NULL OR consumer = $3)
            """,
            batch_id,
            reason,
            consumer,
        )
    return int(status.split()[-1])


async def record_account(dsn: str, batch_id: str, cash: float, details: dict | None = None) -> int:
    """Record the run's starting cash (accounts row + portfolio row); return the account id."""
    async with connection(dsn) as conn, conn.transaction():
        account_id = await conn.fetchval(
            "INSERT INTO accounts (batch_id, balance, details) VALUES ($1, $2, $3::jsonb) RETURNING account_id",
            batch_id,
            float(cash),
            json.dumps(details or {}, default=str),
        )
        await conn.execute(
            """
            INSERT INTO portfolio (batch_id, account_id, size, parameters) VALUES ($1, $2, $3, '{}'::jsonb)
            ON CONFLICT (batch_id) DO UPDATE SET account_id = EXCLUDED.account_id, size = EXCLUDED.size
            """,
            batch_id,
            account_id,
            float(cash),
        )
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
