"""Recent minute bars for warm-up and gap back-fill: from `stock_ohlc` when fresh, else Alpaca's REST.

A consumer asks for the last N bars of the symbols it has just been given (warm-up), or for the bars
after each symbol's last closed bar (back-fill after a reconnect). Only complete minutes are returned
(a bar whose minute has not ended yet would be revised by the live stream).

How far back to ask: N bars of a liquid stock span N minutes of extended hours (04:00-20:00 New York,
weekdays); a crypto pair trades every minute. Symbols that come back short (thin IEX prints, a holiday)
get one wider second request. What still cannot be loaded is reported per symbol, never silently.
"""

from __future__ import annotations

import asyncio
import logging
import time as _time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime

from liu.sources.alpaca.calendar import NY
from liu.sources.alpaca.client import AlpacaData, AlpacaError, Credentials, Endpoints, is_crypto

log = logging.getLogger(__name__)
NS = 1_000_000_000
MINUTE = 60 * NS
_WIDEN = 5  # the second request spans this many times the first window
_MAX_DAYS = 30  # never look further back than this for a warm-up


@dataclass(frozen=True)
class HistorySource:
    """Where a consumer loads history from; picklable (it crosses into the consumer process)."""

    endpoints: Endpoints
    credentials: Credentials
    bars: int  # bars each new symbol needs (the longest lookback in the plan)
    dsn: str | None = None  # stock_ohlc is read first when there is a database
    fresh: float = 120.0  # stored bars ending at most this many seconds ago count as fresh


@dataclass
class Loaded:
    """What one load returned: bars per symbol (oldest first), why others have none, and their origin."""

    bars: dict[str, list[tuple]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    from_db: set[str] = field(default_factory=set)
    seconds: float = 0.0


def stock_window_start(end_ns: int, minutes: int) -> int:
    """The time `minutes` extended-hours minutes (04:00-20:00 New York, weekdays) before `end_ns`."""
    end = datetime.fromtimestamp(end_ns / NS, NY)
    day, limit = end.date(), end
    for _ in range(_MAX_DAYS + 1):
        if day.weekday() < 5:
            lo = datetime.combine(day, dtime(4, 0), NY)
            hi = min(limit, datetime.combine(day, dtime(20, 0), NY))
            if hi > lo:
                have = (hi - lo).total_seconds() / 60
                if have >= minutes:
                    return int((hi - timedelta(minutes=minutes)).timestamp()) * NS
                minutes -= int(have)
        day -= timedelta(days=1)
        limit = datetime.combine(day, dtime(23, 59), NY)
    return end_ns - _MAX_DAYS * 86_400 * NS


def window_start(symbol: str, end_ns: int, bars: int) -> int:
    minutes = (bars * 11 + 9) // 10 + 5  # 10 % more, for minutes without a bar
    if is_crypto(symbol):
        return end_ns - minutes * MINUTE
    return stock_window_start(end_ns, minutes)


class History:
    """Loads bars for one consumer; the REST calls run in a worker thread, off the event loop."""

    def __init__(self, source: HistorySource) -> None:
        self.source = source
        self.client = AlpacaData(source.endpoints, source.credentials)

    async def warm(self, symbols: Iterable[str], end_ns: int) -> Loaded:
        """The last `source.bars` complete minute bars before `end_ns` of each symbol."""
        t0 = _time.monotonic()
        symbols = list(dict.fromkeys(symbols))
        n = self.source.bars
        out = Loaded()
        if n <= 0 or not symbols:
            return out
        rest = symbols
        if self.source.dsn is not None and any(not is_crypto(s) for s in symbols):
            stored = await self._stored([s for s in symbols if not is_crypto(s)], end_ns, n)
            for sym, rows in stored.items():
                out.bars[sym] = rows
                out.from_db.add(sym)
            rest = [s for s in symbols if s not in out.from_db]
        short = await self._fetch(rest, end_ns, n, out, widen=1)
        if short:
            await self._fetch(short, end_ns, n, out, widen=_WIDEN)
        for sym in rest:
            if sym not in out.bars and sym not in out.failed:
                out.failed[sym] = "no minute bars in the history Alpaca returned"
        out.seconds = _time.monotonic() - t0
        return out

    async def fill(self, since: Mapping[str, int], end_ns: int) -> Loaded:
        """Each symbol's complete minute bars from the minute holding `since[symbol]` up to `end_ns`: a
        gap's bars (the first of them was only partly seen live)."""
        t0 = _time.monotonic()
        out = Loaded()
        if not since:
            return out
        first = {s: t - t % MINUTE for s, t in since.items()}
        start = min(first.values())
        end = end_ns - end_ns % MINUTE
        if start < end:
            try:
                got = await asyncio.to_thread(self.client.bars, list(since), start, end)
            except AlpacaError as e:
                out.failed = dict.fromkeys(since, str(e))
                got = {}
            for sym, rows in got.items():
                if sym in first:
                    rows = [r for r in rows if first[sym] <= r[0] and r[0] + MINUTE <= end_ns]
                    if rows:
                        out.bars[sym] = rows
        out.seconds = _time.monotonic() - t0
        return out

    async def _fetch(self, symbols: list[str], end_ns: int, n: int, out: Loaded, widen: int) -> list[str]:
        """One REST round for `symbols`; returns those that came back with fewer than `n` bars."""
        if not symbols:
            return []
        groups: dict[int, list[str]] = {}
        for s in symbols:
            groups.setdefault(window_start(s, end_ns, n * widen), []).append(s)
        short = []
        end = end_ns - end_ns % MINUTE  # complete minutes only
        for start, syms in groups.items():
            try:
                got = await asyncio.to_thread(self.client.bars, syms, start, end)
            except AlpacaError as e:
                for s in syms:
                    out.failed[s] = str(e)
                continue
            for s in syms:
                rows = [r for r in got.get(s, ()) if r[0] + MINUTE <= end_ns][-n:]
                if len(rows) > len(out.bars.get(s, ())):
                    out.bars[s] = rows
                if len(out.bars.get(s, ())) < n:
                    short.append(s)
        return short

    async def _stored(self, symbols: list[str], end_ns: int, n: int) -> dict[str, list[tuple]]:
        """Symbols whose last `n` bars in stock_ohlc reach within `fresh` seconds of `end_ns`."""
        from liu.store.db import connection
        from liu.store.writer import ns_to_datetime

        fresh_from = end_ns - int(self.source.fresh * NS) - MINUTE
        try:
            async with connection(self.source.dsn) as conn:
                rows = await conn.fetch(
                    """
                    SELECT symbol, us, open, high, low, close, volume FROM (
                      SELECT symbol, (extract(epoch FROM symbol_date) * 1000000)::bigint AS us,
                             open, high, low, close, volume,
                             row_number() OVER (PARTITION BY symbol ORDER BY symbol_date DESC) AS k
                      FROM stock_ohlc WHERE symbol = ANY($1) AND symbol_date < $2
                    ) recent WHERE k <= $3 ORDER BY symbol, us
                    """,
                    symbols,
                    ns_to_datetime(end_ns - end_ns % MINUTE),
                    n,
                )
        except Exception as e:  # noqa: BLE001 - the database is an optional shortcut; REST still works
            log.warning("stock_ohlc not readable for warm-up (%s); loading from Alpaca", e)
            return {}
        per: dict[str, list[tuple]] = {}
        for r in rows:
            per.setdefault(r["symbol"], []).append(
                (r["us"] * 1000, r["open"], r["high"], r["low"], r["close"], r["volume"])
            )
        return {s: v for s, v in per.items() if len(v) >= n and v[-1][0] >= fresh_from}
