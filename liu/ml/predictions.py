"""Batched writer of model outputs to the `predictions` table, so they can be joined with outcomes later.

`add` (called by the scorer once per scored bar) appends a tuple; the consumer's 250 ms housekeeping
tick calls `flush`, which writes everything buffered with one COPY. If the database is unreachable the
rows stay buffered and the next flush retries them; `close` writes what is left.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import numpy as np

from liu.errors import DatabaseError
from liu.store.db import HINT, redact_dsn
from liu.store.writer import _CONNECTION_ERRORS, PG_EPOCH_US, _connect, _first_line

log = logging.getLogger(__name__)

COLUMNS = ("batch_id", "model", "version", "symbol", "bar_ts", "outputs")


class PredictionWriter:
    """One consumer's buffer of predictions and its own connection."""

    def __init__(self, dsn: str, batch_id: str, connect_timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.batch_id = batch_id
        self.connect_timeout = connect_timeout
        self.written = 0
        self.failed_flushes = 0
        self.dropped = 0
        self._rows: list[tuple] = []
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._failing = False

    @classmethod
    async def open(cls, dsn: str, batch_id: str) -> PredictionWriter:
        self = cls(dsn, batch_id)
        try:
            self._conn = await _connect(dsn, self.connect_timeout)
        except Exception as exc:  # noqa: BLE001 - one line for the operator
            raise DatabaseError(
                f"database: prediction writer cannot connect to {redact_dsn(dsn)} "
                f"({type(exc).__name__}: {_first_line(exc)}); {HINT}"
            ) from None
        return self

    @property
    def pending(self) -> int:
        return len(self._rows)

    def add(self, model: str, version: int, symbol: str, bar_ts: int, outputs: np.ndarray) -> None:
        """Hot path: keep the tuple (outputs is the session's fresh array; converted at flush)."""
        self._rows.append((model, version, symbol, bar_ts, outputs))

    def _records(self, rows: list[tuple]) -> list[tuple]:
        b = self.batch_id
        return [(b, m, v, s, ts // 1000 - PG_EPOCH_US, out.tolist()) for (m, v, s, ts, out) in rows]

    async def flush(self) -> bool:
        """Write every buffered row with one COPY; False (rows kept) if the database is unreachable."""
        async with self._lock:
            if not self._rows:
                return True
            rows, self._rows = self._rows, []
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await _connect(self.dsn, self.connect_timeout)
                await self._conn.copy_records_to_table(
                    "predictions", records=self._records(rows), columns=COLUMNS
                )
            except _CONNECTION_ERRORS as exc:
                self._rows = rows + self._rows
                self.failed_flushes += 1
                if self._conn is not None:
                    self._conn.terminate()
                    self._conn = None
                if not self._failing:
                    self._failing = True
                    log.error(
                        "prediction writer: cannot write %d rows to %s (%s: %s); keeping them and retrying",
                        len(self._rows),
                        redact_dsn(self.dsn),
                        type(exc).__name__,
                        _first_line(exc),
                    )
                return False
            except Exception as exc:  # noqa: BLE001 - the database refuses the rows themselves: retrying cannot help
                self.dropped += len(rows)
                log.error(
                    "prediction writer: the database refused %d rows (%s: %s); %d dropped so far",
                    len(rows),
                    type(exc).__name__,
                    _first_line(exc),
                    self.dropped,
                )
                return True
            self.written += len(rows)
            if self._failing:
                self._failing = False
                log.warning(
                    "prediction writer: writes work again after %d failed flushes", self.failed_flushes
                )
            return True

    async def close(self) -> bool:
        """Write what is left and close; False if rows remain unwritten (logged)."""
        ok = await self.flush()
        if not ok:
            ok = await self.flush()  # one retry on a fresh connection
        if self._conn is not None:
            try:
                await self._conn.close(timeout=2)
            except Exception:  # noqa: BLE001
                self._conn.terminate()
            self._conn = None
        if not ok:
            log.error("prediction writer: closed with %d predictions not written", self.pending)
        return ok
