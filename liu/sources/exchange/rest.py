"""Alpaca's REST paths on liu's local exchange, answered from a `Market`.

Market data (alpaca-py's `StockHistoricalDataClient` / `CryptoHistoricalDataClient` with
`url_override="http://HOST:PORT"`):

    GET /v2/stocks/bars                 ?symbols=A,B&timeframe=1Min&start&end&limit&page_token&adjustment&feed&sort
    GET /v2/stocks/{symbol}/bars        (single symbol; `bars` is a list)
    GET /v2/stocks/bars/latest, /v2/stocks/trades/latest, /v2/stocks/quotes/latest     ?symbols&feed
    GET /v2/stocks/snapshots            ?symbols&feed   (no envelope: {"AAPL": {...}})
    GET /v2/stocks/{symbol}/snapshot
    GET /v1beta3/crypto/us/bars         ?symbols=BTC/USD&timeframe&start&end&limit&page_token&sort
    GET /v1beta3/crypto/us/latest/bars, .../latest/trades, .../latest/quotes
    GET /v1beta3/crypto/us/snapshots    ({"snapshots": {...}})

Trading API (alpaca-py's `TradingClient(url_override="http://HOST:PORT")`):

    GET /v2/clock, /v2/calendar?start&end, /v2/assets?status&asset_class&exchange&attributes,
    GET /v2/assets/{symbol or id}

Pagination follows Alpaca: results sorted by symbol, then time (`sort=desc` reverses time within a
symbol); `limit` (1-10000, default 1000) counts bars across symbols; `next_page_token` is opaque and null
on the last page. Auth: `APCA-API-KEY-ID` / `APCA-API-SECRET-KEY` headers (or HTTP Basic): missing →
401 `{"message": "unauthorized."}`, wrong → 403 `{"message": "forbidden."}`; crypto data needs no keys, as
on Alpaca. With `sip_allowed=False` (a free plan) `feed=sip` ending within the last 15 minutes is 403
`subscription does not permit querying recent SIP data`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from liu.sources.exchange.calendar import NY, ny_date
from liu.sources.exchange.history import ADJUSTMENTS, NS, Timeframe
from liu.sources.exchange.market import Market, is_crypto

log = logging.getLogger(__name__)

STOCK_FEEDS = ("iex", "sip", "delayed_sip", "otc", "boats", "overnight")
SIP_DELAY_NS = 15 * 60 * NS
MAX_LIMIT = 10_000
STOCKS = "/v2/stocks"
CRYPTO = "/v1beta3/crypto/us"


class RawJson(str):
    """A body (or part of one) that is JSON text already."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status and a JSON-able body (or `RawJson`)."""

    status: int
    body: Any

    def encode(self) -> bytes:
        if isinstance(self.body, RawJson):
            return self.body.encode()
        return json.dumps(self.body, separators=(",", ":")).encode()

    def json(self) -> Any:
        """The body as Python objects (tests, tools)."""
        return json.loads(self.body) if isinstance(self.body, RawJson) else self.body


class _Fail(Exception):
    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.reply = Reply(
            status, {"message": message} if code is None else {"code": code, "message": message}
        )


def _bad(message: str) -> _Fail:
    return _Fail(400, message, 40010001)


class RestApi:
    """Routes one GET request to the market; `handle` never raises for bad input (it answers 4xx).

    Args:
        market: what is served.
        key, secret: the credentials clients must send (None: anything goes).
        sip_allowed: False acts like Alpaca's free plan for recent SIP data.
    """

    def __init__(
        self, market: Market, key: str | None = None, secret: str | None = None, *, sip_allowed: bool = True
    ) -> None:
        self.market = market
        self.key = key
        self.secret = secret
        self.sip_allowed = sip_allowed
        self.requests = 0
        self._routes: dict[str, Callable[[dict[str, str]], Any]] = {
            "/v2/clock": lambda q: self.market.clock(),
            "/v2/calendar": self._calendar,
            "/v2/assets": self._assets,
            STOCKS + "/bars": lambda q: self._bars(q, crypto=False),
            STOCKS + "/bars/latest": lambda q: self._latest(q, "bars", crypto=False),
            STOCKS + "/trades/latest": lambda q: self._latest(q, "trades", crypto=False),
            STOCKS + "/quotes/latest": lambda q: self._latest(q, "quotes", crypto=False),
            STOCKS + "/snapshots": lambda q: self._snapshots(q, crypto=False),
            CRYPTO + "/bars": lambda q: self._bars(q, crypto=True),
            CRYPTO + "/latest/bars": lambda q: self._latest(q, "bars", crypto=True),
            CRYPTO + "/latest/trades": lambda q: self._latest(q, "trades", crypto=True),
            CRYPTO + "/latest/quotes": lambda q: self._latest(q, "quotes", crypto=True),
            CRYPTO + "/snapshots": lambda q: self._snapshots(q, crypto=True),
        }

    @staticmethod
    def serves(path: str) -> bool:
        """Whether `path` (no query) is one of this API's."""
        return path.startswith(("/v2/", "/v1beta3/"))

    def handle(self, method: str, target: str, headers: Mapping[str, str]) -> Reply:
        """Answer `method target` (target = path?query) with `headers` (case-insensitive mapping)."""
        self.requests += 1
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=False).items()}
        try:
            route = self._route(path)
            if route is None:
                raise _Fail(404, f"endpoint not found: {path}", 40410000)
            if method != "GET":
                raise _Fail(
                    405,
                    f"method {method} is not allowed on {path} (liu's local exchange serves GET)",
                    40510000,
                )
            self._check_auth(headers, crypto=path.startswith(CRYPTO))
            return Reply(200, route(query))
        except _Fail as e:
            return e.reply
        except Exception as e:
            log.exception("REST %s %s failed", method, path)
            return Reply(500, {"code": 50010000, "message": f"internal error: {type(e).__name__}: {e}"})

    def _route(self, path: str) -> Callable[[dict[str, str]], Any] | None:
        fn = self._routes.get(path)
        if fn is not None:
            return fn
        if path.startswith("/v2/assets/"):
            key = unquote(path[len("/v2/assets/") :])
            return lambda q: self._asset(key)
        m = re.fullmatch(r"/v2/stocks/([^/]+)/(bars|snapshot)", path)
        if m is not None:
            sym = unquote(m.group(1))
            if m.group(2) == "bars":
                return lambda q: self._bars(q, crypto=False, single=sym)
            return lambda q: self._snapshot_one(sym)
        return None

    def _check_auth(self, headers: Mapping[str, str], crypto: bool) -> None:
        if self.key is None:
            return
        key, secret = headers.get("APCA-API-KEY-ID"), headers.get("APCA-API-SECRET-KEY")
        auth = headers.get("Authorization") or ""
        if key is None and auth.startswith("Basic "):
            try:
                key, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise _Fail(401, "unauthorized.") from None
        if key is None and secret is None:
            if crypto:
                return  # Alpaca serves crypto data without keys
            raise _Fail(401, "unauthorized.")
        if not _same(key, self.key) or (self.secret is not None and not _same(secret, self.secret)):
            raise _Fail(403, "forbidden.")

    # -- trading API ---------------------------------------------------------------------------------

    def _calendar(self, q: dict[str, str]) -> list[dict]:
        today = ny_date(self.market.now())
        start = _date(q.get("start"), "start") or date(1970, 1, 1)
        end = _date(q.get("end"), "end") or date(today.year + 1, 12, 31)
        if end < start:
            raise _bad(f"end {end} is before start {start}")
        return [s.as_alpaca() for s in self.market.calendar.sessions(start, end)]

    def _assets(self, q: dict[str, str]) -> list[dict]:
        out = self.market.assets()
        status = q.get("status")
        if status is not None:
            if status not in ("active", "inactive"):
                raise _bad(f"invalid status {status!r} (expected active or inactive)")
            out = [a for a in out if a["status"] == status]
        cls = q.get("asset_class")
        if cls is not None:
            out = [a for a in out if a["class"] == cls]
        exchange = q.get("exchange")
        if exchange is not None:
            out = [a for a in out if a["exchange"] == exchange]
        attrs = q.get("attributes")
        if attrs:
            want = set(attrs.split(","))
            out = [a for a in out if want & set(a["attributes"])]
        return out

    def _asset(self, key: str) -> dict:
        a = self.market.asset(key)
        if a is None:
            raise _Fail(404, f"asset not found for {key}", 40410000)
        return a

    # -- market data ----------------------------------------------------------------------------------

    def _symbols(self, q: dict[str, str], crypto: bool) -> list[str]:
        raw = q.get("symbols")
        if not raw:
            raise _bad("symbols is required (e.g. symbols=AAPL,MSFT or symbols=BTC/USD)")
        syms = [s.strip() for s in raw.split(",") if s.strip()]
        for s in syms:
            _check_symbol(s, crypto)
        return syms

    def _feed(self, q: dict[str, str], crypto: bool, end_ns: int | None = None) -> None:
        if crypto:
            return
        feed = q.get("feed", "iex")
        if feed not in STOCK_FEEDS:
            raise _bad(f"invalid feed {feed!r} (expected one of {', '.join(STOCK_FEEDS)})")
        if feed == "sip" and not self.sip_allowed:
            now = self.market.now()
            if end_ns is None or end_ns > now - SIP_DELAY_NS:
                raise _Fail(403, "subscription does not permit querying recent SIP data")

    def _bars(self, q: dict[str, str], crypto: bool, single: str | None = None) -> dict:
        if single is not None:
            _check_symbol(single, crypto)
        syms = sorted(set([single] if single is not None else self._symbols(q, crypto)))
        tf_text = q.get("timeframe")
        if not tf_text:
            raise _bad("timeframe is required (e.g. timeframe=1Min)")
        try:
            tf = Timeframe.parse(tf_text)
        except ValueError as e:
            raise _bad(str(e)) from None
        now = self.market.now()
        start = _time(q.get("start"), "start")
        end = _time(q.get("end"), "end")
        if start is None:
            d = ny_date(now)
            start = int(datetime.combine(d, time(0), NY).timestamp()) * NS  # the start of the current day
        if end is None:
            end = now
        if end < start:
            raise _bad(f"end {q.get('end')} is before start {q.get('start')}")
        limit = _int(q.get("limit"), "limit", 1000)
        if not 1 <= limit <= MAX_LIMIT:
            raise _bad(f"invalid limit {limit}: must be between 1 and {MAX_LIMIT}")
        adjustment = "raw" if crypto else q.get("adjustment", "raw")
        if adjustment not in ADJUSTMENTS:
            raise _bad(f"invalid adjustment {adjustment!r} (expected one of {', '.join(ADJUSTMENTS)})")
        self._feed(q, crypto, end)
        sort = q.get("sort", "asc")
        if sort not in ("asc", "desc"):
            raise _bad(f"invalid sort {sort!r} (expected asc or desc)")
        token = _read_token(q.get("page_token"))
        out: dict[str, str] = {}  # symbol → its bars as a JSON array
        left = limit
        nxt: tuple[str, int | None] | None = None
        todo = [s for s in syms if token is None or s >= token[0]]
        for k, sym in enumerate(todo):
            bars = self.market.bars(sym, tf, start, end, adjustment)
            if sort == "desc":
                bars = bars.take(slice(None, None, -1))
            if token is not None and sym == token[0] and token[1] is not None:
                keep = bars.t >= token[1] if sort == "asc" else bars.t <= token[1]
                bars = bars.take(keep)
            if not len(bars):
                continue
            if len(bars) > left:
                out[sym] = bars.take(slice(0, left)).json_rows(crypto)
                nxt = (sym, int(bars.t[left]))
                break
            out[sym] = bars.json_rows(crypto)
            left -= len(bars)
            if left == 0:
                if k + 1 < len(todo):
                    nxt = (todo[k + 1], None)
                break
        token_json = json.dumps(None if nxt is None else _write_token(*nxt))
        if single is not None:
            rows = out.get(single, "[]")
            return RawJson(f'{{"bars":{rows},"symbol":{json.dumps(single)},"next_page_token":{token_json}}}')
        inner = ",".join(f"{json.dumps(sym)}:{rows}" for sym, rows in out.items())
        return RawJson(f'{{"bars":{{{inner}}},"next_page_token":{token_json}}}')

    def _latest(self, q: dict[str, str], what: str, crypto: bool) -> dict:
        syms = self._symbols(q, crypto)
        self._feed(q, crypto)
        get = {
            "bars": self.market.latest_bar,
            "trades": self.market.latest_trade,
            "quotes": self.market.latest_quote,
        }[what]
        out = {}
        for s in syms:
            rec = get(s)
            if rec is not None:
                out[s] = rec
        return {what: out}

    def _snapshots(self, q: dict[str, str], crypto: bool) -> dict:
        syms = self._symbols(q, crypto)
        self._feed(q, crypto)
        out = {}
        for s in syms:
            snap = self.market.snapshot(s)
            if snap is not None:
                out[s] = snap
        return {"snapshots": out} if crypto else out

    def _snapshot_one(self, symbol: str) -> dict:
        _check_symbol(symbol, crypto=False)
        snap = self.market.snapshot(symbol)
        if snap is None:
            raise _Fail(404, f"no data for symbol {symbol}", 40410000)
        return {"symbol": symbol} | snap


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _check_symbol(symbol: str, crypto: bool) -> None:
    if crypto and not is_crypto(symbol):
        raise _bad(f"invalid symbol {symbol!r}: crypto pairs are written BASE/QUOTE, e.g. BTC/USD")
    if not crypto and (is_crypto(symbol) or not re.fullmatch(r"[A-Za-z0-9.\-]{1,20}", symbol)):
        raise _bad(f"invalid symbol {symbol!r} for the stock API (crypto pairs like BTC/USD use {CRYPTO})")


def _int(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise _bad(f"invalid {name} {value!r}: expected an integer") from None


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _time(value: str | None, name: str) -> int | None:
    """RFC 3339 or YYYY-MM-DD (UTC midnight) → UTC ns; a naive time is UTC, as alpaca-py means it."""
    if not value:
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * NS
        frac = re.search(r"\.(\d+)", value)
        extra = int(frac.group(1)[6:9].ljust(3, "0")) if frac and len(frac.group(1)) > 6 else 0
        dt = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        raise _bad(
            f"invalid {name} {value!r}: expected RFC 3339 (2024-01-02T09:30:00Z) or YYYY-MM-DD"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    whole = dt.replace(microsecond=0)
    return int(whole.timestamp()) * NS + dt.microsecond * 1000 + extra


def _date(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise _bad(f"invalid {name} {value!r}: expected YYYY-MM-DD") from None


def _write_token(symbol: str, t: int | None) -> str:
    return base64.urlsafe_b64encode(f"{symbol}|{'' if t is None else t}".encode()).decode()


def _read_token(token: str | None) -> tuple[str, int | None] | None:
    if not token:
        return None
    try:
        text = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
        sym, bar, t = text.rpartition("|")
        if not (sym and bar):
            raise ValueError(token)
        return sym, (int(t) if t else None)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _bad(f"invalid page_token {token!r}") from None
