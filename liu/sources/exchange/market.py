"""What liu's local exchange knows at data time "now": the assets, bars, latest trade / quote / bar and
snapshots of the feed it serves, and the market clock.

No look-ahead: a bar is served once it is complete (its minute has ended by the data clock), so a
replay's REST history never shows what its stream has not sent yet. Latest trades and quotes are the
ones the server streamed; before any were streamed (or for a history without ticks) they are derived
from the last complete bar: a trade at its close, a quote one spread around it.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from liu.sources.exchange.calendar import MarketCalendar
from liu.sources.exchange.history import (
    MINUTE_NS,
    NS,
    Bars,
    FileHistory,
    History,
    LiveBook,
    Timeframe,
    resample,
    rfc3339_one,
)
from liu.sources.protocol import is_crypto

DAY = Timeframe(1, "Day")
_EXCHANGES = ("NASDAQ", "NYSE", "ARCA", "AMEX", "BATS")
_ASSET_NS = uuid.UUID("6f1c2b1e-6c0b-4c89-9d53-1a2f1e0c1a11")


class Market:
    """The exchange's view of one feed.

    Args:
        universe: the feed's symbols → {"price", "avg_volume", "shortable", optional "exchange",
            "easy_to_borrow", "fractionable", "marginable", "name"}.
        history: the feed's bars (`liu.sources.exchange.history`).
        calendar: trading days and hours.
        now: data time in ns (the server's clock, or its epoch before the stream starts).
        book: what the server streamed (last trade / quote), if it records.
    """

    def __init__(
        self,
        universe: dict[str, dict],
        history: History,
        calendar: MarketCalendar,
        now: Callable[[], int],
        book: LiveBook | None = None,
    ) -> None:
        self.universe = universe
        self.history = history
        self.calendar = calendar
        self.now = now
        self.book = book
        self._assets: list[dict] | None = None

    # -- assets ----------------------------------------------------------------------------------

    def assets(self) -> list[dict]:
        """Alpaca `Asset` records of every symbol the feed serves, stocks then crypto, by symbol."""
        if self._assets is None:
            self._assets = [
                _asset(s, self.universe[s]) for s in sorted(self.universe, key=lambda s: (is_crypto(s), s))
            ]
        return self._assets

    def asset(self, key: str) -> dict | None:
        """By symbol ("AAPL", "BTC/USD" or "BTCUSD") or asset id."""
        flat = key.replace("/", "").upper()
        for a in self.assets():
            if a["id"] == key or a["symbol"].replace("/", "") == flat:
                return a
        return None

    # -- bars ------------------------------------------------------------------------------------

    def bars(self, symbol: str, tf: Timeframe, start_ns: int, end_ns: int, adjustment: str = "raw") -> Bars:
        """`symbol`'s bars in `tf` with `start_ns <= t <= end_ns`, complete minutes only."""
        complete = self.now() - MINUTE_NS
        lo = int(tf.bucket(np.array([start_ns], np.int64))[0])  # the bucket holding `start`
        native = self.history.minute_bars(symbol, lo, min(end_ns + _span(tf), complete), adjustment)
        return resample(native, tf).between(start_ns, end_ns)

    def latest_bar(self, symbol: str) -> dict | None:
        b = self._recent(symbol, 3 * 86400 * NS)
        if not len(b):
            b = self._recent(symbol, 40 * 86400 * NS)
        return b.take(slice(-1, None)).rows(is_crypto(symbol))[0] if len(b) else None

    def _recent(self, symbol: str, span_ns: int) -> Bars:
        now = self.now()
        return self.history.minute_bars(symbol, now - span_ns, now - MINUTE_NS)

    # -- trades and quotes --------------------------------------------------------------------------

    def latest_trade(self, symbol: str) -> dict | None:
        crypto = is_crypto(symbol)
        if self.book is not None and (m := self.book.last_trade.get(symbol)) is not None:
            return _from_stream(m)
        if isinstance(self.history, FileHistory) and (tr := self.history.last_trade(symbol, self.now())):
            t, p, s = tr
            return _trade(t, p, s, crypto)
        bar = self._last_bar(symbol)
        if bar is None:
            return None
        return _trade(bar[0] + MINUTE_NS - NS, bar[1], 1.0 if crypto else 100.0, crypto)

    def latest_quote(self, symbol: str) -> dict | None:
        crypto = is_crypto(symbol)
        if self.book is not None and (m := self.book.last_quote.get(symbol)) is not None:
            return _from_stream(m)
        if isinstance(self.history, FileHistory) and (q := self.history.last_quote(symbol, self.now())):
            return _quote(*q, crypto)
        bar = self._last_bar(symbol)
        if bar is None:
            return None
        t, c = bar
        half = c * 0.0001 if crypto else max(0.01, round(c * 0.0002, 2))
        return _quote(t + MINUTE_NS - NS, c - half, 1.0, c + half, 1.0, crypto)

    def _last_bar(self, symbol: str) -> tuple[int, float] | None:
        b = self._recent(symbol, 3 * 86400 * NS)
        if not len(b):
            b = self._recent(symbol, 40 * 86400 * NS)
        return (int(b.t[-1]), float(b.c[-1])) if len(b) else None

    # -- snapshots ----------------------------------------------------------------------------------

    def snapshot(self, symbol: str) -> dict | None:
        """Alpaca's snapshot: latestTrade, latestQuote, minuteBar, dailyBar, prevDailyBar."""
        if symbol not in self.universe and symbol not in self.history.symbols():
            return None
        crypto = is_crypto(symbol)
        now = self.now()
        recent = Bars.empty()
        for days in (7, 40):
            recent = self.history.minute_bars(symbol, now - days * 86400 * NS, now - MINUTE_NS)
            if len(resample(recent, DAY)) >= 2:
                break
        daily = resample(recent, DAY)
        minute = recent.take(slice(-1, None)).rows(crypto)[0] if len(recent) else None
        return {
            "latestTrade": self.latest_trade(symbol),
            "latestQuote": self.latest_quote(symbol),
            "minuteBar": minute,
            "dailyBar": daily.take(slice(-1, None)).rows(crypto)[0] if len(daily) else None,
            "prevDailyBar": daily.take(slice(-2, -1)).rows(crypto)[0] if len(daily) >= 2 else None,
        }

    def clock(self) -> dict:
        return self.calendar.clock(self.now())


def _span(tf: Timeframe) -> int:
    """How far past `end` a bucket starting at `end` reaches (it is cut at "now" anyway)."""
    if tf.step_ns is not None:
        return tf.step_ns - MINUTE_NS
    return {"Day": 1, "Week": 7, "Month": 31 * tf.amount}[tf.unit] * 86400 * NS


def _from_stream(m: dict) -> dict:
    """A streamed trade / quote message as the REST record (no T / S; `t` as RFC 3339)."""
    out = {k: v for k, v in m.items() if k not in ("T", "S")}
    out["t"] = rfc3339_one(m["t"].to_unix_nano())
    return out


def _trade(t: int, p: float, s: float, crypto: bool) -> dict:
    if crypto:
        return {"t": rfc3339_one(t), "p": p, "s": s, "i": 0, "tks": "B"}
    return {"t": rfc3339_one(t), "x": "V", "p": p, "s": s, "c": ["@"], "i": 0, "z": "C"}


def _quote(t: int, bp: float, bs: float, ap: float, asz: float, crypto: bool) -> dict:
    bp, ap = round(bp, 8 if crypto else 2), round(ap, 8 if crypto else 2)
    if crypto:
        return {"t": rfc3339_one(t), "bp": bp, "bs": bs, "ap": ap, "as": asz}
    return {
        "t": rfc3339_one(t),
        "ax": "V",
        "ap": ap,
        "as": asz,
        "bx": "V",
        "bp": bp,
        "bs": bs,
        "c": ["R"],
        "z": "C",
    }


def _asset(symbol: str, info: dict[str, Any]) -> dict:
    """One Alpaca `Asset` (alpaca-py needs `class`, a known `exchange`, a UUID `id` and the five bools)."""
    crypto = is_crypto(symbol)
    h = zlib.crc32(symbol.encode())
    shortable = bool(info.get("shortable", not crypto)) and not crypto
    out = {
        "id": str(uuid.uuid5(_ASSET_NS, symbol)),
        "class": "crypto" if crypto else "us_equity",
        "exchange": info.get("exchange") or ("CRYPTO" if crypto else _EXCHANGES[h % len(_EXCHANGES)]),
        "symbol": symbol,
        "name": info.get("name") or f"{symbol} (liu local exchange)",
        "status": "active",
        "tradable": True,
        "marginable": bool(info.get("marginable", not crypto)),
        "maintenance_margin_requirement": 100 if crypto else 30,
        "shortable": shortable,
        "easy_to_borrow": bool(info.get("easy_to_borrow", shortable and h % 10 != 0)),
        "fractionable": bool(info.get("fractionable", True)),
        "attributes": [],
    }
    if crypto:
        out |= {"min_order_size": "0.000001", "min_trade_increment": "0.000000001", "price_increment": "0.01"}
    return out
