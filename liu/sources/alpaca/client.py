"""Alpaca's REST APIs through alpaca-py's own clients: historical bars, snapshots, assets, clock, calendar.

Why alpaca-py: it is the client Alpaca maintains, and liu's own server is tested against it, so the same
requests go to Alpaca and to `trader exchange`. Every call here blocks (alpaca-py uses `requests`):
callers on an event loop run them with `asyncio.to_thread`. alpaca-py passes no timeout to `requests`
(a hung server would block forever), so each client's session gets one (`Endpoints.timeout`).

Responses are read raw (`raw_data=True`): no pydantic model per bar (warm-up reads ~10^5 bars), and no
whole asset list refused because one asset carries an exchange alpaca-py's enum does not know yet.
Keys are held in `Credentials`, whose repr never shows them, and no message here ever contains them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import requests

from liu.errors import ConfigError, LiuError
from liu.events import Bar
from liu.sources.protocol import is_crypto

NS = 1_000_000_000
_NY = ZoneInfo("America/New_York")
SNAPSHOT_BATCH = 200  # symbols per snapshot request (Alpaca names no limit; this keeps URLs short)
BARS_BATCH = 200  # symbols per historical-bars request (pages are followed within each)
T = TypeVar("T")


class AlpacaError(LiuError):
    """An Alpaca REST call failed; the message names the call, the base URL and the HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AlpacaAuthError(AlpacaError):
    """Alpaca refused the API keys: retrying will not help."""


@dataclass(frozen=True)
class Credentials:
    """An Alpaca key pair. Its repr never shows either part (it may end up in a log or a traceback)."""

    key_id: str = field(repr=False)
    secret: str = field(repr=False)

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"

    __str__ = __repr__


def load_credentials(
    key_env: str = "APCA_API_KEY_ID",
    secret_env: str = "APCA_API_SECRET_KEY",
    environ: Mapping[str, str] | None = None,
) -> Credentials:
    """The keys from the environment (`trader` loads `.env` into it first); one clear line when missing."""
    env = os.environ if environ is None else environ
    missing = [name for name in (key_env, secret_env) if not env.get(name)]
    if missing:
        raise ConfigError(
            f"Alpaca keys missing: set {' and '.join(missing)} in the environment or in .env "
            "(tradeplan [alpaca] key_env / secret_env name other variables)"
        )
    return Credentials(env[key_env].strip(), env[secret_env].strip())


@dataclass(frozen=True)
class Endpoints:
    """Base URLs (liu appends Alpaca's paths, as alpaca-py does), the stock feed and the REST timeout."""

    data_url: str = "https://data.alpaca.markets"
    stream_url: str = "wss://stream.data.alpaca.markets"
    trading_url: str = "https://paper-api.alpaca.markets"
    feed: str = "iex"
    timeout: float = 30.0
    key_env: str = "APCA_API_KEY_ID"
    secret_env: str = "APCA_API_SECRET_KEY"

    @classmethod
    def from_plan(cls, plan: Any) -> Endpoints:
        a = plan.alpaca
        return cls(
            a.data_url.rstrip("/"),
            a.stream_url.rstrip("/"),
            a.trading_base,
            plan.source.feed,
            float(a.timeout),
            a.key_env,
            a.secret_env,
        )

    @property
    def stock_stream(self) -> str:
        return f"{self.stream_url}/v2/{self.feed}"

    @property
    def crypto_stream(self) -> str:
        return f"{self.stream_url}/v1beta3/crypto/us"


@dataclass(frozen=True)
class Asset:
    """One tradable asset, as a scanner sees it."""

    symbol: str
    asset_class: str  # "us_equity" | "crypto" | ...
    exchange: str
    name: str = ""
    tradable: bool = True
    shortable: bool = False
    easy_to_borrow: bool = False
    fractionable: bool = False
    marginable: bool = False


@dataclass(frozen=True)
class Snapshot:
    """Latest trade, quote, minute bar and daily bars of one symbol (None where Alpaca has none)."""

    symbol: str
    price: float | None = None  # latest trade
    trade_ts: int | None = None
    bid: float | None = None
    bid_size: float | None = None
    ask: float | None = None
    ask_size: float | None = None
    minute_bar: Bar | None = None
    daily_bar: Bar | None = None
    prev_daily_bar: Bar | None = None


@dataclass(frozen=True)
class MarketClock:
    """Alpaca's `/v2/clock`: the server's time, whether the market is open, the next open and close (ns)."""

    now: int
    is_open: bool
    next_open: int
    next_close: int


@dataclass(frozen=True)
class MarketDay:
    """One trading day of `/v2/calendar`: its New York date and its open and close (ns since the epoch)."""

    date: date
    open: int
    close: int


# -- parsing ------------------------------------------------------------------------------------------


def ny_ns(day: date, hhmm: str) -> int:
    """ns since the epoch of `hhmm` ("09:30", or "09:30:00") on New York date `day`."""
    hh, mm = int(hhmm[:2]), int(hhmm[3:5])
    return int(datetime.combine(day, time(hh, mm), _NY).timestamp()) * NS


def market_day(raw: Mapping[str, Any]) -> MarketDay:
    """One `/v2/calendar` entry (`{"date": "2024-11-29", "open": "09:30", "close": "13:00"}`)."""
    d = date.fromisoformat(str(raw["date"])[:10])
    return MarketDay(d, ny_ns(d, str(raw["open"])), ny_ns(d, str(raw["close"])))


_day_ns: dict[str, int] = {}


def rfc3339_ns(text: str) -> int:
    """ns since the epoch of an RFC 3339 time (`2024-01-02T14:30:00Z`, fractions and offsets too)."""
    if len(text) == 20 and text[19] == "Z" and text[10] == "T":  # the bars' usual form: whole seconds, UTC
        day = _day_ns.get(text[:10])
        if day is None:
            day = _day_ns[text[:10]] = (
                int(datetime.fromisoformat(text[:10]).replace(tzinfo=UTC).timestamp()) * NS
            )
        return day + (int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])) * NS
    frac = 0
    head, dot, rest = text.partition(".")
    if dot:  # keep all 9 digits (datetime stops at microseconds)
        digits = len(rest) - len(rest.lstrip("0123456789"))
        frac = int(rest[:digits][:9].ljust(9, "0"))
        text = head + rest[digits:]
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * NS + frac


def _bar_row(b: Mapping[str, Any]) -> tuple:
    return (rfc3339_ns(b["t"]), float(b["o"]), float(b["h"]), float(b["l"]), float(b["c"]), float(b["v"]))


def _bar(symbol: str, b: Mapping[str, Any] | None) -> Bar | None:
    return Bar(symbol, *_bar_row(b)) if b else None


def _opt(d: Mapping[str, Any] | None, key: str) -> float | None:
    if not d or d.get(key) is None:
        return None
    return float(d[key])


def snapshot_of(symbol: str, raw: Mapping[str, Any]) -> Snapshot:
    trade, quote = raw.get("latestTrade"), raw.get("latestQuote")
    return Snapshot(
        symbol,
        _opt(trade, "p"),
        rfc3339_ns(trade["t"]) if trade and trade.get("t") else None,
        _opt(quote, "bp"),
        _opt(quote, "bs"),
        _opt(quote, "ap"),
        _opt(quote, "as"),
        _bar(symbol, raw.get("minuteBar")),
        _bar(symbol, raw.get("dailyBar")),
        _bar(symbol, raw.get("prevDailyBar")),
    )


def _chunks(items: list[T], n: int) -> Iterator[list[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class _TimeoutSession(requests.Session):
    """alpaca-py calls `session.request(method, url, **opts)` with no timeout; this one always has one."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)


# -- the client ---------------------------------------------------------------------------------------


class AlpacaData:
    """Alpaca's market-data and reference REST calls. Blocking: run them with `asyncio.to_thread`.

    One instance per process (its HTTP sessions keep connections open); thread-safe enough for one
    call at a time per thread, which is how liu uses it.
    """

    def __init__(self, endpoints: Endpoints, credentials: Credentials, retry_wait: int | None = None) -> None:
        self.endpoints = endpoints
        self._creds = credentials
        self._retry_wait = retry_wait
        self._stock: Any = None
        self._crypto: Any = None
        self._trading: Any = None

    # -- clients (built on first use: importing alpaca-py costs ~0.3 s) --------------------------
    def _prepare(self, client: Any) -> Any:
        client._session = _TimeoutSession(self.endpoints.timeout)
        if self._retry_wait is not None:
            client._retry_wait = self._retry_wait
        return client

    @property
    def stock(self) -> Any:
        if self._stock is None:
            from alpaca.data.historical.stock import StockHistoricalDataClient

            self._stock = self._prepare(
                StockHistoricalDataClient(
                    self._creds.key_id,
                    self._creds.secret,
                    raw_data=True,
                    url_override=self.endpoints.data_url,
                )
            )
        return self._stock

    @property
    def crypto(self) -> Any:
        if self._crypto is None:
            from alpaca.data.historical.crypto import CryptoHistoricalDataClient

            self._crypto = self._prepare(
                CryptoHistoricalDataClient(
                    self._creds.key_id,
                    self._creds.secret,
                    raw_data=True,
                    url_override=self.endpoints.data_url,
                )
            )
        return self._crypto

    @property
    def trading(self) -> Any:
        if self._trading is None:
            from alpaca.trading.client import TradingClient

            self._trading = self._prepare(
                TradingClient(
                    self._creds.key_id,
                    self._creds.secret,
                    raw_data=True,
                    url_override=self.endpoints.trading_url,
                )
            )
        return self._trading

    def _call(self, what: str, base: str, fn: Callable[[], T]) -> T:
        """Run one alpaca-py call; any failure becomes one AlpacaError line naming `what` and `base`."""
        from alpaca.common.exceptions import APIError

        try:
            return fn()
        except APIError as e:
            status = e.status_code
            body = " ".join(str(e).split())[:200]
            if status == 401 or (status == 403 and "subscription" not in body.lower()):
                raise AlpacaAuthError(
                    f"Alpaca refused the API keys ({self.endpoints.key_env} / {self.endpoints.secret_env}) "
                    f"for {what} at {base}: HTTP {status}",
                    status,
                ) from None
            raise AlpacaError(f"Alpaca {what} at {base}: HTTP {status}: {body}", status) from None
        except requests.RequestException as e:
            raise AlpacaError(f"Alpaca {what} at {base}: {type(e).__name__}: {_first_line(e)}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # a body that is not what Alpaca sends
            raise AlpacaError(
                f"Alpaca {what} at {base}: unexpected response ({type(e).__name__}: {e})"
            ) from None

    # -- market data ------------------------------------------------------------------------------
    def bars(self, symbols: Iterable[str], start_ns: int, end_ns: int) -> dict[str, list[tuple]]:
        """Minute bars (ts, open, high, low, close, volume), oldest first, of each symbol in [start, end].

        Stocks are split- and dividend-adjusted (`adjustment=all`) from the plan's feed; crypto pairs come
        from `/v1beta3/crypto/us`. Symbols without bars are absent from the result.
        """
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
        from alpaca.data.timeframe import TimeFrame

        start = datetime.fromtimestamp(start_ns / NS, UTC)
        end = datetime.fromtimestamp(end_ns / NS, UTC)
        symbols = list(dict.fromkeys(symbols))
        out: dict[str, list[tuple]] = {}
        base = self.endpoints.data_url
        for chunk in _chunks([s for s in symbols if not is_crypto(s)], BARS_BATCH):
            req = StockBarsRequest(
                symbol_or_symbols=chunk,
                timeframe=TimeFrame.Minute,
                start=start,
                end=end,
                adjustment=Adjustment.ALL,
                feed=DataFeed(self.endpoints.feed),
            )
            raw = self._call("stock bars", base, lambda req=req: self.stock.get_stock_bars(req))
            for sym, rows in raw.items():
                out[sym] = [_bar_row(b) for b in rows]
        for chunk in _chunks([s for s in symbols if is_crypto(s)], BARS_BATCH):
            req = CryptoBarsRequest(symbol_or_symbols=chunk, timeframe=TimeFrame.Minute, start=start, end=end)
            raw = self._call("crypto bars", base, lambda req=req: self.crypto.get_crypto_bars(req))
            for sym, rows in raw.items():
                out[sym] = [_bar_row(b) for b in rows]
        for rows in out.values():
            rows.sort()
        return out

    def snapshots(self, symbols: Iterable[str]) -> dict[str, Snapshot]:
        """Latest trade, quote, minute bar, daily and previous daily bar per symbol, in batches."""
        from alpaca.data.enums import DataFeed
        from alpaca.data.requests import CryptoSnapshotRequest, StockSnapshotRequest

        symbols = list(dict.fromkeys(symbols))
        out: dict[str, Snapshot] = {}
        base = self.endpoints.data_url
        for chunk in _chunks([s for s in symbols if not is_crypto(s)], SNAPSHOT_BATCH):
            req = StockSnapshotRequest(symbol_or_symbols=chunk, feed=DataFeed(self.endpoints.feed))
            raw = self._call("stock snapshots", base, lambda req=req: self.stock.get_stock_snapshot(req))
            for sym, snap in raw.items():
                if snap:
                    out[sym] = snapshot_of(sym, snap)
        for chunk in _chunks([s for s in symbols if is_crypto(s)], SNAPSHOT_BATCH):
            req = CryptoSnapshotRequest(symbol_or_symbols=chunk)
            raw = self._call("crypto snapshots", base, lambda req=req: self.crypto.get_crypto_snapshot(req))
            for sym, snap in raw.items():
                if snap:
                    out[sym] = snapshot_of(sym, snap)
        return out

    # -- reference data (the trading API) ----------------------------------------------------------
    def assets(self) -> dict[str, Asset]:
        """Every active, tradable asset (stocks and crypto), by symbol."""
        from alpaca.trading.requests import GetAssetsRequest

        raw = self._call(
            "assets",
            self.endpoints.trading_url,
            lambda: self.trading.get_all_assets(GetAssetsRequest(status="active")),
        )
        out = {}
        for a in raw:
            if not a.get("tradable", False) or a.get("status", "active") != "active":
                continue
            out[a["symbol"]] = Asset(
                a["symbol"],
                str(a.get("class", "us_equity")),
                str(a.get("exchange", "")),
                str(a.get("name") or ""),
                True,
                bool(a.get("shortable", False)),
                bool(a.get("easy_to_borrow", False)),
                bool(a.get("fractionable", False)),
                bool(a.get("marginable", False)),
            )
        return out

    def clock(self) -> MarketClock:
        raw = self._call("clock", self.endpoints.trading_url, lambda: self.trading.get_clock())
        return MarketClock(
            rfc3339_ns(raw["timestamp"]),
            bool(raw["is_open"]),
            rfc3339_ns(raw["next_open"]),
            rfc3339_ns(raw["next_close"]),
        )

    def calendar(self, start: date, end: date) -> list[MarketDay]:
        """Trading days from `start` to `end` (New York dates), with their open and close."""
        from alpaca.trading.requests import GetCalendarRequest

        raw = self._call(
            "calendar",
            self.endpoints.trading_url,
            lambda: self.trading.get_calendar(GetCalendarRequest(start=start, end=end)),
        )
        return sorted((market_day(d) for d in raw), key=lambda d: d.date)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
