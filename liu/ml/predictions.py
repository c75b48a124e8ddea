"""Batched writer of model outputs to the `predictions` table, so they can be joined with outcomes later.

`add` (called by the scorer once per scored bar) appends a tuple; the consumer's 250 ms housekeeping
tick calls `flush`, which writes everything buffered with one COPY. If the database is unreachable the
rows stay buffered and the next flush retries them; `close` writes what is left.
"""

from __future__ import annotations

import logging

import numpy as np

from liu.store.writer import _CONNECTION_ERRORS, PG_EPOCH_US, _Connected, _first_line

log = logging.getLogger(__name__)

COLUMNS = ("batch_id", "model", "version", "symbol", "bar_ts", "outputs")


class PredictionWriter(_Connected):
    """One consumer's buffer of predictions and its own connection."""

    label = "prediction writer"

    def __init__(self, dsn: str, batch_id: str, connect_timeout: float = 5.0) -> None:
        super().__init__(dsn, connect_timeout)
        self.batch_id = batch_id
        self.written = 0
        self.dropped = 0
        self._rows: list[tuple] = []

    @classmethod
    async def open(cls, dsn: str, batch_id: str) -> PredictionWriter:
        self = cls(dsn, batch_id)
        await self._connect_or_raise()
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
                conn = await self._connection()
                await conn.copy_records_to_table("predictions", records=self._records(rows), columns=COLUMNS)
            except _CONNECTION_ERRORS as exc:
                self._rows = rows + self._rows
                self._write_failed(exc)
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
            self._write_worked()
            return True

    async def close(self) -> bool:
        """Write what is left and close; False if rows remain unwritten (logged)."""
        ok = await self.flush()
        if not ok:
            ok = await self.flush()  # one retry on a fresh connection
        return await self._close_connection(ok)
