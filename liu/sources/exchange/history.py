"""Historical bars of the feed liu's local exchange serves: what `/v2/stocks/bars` and
`/v1beta3/crypto/us/bars` answer, and what a test or the backtester reads directly.

Every history answers `minute_bars(symbol, start_ns, end_ns, adjustment)` at its native resolution
(1-minute bars; a daily file's bars are daily) as a columnar `Bars`; `resample` coarsens them to any
Alpaca timeframe. Sources:

* `liu.sources.sim.SimHistory`: the simulator's past, generated deterministically back from its epoch;
* `LiveBook`: minute bars built from the trades the server actually streamed (how Alpaca builds bars),
  plus the last trade and quote per symbol;
* `FileHistory`: a replay file's bars (trade ticks are aggregated into minute bars), adjusted for
  splits and dividends from the file's factor columns when asked.
"""

from __future__ import annotations

import collections
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

NS = 1_000_000_000
MINUTE_NS = 60 * NS
LIVE_MINUTES = 1440  # minute bars per symbol the live book keeps: a day (its memory must not grow)
ADJUSTMENTS = ("raw", "split", "dividend", "all")


@dataclass(frozen=True, slots=True)
class Bars:
    """Bars of one symbol, oldest first; `t` is each bar's start (UTC ns)."""

    t: np.ndarray  # int64
    o: np.ndarray  # float64 (also h, l, c, v, vw)
    h: np.ndarray
    l: np.ndarray  # noqa: E741 - Alpaca's field name
    c: np.ndarray
    v: np.ndarray
    n: np.ndarray  # int64 trade count
    vw: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    @classmethod
    def empty(cls) -> Bars:
        f = np.zeros(0)
        return cls(np.zeros(0, np.int64), f, f, f, f, f, np.zeros(0, np.int64), f)

    def take(self, idx: Any) -> Bars:
        """A slice or index array of these bars."""
        return Bars(*(getattr(self, k)[idx] for k in _FIELDS))

    def between(self, start_ns: int | None, end_ns: int | None) -> Bars:
        """Bars with `start_ns <= t <= end_ns` (None: unbounded)."""
        i = 0 if start_ns is None else int(np.searchsorted(self.t, start_ns, "left"))
        j = len(self.t) if end_ns is None else int(np.searchsorted(self.t, end_ns, "right"))
        return self if (i, j) == (0, len(self.t)) else self.take(slice(i, j))

    @staticmethod
    def concat(parts: list[Bars]) -> Bars:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Bars.empty()
        if len(parts) == 1:
            return parts[0]
        return Bars(*(np.concatenate([getattr(p, k) for p in parts]) for k in _FIELDS))

    def _values(self, crypto: bool) -> zip:
        """Per bar (t as RFC 3339, o, h, l, c, v, n, vw) as Python values; stock volume as int."""
        v = self.v.tolist() if crypto else np.round(self.v).astype(np.int64).tolist()
        return zip(
            rfc3339(self.t),
            self.o.tolist(),
            self.h.tolist(),
            self.l.tolist(),
            self.c.tolist(),
            v,
            self.n.tolist(),
            self.vw.tolist(),
            strict=True,
        )

    def rows(self, crypto: bool = False) -> list[dict]:
        """Alpaca's JSON bar records `{"t","o","h","l","c","v","n","vw"}` (stock volume as int)."""
        return [
            {"t": a, "o": b, "h": c, "l": d, "c": e, "v": f, "n": g, "vw": h}
            for a, b, c, d, e, f, g, h in self._values(crypto)
        ]

    def json_rows(self, crypto: bool = False) -> str:
        """`rows()` already encoded as one JSON array (about twice as fast as json.dumps of the dicts)."""
        cols = (self.o, self.h, self.l, self.c, self.v, self.vw)
        if any(np.isnan(a).any() for a in cols):
            return json.dumps(self.rows(crypto), separators=(",", ":"))
        fmt = '{"t":"%s","o":%r,"h":%r,"l":%r,"c":%r,"v":%r,"n":%r,"vw":%r}'
        return "[" + ",".join([fmt % a for a in self._values(crypto)]) + "]"


_FIELDS = ("t", "o", "h", "l", "c", "v", "n", "vw")


def rfc3339(t_ns: np.ndarray) -> list[str]:
    """UTC RFC 3339 strings ("2024-01-02T14:30:00Z"; fractional seconds only when present)."""
    if not len(t_ns):
        return []
    whole = (t_ns % NS == 0).all()
    arr = np.asarray(t_ns, dtype=np.int64).view("datetime64[ns]")
    return [s + "Z" for s in np.datetime_as_string(arr, unit="s" if whole else "ns").tolist()]


def rfc3339_one(t_ns: int) -> str:
    return rfc3339(np.array([t_ns], np.int64))[0]


class History(Protocol):
    """What the exchange asks of a feed's past."""

    def symbols(self) -> frozenset[str]: ...

    def minute_bars(self, symbol: str, start_ns: int, end_ns: int, adjustment: str = "raw") -> Bars:
        """Native bars of `symbol` with `start_ns <= t <= end_ns` (empty for an unknown symbol)."""
        ...


# -- timeframes -------------------------------------------------------------------------------------

_TF = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D|Week|W|Month|M)$")
_UNIT = {"Min": "Min", "T": "Min", "Hour": "Hour", "H": "Hour", "Day": "Day", "D": "Day"}
_UNIT |= {"Week": "Week", "W": "Week", "Month": "Month", "M": "Month"}
_LIMITS = {"Min": range(1, 60), "Hour": range(1, 24), "Day": (1,), "Week": (1,), "Month": (1, 2, 3, 6, 12)}


@dataclass(frozen=True, slots=True)
class Timeframe:
    """An Alpaca bar timeframe: `{n}Min` (1-59), `{n}Hour` (1-23), `1Day`, `1Week`, `{1,2,3,6,12}Month`."""

    amount: int
    unit: str  # Min | Hour | Day | Week | Month

    @classmethod
    def parse(cls, text: str) -> Timeframe:
        m = _TF.match(text or "")
        if m is None:
            raise ValueError(
                f"invalid timeframe {text!r} (expected e.g. 1Min, 5Min, 1Hour, 1Day, 1Week, 1Month)"
            )
        amount, unit = int(m.group(1)), _UNIT[m.group(2)]
        if amount not in _LIMITS[unit]:
            raise ValueError(f"invalid timeframe {text!r}: {amount} is not allowed for {unit}")
        return cls(amount, unit)

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"

    @property
    def step_ns(self) -> int | None:
        """Fixed bucket length for minutes and hours; None for calendar buckets."""
        if self.unit == "Min":
            return self.amount * MINUTE_NS
        if self.unit == "Hour":
            return self.amount * 60 * MINUTE_NS
        return None

    def bucket(self, t_ns: np.ndarray) -> np.ndarray:
        """Each time's bucket start (UTC ns). Days, weeks and months start at New York midnight."""
        step = self.step_ns
        if step is not None:
            return (t_ns // step) * step
        import pandas as pd

        local = pd.DatetimeIndex(t_ns.view("datetime64[ns]"), tz="UTC").tz_convert("America/New_York")
        day = local.normalize()
        if self.unit == "Week":
            day = day - pd.to_timedelta(day.weekday, unit="D")
        elif self.unit == "Month":
            months = (day.year - 1970) * 12 + day.month - 1
            months = (months // self.amount) * self.amount
            naive = pd.to_datetime(
                {"year": 1970 + months // 12, "month": months % 12 + 1, "day": np.ones(len(day), int)}
            )
            day = pd.DatetimeIndex(naive).tz_localize("America/New_York")
        return day.tz_convert("UTC").asi8.astype(np.int64)


def resample(bars: Bars, tf: Timeframe) -> Bars:
    """Aggregate `bars` into `tf` buckets: first open, max high, min low, last close, summed volume and
    trade count, volume-weighted vwap. Bars coarser than `tf` pass through unchanged."""
    if not len(bars):
        return bars
    if tf.unit == "Min" and tf.amount == 1:
        return bars
    b = tf.bucket(bars.t)
    cut = np.flatnonzero(np.diff(b)) + 1
    if len(cut) == len(bars) - 1 and (b == bars.t).all():
        return bars  # already one bar per bucket, stamped at the bucket
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(bars)]])
    v = np.add.reduceat(bars.v, starts)
    pv = np.add.reduceat(bars.vw * bars.v, starts)
    mean_vw = np.add.reduceat(bars.vw, starts) / (ends - starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        vw = np.where(v > 0, pv / np.where(v > 0, v, 1), mean_vw)
    return Bars(
        b[starts],
        bars.o[starts],
        np.maximum.reduceat(bars.h, starts),
        np.minimum.reduceat(bars.l, starts),
        bars.c[ends - 1],
        v,
        np.add.reduceat(bars.n, starts),
        np.round(vw, 4),
    )


# -- live book --------------------------------------------------------------------------------------


class LiveBook:
    """What the server streamed: last trade and quote per symbol, and minute bars built from its trades.

    `record` runs on the feed's frames (not on pre-encoded ones), so its bars are exactly the trades
    clients received, aggregated as Alpaca aggregates them.
    """

    def __init__(self, bars: bool = True) -> None:
        self.bars = bars  # False: last trade / quote only (a history that has its own bars)
        self.last_trade: dict[str, dict] = {}
        self.last_quote: dict[str, dict] = {}
        self._open: dict[str, list] = {}  # symbol → [t0, o, h, l, c, v, n, pv] of the current minute
        # symbol → completed minutes, oldest first: the last LIVE_MINUTES only, so a long session's server
        # does not grow (an older gap has no live bars here to back-fill from)
        self._done: dict[str, collections.deque[list]] = {}

    def record(self, msgs: list[dict]) -> None:
        """Take in one frame of streamed messages; malformed ones are skipped."""
        last_trade, last_quote, open_, bars = self.last_trade, self.last_quote, self._open, self.bars
        stamp, t0 = None, 0  # a frame's messages usually share one Timestamp object
        for m in msgs:
            try:
                kind = m["T"]
                if kind == "q":
                    last_quote[m["S"]] = m
                    continue
                if kind != "t":
                    continue
                sym = m["S"]
                ts = m["t"]
                if ts is not stamp:
                    t = ts.to_unix_nano()
                    stamp, t0 = ts, t - t % MINUTE_NS
                last_trade[sym] = m
                if not bars:
                    continue
                p, s = m["p"], m["s"]
                ps = p * s
            except (KeyError, TypeError, AttributeError):
                continue
            cur = open_.get(sym)
            if cur is None or t0 > cur[0]:
                if cur is not None:
                    done = self._done.get(sym)
                    if done is None:
                        done = self._done[sym] = collections.deque(maxlen=LIVE_MINUTES)
                    done.append(cur)
                open_[sym] = [t0, p, p, p, p, s, 1, ps]
                continue
            # same minute (or a late print from an earlier one): it updates the open minute
            if p > cur[2]:
                cur[2] = p
            elif p < cur[3]:
                cur[3] = p
            cur[4] = p
            cur[5] += s
            cur[6] += 1
            cur[7] += ps

    def symbols(self) -> frozenset[str]:
        return frozenset(self._open)

    def minute_bars(self, symbol: str, start_ns: int, end_ns: int, adjustment: str = "raw") -> Bars:
        """Minute bars whose start is in [start_ns, end_ns], the still-open minute included."""
        rows = list(self._done.get(symbol, ()))
        cur = self._open.get(symbol)
        if cur is not None:
            rows.append(cur)
        if not rows:
            return Bars.empty()
        a = np.array(rows, dtype=np.float64)
        t = np.array([r[0] for r in rows], dtype=np.int64)
        v = a[:, 5]
        vw = np.round(np.where(v > 0, a[:, 7] / np.where(v > 0, v, 1), a[:, 4]), 4)
        bars = Bars(t, a[:, 1], a[:, 2], a[:, 3], a[:, 4], v, a[:, 6].astype(np.int64), vw)
        return bars.between(start_ns, end_ns)


# -- replay files -----------------------------------------------------------------------------------


class FileHistory:
    """The bars of a replay file (CSV or Parquet, the formats `liu.sources.replay` reads).

    Bar formats give their own bars; trade ticks are aggregated into minute bars (count, vwap); quote
    ticks have no bars. Adjustments come from `liu.sources.adjust`, the functions the replay itself
    adjusts with (factors normalised to each symbol's last row in the file), so `adjustment=all` bars
    equal the bars a default replay streams, float for float. The file is read on first use (the
    server starts that on a worker thread).
    """

    def __init__(
        self,
        path: str | Path,
        symbols: list[str] | None = None,
        format: str | None = None,
        streamed: str = "all",
    ) -> None:
        self.path = Path(path)
        self.only = set(symbols) if symbols else None
        self.format = format
        self.streamed = streamed  # the replay's own adjustment: what latest trades / quotes show
        self._data: dict[str, dict[str, Any]] | None = None
        self._cache: dict[tuple[str, str], Bars] = {}
        self._lock = threading.Lock()

    def preload(self) -> None:
        """Read the file now."""
        self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._data is None:
            with self._lock:
                if self._data is None:
                    self._data = self._read()
        return self._data

    def _read(self) -> dict[str, dict[str, Any]]:
        import pandas as pd

        from liu.sources.adjust import adjustment_of, latest_factors
        from liu.sources.replay import bar_times, detect_format

        name = self.path.name.lower()
        df = pd.read_parquet(self.path) if name.endswith((".parquet", ".pq")) else pd.read_csv(self.path)
        fmt = self.format or detect_format(df.columns)
        self.format = fmt
        if self.only is not None:
            df = df[df["symbol"].astype(str).isin(self.only)]
        if fmt == "trade_ticks" and "suspicious" in df:
            susp = df["suspicious"]
            if susp.dtype != bool:
                susp = susp.astype(str).str.lower().eq("true")
            df = df[~susp.to_numpy()]
        df = df.reset_index(drop=True)
        ts = bar_times(df, fmt)
        codes, names = pd.factorize(df["symbol"].astype(str), sort=True)
        names = [str(n) for n in names]
        basis = latest_factors(df, ts)
        mult: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for adj in ADJUSTMENTS[1:]:
            a = adjustment_of(df, fmt, codes, names, ts, adj, basis)
            if a.price is not None and a.volume is not None:
                mult[adj] = (a.price, a.volume)
        cols = {c: _col(df, c) for c in _FILE_COLS}
        out: dict[str, dict[str, Any]] = {}
        order = np.lexsort((ts, codes))
        bounds_ = np.flatnonzero(np.diff(codes[order])) + 1
        for rows in np.split(order, bounds_):
            if not len(rows):
                continue
            sym = names[int(codes[rows[0]])]
            out[sym] = {
                "t": ts[rows],
                "cols": {c: a[rows] for c, a in cols.items()},
                "mult": {k: (p[rows], v[rows]) for k, (p, v) in mult.items()},
            }
        return out

    def symbols(self) -> frozenset[str]:
        return frozenset(self._load())

    def _native(self, symbol: str, adjustment: str) -> Bars:
        """All of `symbol`'s bars under `adjustment` (computed once)."""
        key = (symbol, adjustment)
        got = self._cache.get(key)
        if got is not None:
            return got
        d = self._load().get(symbol)
        if d is None:
            return Bars.empty()
        col, t = d["cols"], d["t"]
        pm, vm = d["mult"].get(adjustment, (None, None))
        if self.format == "trade_ticks":
            p, s = col["price"], col["size"]
            if pm is not None:
                p, s = p * pm, s * vm
            bars = _minute_bars_from_trades(t, p, s)
        elif self.format == "quote_ticks":
            bars = Bars.empty()
        else:
            ok = ~np.isnan(col["close"])
            o, h, lo, c, v = (col[k][ok] for k in ("open", "high", "low", "close", "volume"))
            if pm is not None:
                o, h, lo, c, v = o * pm[ok], h * pm[ok], lo * pm[ok], c * pm[ok], v * vm[ok]
            o = np.where(np.isnan(o), c, o)  # a close-only bar, as the replay sends it
            h = np.where(np.isnan(h), np.maximum(o, c), h)
            lo = np.where(np.isnan(lo), np.minimum(o, c), lo)
            v = np.nan_to_num(v)
            bars = Bars(t[ok], o, h, lo, c, v, np.zeros(int(ok.sum()), np.int64), (o + h + lo + c) / 4.0)
        self._cache[key] = bars
        return bars

    def minute_bars(self, symbol: str, start_ns: int, end_ns: int, adjustment: str = "raw") -> Bars:
        if adjustment not in ADJUSTMENTS:
            raise ValueError(f"adjustment {adjustment!r} must be one of {', '.join(ADJUSTMENTS)}")
        return self._native(symbol, adjustment).between(start_ns, end_ns)

    def last_trade(self, symbol: str, now_ns: int) -> tuple[int, float, float] | None:
        """(t, price, size) of the last trade print at or before `now_ns` (trade-tick files only)."""
        adjustment = self.streamed
        d = self._load().get(symbol)
        if d is None or self.format != "trade_ticks":
            return None
        k = int(np.searchsorted(d["t"], now_ns, "right")) - 1
        if k < 0:
            return None
        pm, vm = d["mult"].get(adjustment, (None, None))
        p, s = float(d["cols"]["price"][k]), float(d["cols"]["size"][k])
        return (
            (int(d["t"][k]), p * float(pm[k]), s * float(vm[k])) if pm is not None else (int(d["t"][k]), p, s)
        )

    def last_quote(self, symbol: str, now_ns: int) -> tuple[int, float, float, float, float] | None:
        """(t, bid, bid size, ask, ask size) of the last quote bar at or before `now_ns` (Lean minute files)."""
        adjustment = self.streamed
        d = self._load().get(symbol)
        if d is None or self.format != "lean_minute":
            return None
        c = d["cols"]
        ok = np.flatnonzero(~(np.isnan(c["bid_close"]) | np.isnan(c["ask_close"])) & (d["t"] <= now_ns))
        if not len(ok):
            return None
        k = int(ok[-1])
        pm, vm = d["mult"].get(adjustment, (None, None))
        f, g = (float(pm[k]), float(vm[k])) if pm is not None else (1.0, 1.0)
        bs, asz = np.nan_to_num(c["bid_size"][k]), np.nan_to_num(c["ask_size"][k])
        return (
            int(d["t"][k]),
            float(c["bid_close"][k]) * f,
            float(bs) * g,
            float(c["ask_close"][k]) * f,
            float(asz) * g,
        )


_FILE_COLS = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "bid_close",
    "bid_size",
    "ask_close",
    "ask_size",
    "price",
    "size",
)


def _col(df: Any, name: str) -> np.ndarray:
    if name not in df:
        return np.full(len(df), np.nan)
    return df[name].to_numpy(dtype="float64", na_value=np.nan)


def _minute_bars_from_trades(t: np.ndarray, p: np.ndarray, s: np.ndarray) -> Bars:
    """Trade prints → minute bars (open, high, low, close, volume, count, vwap), as Alpaca builds them."""
    if not len(t):
        return Bars.empty()
    m = t - t % MINUTE_NS
    cut = np.flatnonzero(np.diff(m)) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(t)]])
    v = np.add.reduceat(s, starts)
    pv = np.add.reduceat(p * s, starts)
    return Bars(
        m[starts],
        p[starts],
        np.maximum.reduceat(p, starts),
        np.minimum.reduceat(p, starts),
        p[ends - 1],
        v,
        (ends - starts).astype(np.int64),
        np.round(np.where(v > 0, pv / np.where(v > 0, v, 1), p[starts]), 4),
    )


class StitchedHistory:
    """A history before `epoch_ns` (e.g. the simulator's past) followed by what was streamed since."""

    def __init__(self, past: History, live: LiveBook, epoch_ns: int) -> None:
        self.past = past
        self.live = live
        self.epoch = epoch_ns - epoch_ns % MINUTE_NS

    def symbols(self) -> frozenset[str]:
        return self.past.symbols() | self.live.symbols()

    def minute_bars(self, symbol: str, start_ns: int, end_ns: int, adjustment: str = "raw") -> Bars:
        parts = []
        if start_ns < self.epoch:
            parts.append(self.past.minute_bars(symbol, start_ns, min(end_ns, self.epoch - 1), adjustment))
        if end_ns >= self.epoch:
            parts.append(self.live.minute_bars(symbol, max(start_ns, self.epoch), end_ns))
        return Bars.concat(parts)


def history_uses(history: History, book: LiveBook) -> bool:
    """Whether `history` serves bars from `book` (else the book only keeps the last trade and quote)."""
    return history is book or (isinstance(history, StitchedHistory) and history.live is book)
