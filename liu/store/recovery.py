"""What a daemon does with the database around a session so that no fault loses or strands anything.

At start (`recover`), before anything else touches the database: write what earlier sessions left in
the spool (rows, and session ends the database could not record), close the runs of daemons that died
(`crashed`) and cancel their stranded orders, and read the persisted paper account to continue from.
While the session runs (`DatabaseGuard`): restart an embedded PostgreSQL that died, and keep the
session's lock. At the end (`end_runs`): close the session's runs, or leave the end in the spool when the
database is away, for the next start to record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from liu.errors import ConfigError
from liu.store.account_state import PaperAccount, load_previous
from liu.store.db import EmbeddedPostgres, connection
from liu.store.runs import SessionLock, close_crashed_runs, close_runs
from liu.store.spool import clear_run_ends, pending_run_ends, save_run_end, spool_dir
from liu.store.writer import Replayed, replay_spools

log = logging.getLogger(__name__)


@dataclass
class Recovery:
    """What the start found and did."""

    replayed: list[Replayed] = field(default_factory=list)
    run_ends: int = 0  # session ends recorded late (the database was away when they ended)
    crashed: dict[str, int] = field(default_factory=dict)  # batch_id -> runs closed as crashed
    account: PaperAccount | None = None  # the persisted paper account this session continues

    def lines(self) -> list[str]:
        """What to tell the person starting `trader`."""
        out = []
        written = [r for r in self.replayed if r.written]
        if written:
            out.append(
                f"spool: {sum(r.rows for r in written):,} rows that earlier sessions could not write are "
                f"in the database now ({len(written)} files)"
            )
        for r in self.replayed:
            if not r.written:
                out.append(f"[red]spool: {r.path} could not be written yet; it is kept for the next start[/]")
            if r.refused:
                out.append(
                    f"[yellow]spool: {r.refused} rows refused by the database, kept in {r.path.with_suffix('.refused')}[/]"
                )
        if self.run_ends:
            n = self.run_ends
            out.append(f"recorded the end of {n} session{'s' if n != 1 else ''} the database missed")
        for batch, n in self.crashed.items():
            out.append(f"batch {batch} did not end cleanly: {n} runs closed as crashed")
        if self.account is not None:
            out.append(f"paper account continues: {self.account.describe()}")
        return out

    def to_json(self) -> dict:
        return {
            "replayed_rows": sum(r.rows for r in self.replayed if r.written),
            "spool_files_left": [str(r.path) for r in self.replayed if not r.written],
            "crashed": self.crashed,
            "restored": self.account.to_json() if self.account is not None else None,
        }


async def recover(dsn: str, state_dir: Path, persist: bool) -> Recovery:
    """The start's clean-up (see the module docstring); `persist` reads the paper account to continue."""
    directory = spool_dir(state_dir)
    rec = Recovery()
    rec.replayed = await replay_spools(dsn, directory)
    ends = pending_run_ends(directory)
    for batch_id, reason, end_time in ends:
        rec.run_ends += bool(await close_runs(dsn, batch_id, reason, end_time=end_time))
    if ends:
        clear_run_ends(directory)
    rec.crashed = await close_crashed_runs(dsn)
    if persist:
        rec.account = await load_previous(dsn)
        if rec.account is not None and await _still_running(dsn, rec.account.batch_id):
            raise ConfigError(
                f"the persisted paper account is in use by batch {rec.account.batch_id}, a trader still running "
                "on this database; stop it first, or set [broker] persist = false (or use another database)"
            )
    return rec


async def _still_running(dsn: str, batch_id: str) -> bool:
    """Whether `batch_id` has open runs (after `close_crashed_runs`: its daemon is alive)."""
    async with connection(dsn) as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM algo_run WHERE batch_id = $1 AND end_time IS NULL", batch_id
            )
        )


async def end_runs(
    dsn: str, state_dir: Path, batch_id: str, reason: str, consumer: int | None = None
) -> bool:
    """Close the session's runs (or one consumer's); when the database is away, keep the end in the spool
    (`save_run_end`) for the next start. False when it had to be kept."""
    try:
        await close_runs(dsn, batch_id, reason, consumer)
        return True
    except Exception as exc:  # noqa: BLE001 - the database is away: the next start records it
        if consumer is None:
            path = save_run_end(spool_dir(state_dir), batch_id, reason)
            log.error(
                "cannot record the end of batch %s (%s: %s); kept in %s for the next start",
                batch_id,
                type(exc).__name__,
                exc,
                path,
            )
        return False


class DatabaseGuard:
    """Called every second or so while the session runs: restarts an embedded PostgreSQL that died (same
    data directory and socket, so every process reconnects to the same DSN) and keeps the session lock."""

    def __init__(self, embedded: EmbeddedPostgres | None, lock: SessionLock | None) -> None:
        self.embedded = embedded
        self.lock = lock
        self.restarts = 0
        self._restarting: asyncio.Task | None = None
        self._next_lock = 0.0

    async def check(self) -> None:
        if self._restarting is not None and self._restarting.done():
            exc = self._restarting.exception()
            self._restarting = None
            if exc is not None:
                log.error("embedded PostgreSQL restart failed: %s; trying again", exc)
        emb = self.embedded
        if emb is not None and self._restarting is None and not emb.running:
            log.error("embedded PostgreSQL in %s is not running: restarting it", emb.data_dir)
            self._restarting = asyncio.create_task(self._restart(emb))
        now = time.monotonic()
        if self.lock is not None and self._restarting is None and now >= self._next_lock:
            self._next_lock = now + 5.0
            await self.lock.keep()

    async def _restart(self, emb: EmbeddedPostgres) -> None:
        t0 = time.monotonic()
        await asyncio.to_thread(emb.restart)
        self.restarts += 1
        log.warning("embedded PostgreSQL restarted in %.1fs; writers send what waited", time.monotonic() - t0)
        if self.lock is not None:
            await self.lock.keep()

    async def close(self) -> None:
        if self._restarting is not None:
            try:
                await self._restarting
            except Exception:  # noqa: BLE001 - logged by check() otherwise; the session is ending
                log.exception("embedded PostgreSQL restart failed")
        if self.lock is not None:
            await self.lock.release()
