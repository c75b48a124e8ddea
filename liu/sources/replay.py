"""ReplayFeed: recorded market data files, sent in time order, paced by the clock.

Formats (gzip CSV or Parquet, one row per bar or tick; see ../shared/data/README.md),
detected from the columns unless `format=` is given:

=================  ==========================================  ============================
format             columns that identify it                    messages
=================  ==========================================  ============================
``lean_minute``    bid_close / split_factor                    "b" from open..volume where a
                                                               trade close exists; "q" at the
                                                               same time from bid_close,
                                                               bid_size, ask_close, ask_size
                                                               where both closes exist.
                                                               Timestamps are bar starts.
``minute_end``     timestamp + open/high/low/close, nothing    "b"; timestamps mark the bar
                   else (pyalgotrade SPY)                      END, so 1 minute is subtracted.
``trade_ticks``    price                                       "t"; `suspicious` rows dropped;
                                                               i = row number in the file.
``quote_ticks``    bid + ask (+ exchange)                      "q": each row updates one side
                                                               of one venue; the quote sent is
                                                               the best bid / best ask across
                                                               venues (venues reset each New
                                                               York date). One quote per row
                                                               once both sides are known.
``daily``          date                                        "b" (T = "b", not "d", so a
                                                               plain bars subscription gets
                                                               them); t = 00:00 New York.
=================  ==========================================  ============================

Prices are split and dividend adjusted by default (`adjustment="all"`), from the
file's own factors (`liu.sources.adjust`), normalised so each symbol's last price
is as traded: a split inside the data does not jump. `adjustment="raw"` replays
them as recorded, like Alpaca's stream, and `actions()` then lists the splits
and dividends the runner applies at their ex-dates (`liu.corporate`). `vw` on
bars is (o + h + l + c) / 4 and `n` is 0: the files have neither.

Trade ticks carry Alpaca's condition codes in `c`: the Lean files' hexadecimal
condition flags are translated (average price "B", out of sequence "Z", odd lot
"I", ...), so the bad-tick filter (`liu.ticks`) treats a replay as it treats Alpaca.

Messages carry their own data time in `t`. An event is sent once
`clock.now_ns() >= t`; all due events go out back to back, `batch` per frame,
so events with the same timestamp are never separated by a wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from liu.clock import Clock, ClockSpec
from liu.corporate import CorporateAction
from liu.plan import TradePlan
from liu.sources import protocol as P
from liu.sources.adjust import ADJUSTMENTS, adjustment_of, has_factors, latest_factors

NY = "America/New_York"
MINUTE_NS = 60_000_000_000
FORMATS = ("lean_minute", "minute_end", "trade_ticks", "quote_ticks", "daily")
_KIND_BAR, _KIND_QUOTE, _KIND_TRADE = 0, 1, 2


def detect_format(columns) -> str:
    cols = set(columns)
    if "date" in cols:
        return "daily"
    if "price" in cols:
        return "trade_ticks"
    if "bid" in cols and "ask" in cols:
        return "quote_ticks"
    if "bid_close" in cols or "split_factor" in cols:
        return "lean_minute"
    if {"timestamp", "open", "high", "low", "close"} <= cols:
        return "minute_end"
    raise ValueError(f"unrecognised market data columns: {sorted(cols)}")


def _parquet(path: Path) -> bool:
    return path.name.lower().endswith((".parquet", ".pq"))


def read_columns(path: Path) -> list[str]:
    """The column names of a data file, without reading its rows."""
    if _parquet(path):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return list(pd.read_csv(path, nrows=0).columns)


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    if _parquet(path):
        return pd.read_parquet(path, columns=columns)
    head = read_columns(path)
    dtype: dict[str, Any] = {"symbol": "category"}
    for c in ("exchange", "condition"):
        if c in head:
            dtype[c] = "category"
    return pd.read_csv(path, dtype=dtype, usecols=columns)


def _to_ns(ts: pd.Series) -> np.ndarray:
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view("int64")


def _ny_day(ts_ns: np.ndarray) -> np.ndarray:
    """New York calendar day number of each UTC ns time."""
    local = pd.DatetimeIndex(ts_ns.view("datetime64[ns]"), tz="UTC").tz_convert(NY).tz_localize(None)
    return local.to_numpy(dtype="datetime64[D]").view("int64")


def bounds(start: Any, end: Any) -> tuple[int | None, int | None]:
    """(start, end) filter values as UTC ns: dates or timestamps, naive = New York, an end date inclusive."""
    return _bound(start, False), _bound(end, True)


def bar_times(df: pd.DataFrame, fmt: str) -> np.ndarray:
    """Each row's data time (UTC ns, bar start) for a file of format `fmt`."""
    if fmt == "daily":
        return _to_ns(pd.to_datetime(df["date"], format="ISO8601").dt.tz_localize(NY))
    ts = _to_ns(pd.to_datetime(df["timestamp"], utc=True, format="ISO8601"))
    return ts - MINUTE_NS if fmt == "minute_end" else ts


def _bound(value, end: bool) -> int | None:
    """A start / end filter value (date or timestamp; naive means New York) as UTC ns."""
    if value is None:
        return None
    t = pd.Timestamp(value)
    if t.tzinfo is None:
        t = t.tz_localize(NY)
    if end and t == t.normalize():
        t = t + pd.Timedelta(days=1)  # an end date is inclusive
    return int(t.tz_convert("UTC").as_unit("ns").value)


def _floats(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df:
        return np.full(len(df), np.nan)
    return df[col].to_numpy(dtype="float64", na_value=np.nan, copy=True)  # writable: adjusted in place


class ReplayFeed:
    """Finite feed replaying one data file.

    Args:
        path: CSV (optionally .gz) or Parquet file.
        symbols: keep only these symbols (None = all).
        start, end: keep events from `start` to `end` (dates are New York dates,
            `end` inclusive; naive timestamps are New York time).
        speed: "clock" (default): send events when the server's clock reaches
            their time, or as fast as possible when the clock is not realtime
            (ClockSpec speed None). None: as fast as possible, whatever the clock.
            A float: N× real time from the first event, independent of the clock.
            As fast as possible still awaits each connection's send backpressure.
        batch: at most this many messages per frame.
        format: one of FORMATS; detected from the columns when None.
        adjustment: "all" (default), "split", "dividend" or "raw": what to take out of the prices,
            from the file's factors (see `liu.sources.adjust`); what is left raw is in `actions()`.
        columns: read only these columns (None = all).
    """

    finite = True

    def __init__(
        self,
        path: str | Path,
        symbols: list[str] | tuple[str, ...] | None = None,
        start: Any = None,
        end: Any = None,
        speed: float | None | Literal["clock"] = "clock",
        batch: int = 500,
        format: str | None = None,
        adjustment: str = "all",
        columns: list[str] | None = None,
    ) -> None:
        if adjustment not in ADJUSTMENTS:
            raise ValueError(f"adjustment {adjustment!r} must be one of {', '.join(ADJUSTMENTS)}")
        self.path = Path(path)
        self.speed = speed
        self.batch = batch
        self.adjustment = adjustment
        self.events = 0
        df = _read(self.path, columns)
        self.format = format or detect_format(df.columns)
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}")
        if symbols is not None:
            df = df[df["symbol"].isin(list(symbols))]
        if self.format == "trade_ticks" and "suspicious" in df:
            susp = df["suspicious"]
            if susp.dtype != bool:
                susp = susp.astype(str).str.lower().eq("true")
            df = df[~susp.to_numpy()]
        ts = bar_times(df, self.format)
        basis = latest_factors(df, ts) if adjustment != "raw" else None  # the file's end, not the window's
        lo, hi = bounds(start, end)
        keep = np.ones(len(ts), dtype=bool)
        if lo is not None:
            keep &= ts >= lo
        if hi is not None:
            keep &= ts < hi
        if not keep.all():
            df = df[keep]
            ts = ts[keep]
        df = df.reset_index(drop=True)
        sym = (
            df["symbol"]
            if isinstance(df["symbol"].dtype, pd.CategoricalDtype)
            else df["symbol"].astype("category")
        )
        sym = sym.cat.remove_unused_categories()
        self._names: list[str] = [str(s) for s in sym.cat.categories]
        self._sym = sym.cat.codes.to_numpy(dtype=np.int32)
        self._ts = ts
        self._df_cols(df)
        adj = adjustment_of(df, self.format, self._sym, self._names, ts, adjustment, basis)
        self._adjust(adj.price, adj.volume)
        self._actions = adj.actions
        del df, sym, ts, keep, adj
        self._build_events()
        self._universe = self._make_universe()
        del self._ts  # the sorted event times are kept in _ev_ts
        _release_memory()

    # -- loading ---------------------------------------------------------------

    def _df_cols(self, df: pd.DataFrame) -> None:
        f = self.format
        if f in ("lean_minute", "minute_end", "daily"):
            self._o = _floats(df, "open")
            self._h = _floats(df, "high")
            self._l = _floats(df, "low")
            self._c = _floats(df, "close")
            self._v = _floats(df, "volume")
            self._bp = _floats(df, "bid_close")
            self._bs = _floats(df, "bid_size")
            self._ap = _floats(df, "ask_close")
            self._as = _floats(df, "ask_size")
        elif f == "trade_ticks":
            self._p = _floats(df, "price")
            self._s = _floats(df, "size")
            self._x_cat, self._x = _codes(df, "exchange")
            cond_cat, self._cond = _codes(df, "condition")
            self._cond_lists = alpaca_conditions(cond_cat)
        else:  # quote_ticks
            self._bp = _floats(df, "bid")
            self._bs = _floats(df, "bid_size")
            self._ap = _floats(df, "ask")
            self._as = _floats(df, "ask_size")
            self._x_cat, self._x = _codes(df, "exchange")
            self._day = _ny_day(self._ts)

    def _adjust(self, price: np.ndarray | None, volume: np.ndarray | None) -> None:
        """Multiply prices and sizes by the adjustment's per-row factors (in place)."""
        if price is None or volume is None:
            return
        f = self.format
        if f in ("lean_minute", "minute_end", "daily"):
            prices, sizes = ("_o", "_h", "_l", "_c", "_bp", "_ap"), ("_v", "_bs", "_as")
        elif f == "trade_ticks":
            prices, sizes = ("_p",), ("_s",)
        else:
            prices, sizes = ("_bp", "_ap"), ("_bs", "_as")
        for name in prices:
            column = getattr(self, name)
            column *= price
        for name in sizes:
            column = getattr(self, name)
            column *= volume

    def _build_events(self) -> None:
        """Sorted event arrays: time, kind, row. Bars before quotes at equal times."""
        n = len(self._ts)
        rows = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        if self.format in ("lean_minute", "minute_end", "daily"):
            bars = rows[~np.isnan(self._c)]
            quotes = rows[~(np.isnan(self._bp) | np.isnan(self._ap))]
            ev_row = np.concatenate([bars, quotes])
            ev_kind = np.concatenate(
                [np.full(len(bars), _KIND_BAR, np.int8), np.full(len(quotes), _KIND_QUOTE, np.int8)]
            )
        elif self.format == "trade_ticks":
            ev_row, ev_kind = rows, np.full(n, _KIND_TRADE, np.int8)
        else:
            ev_row, ev_kind = rows, np.full(n, _KIND_QUOTE, np.int8)
        ev_ts = self._ts[ev_row]
        order = np.argsort(ev_ts, kind="stable")
        self._ev_ts = ev_ts[order]
        self._ev_kind = ev_kind[order]
        self._ev_row = ev_row[order]

    def _make_universe(self) -> dict[str, dict]:
        out = {}
        day = _ny_day(self._ts) if len(self._ts) else np.zeros(0, np.int64)
        for code, name in enumerate(self._names):
            idx = np.flatnonzero(self._sym == code)
            if not len(idx):
                continue
            idx = idx[np.argsort(self._ts[idx], kind="stable")]
            price, volume = float("nan"), 0.0
            if self.format in ("lean_minute", "minute_end", "daily"):
                closes = self._c[idx]
                ok = idx[~np.isnan(closes)]
                if len(ok):
                    price = float(self._c[ok[0]])
                    if self.format == "daily":
                        volume = float(np.nanmean(self._v[ok[:20]]))
                    else:
                        first = ok[day[ok] == day[ok[0]]]
                        volume = float(np.nansum(self._v[first]))
                else:
                    bp, ap = self._bp[idx], self._ap[idx]
                    both = idx[~(np.isnan(bp) | np.isnan(ap))]
                    if len(both):
                        price = float((self._bp[both[0]] + self._ap[both[0]]) / 2)
            elif self.format == "trade_ticks":
                price = float(self._p[idx[0]])
                first = idx[day[idx] == day[idx[0]]]
                volume = float(self._s[first].sum())
            else:
                bids = idx[self._bp[idx] > 0]
                asks = idx[self._ap[idx] > 0]
                if len(bids) and len(asks):
                    price = float((self._bp[bids[0]] + self._ap[asks[0]]) / 2)
            out[name] = {"price": price, "avg_volume": volume, "shortable": True}
        return out

    # -- Feed protocol -----------------------------------------------------------

    @property
    def types(self) -> frozenset[str]:
        return frozenset({"trade_ticks": "t", "quote_ticks": "q", "lean_minute": "bq"}.get(self.format, "b"))

    def __len__(self) -> int:
        """Number of source events (for quote ticks: rows; fewer quotes may be sent)."""
        return len(self._ev_ts)

    def universe(self) -> dict[str, dict]:
        return self._universe

    def actions(self) -> list[CorporateAction]:
        """The splits and dividends `adjustment` left in the prices, in time order (none for "all")."""
        return list(self._actions)

    def first_ts(self) -> int | None:
        """Data time of the first event (quote ticks: of the first row)."""
        return int(self._ev_ts[0]) if len(self._ev_ts) else None

    async def frames(self, clock: Clock) -> AsyncIterator[list[dict] | P.Encoded]:
        ev_ts = self._ev_ts
        n = len(ev_ts)
        if self.speed == "clock":
            pace = clock if clock.realtime else None
        elif self.speed is None:
            pace = None
        else:
            pace = Clock(ClockSpec(int(ev_ts[0]) if n else 0, time.time_ns(), float(self.speed)))
        build = {
            "trade_ticks": self._trades,
            "quote_ticks": self._quotes,
        }.get(self.format, self._bars_quotes)
        if self.format == "quote_ticks":
            self._venues: dict[int, tuple[dict, dict, int]] = {}
        batch = self.batch
        i = 0
        while i < n:
            j = min(i + batch, n)
            if pace is not None:
                now = pace.now_ns()
                j = i + int(np.searchsorted(ev_ts[i:j], now, side="right"))
                if j == i:
                    wait = (pace.data_to_wall_ns(int(ev_ts[i])) - time.time_ns()) / 1e9
                    await asyncio.sleep(max(wait, 0.001))
                    continue
            msgs = build(i, j)
            i = j
            if msgs:
                self.events += len(msgs)
                yield msgs

    # -- frame builders ----------------------------------------------------------

    def _bars_quotes(self, i: int, j: int) -> list[dict]:
        rows = self._ev_row[i:j]
        kinds = self._ev_kind[i:j].tolist()
        tss = self._ev_ts[i:j].tolist()
        names = self._names
        sym = self._sym[rows].tolist()
        o, h, lo, c, v = (a[rows].tolist() for a in (self._o, self._h, self._l, self._c, self._v))
        bp, bs, ap, asz = (a[rows].tolist() for a in (self._bp, self._bs, self._ap, self._as))
        ts_ = P.Timestamp.from_unix_nano
        out = []
        for k in range(len(kinds)):
            if kinds[k] == _KIND_BAR:
                ok, hk, lk, ck = o[k], h[k], lo[k], c[k]
                if ok != ok:  # no open/high/low in the file: a close-only bar
                    ok = ck
                if hk != hk:
                    hk = max(ok, ck)
                if lk != lk:
                    lk = min(ok, ck)
                vk = v[k] if v[k] == v[k] else 0.0
                out.append(
                    {
                        "T": "b",
                        "S": names[sym[k]],
                        "o": ok,
                        "h": hk,
                        "l": lk,
                        "c": ck,
                        "v": vk,
                        "t": ts_(tss[k]),
                        "n": 0,
                        "vw": (ok + hk + lk + ck) / 4.0,
                    }
                )
            else:
                out.append(
                    {
                        "T": "q",
                        "S": names[sym[k]],
                        "bx": "V",
                        "bp": bp[k],
                        "bs": bs[k] if bs[k] == bs[k] else 0.0,
                        "ax": "V",
                        "ap": ap[k],
                        "as": asz[k] if asz[k] == asz[k] else 0.0,
                        "t": ts_(tss[k]),
                        "c": ["R"],
                        "z": "C",
                    }
                )
        return out

    def _trades(self, i: int, j: int) -> list[dict]:
        rows = self._ev_row[i:j]
        tss = self._ev_ts[i:j].tolist()
        names = self._names
        sym = self._sym[rows].tolist()
        p = self._p[rows].tolist()
        s = self._s[rows].tolist()
        ids = (rows + 1).tolist()  # i = 1-based row number (after filtering)
        xc, xs = self._x_cat, self._x[rows].tolist()
        cc, cs = self._cond_lists, self._cond[rows].tolist()
        ts_ = P.Timestamp.from_unix_nano
        return [
            {
                "T": "t",
                "S": names[sym[k]],
                "i": ids[k],
                "x": xc[xs[k]],
                "p": p[k],
                "s": s[k],
                "t": ts_(tss[k]),
                "c": cc[cs[k]] if cs[k] >= 0 else [],
                "z": "A",
            }
            for k in range(len(tss))
        ]

    def _quotes(self, i: int, j: int) -> list[dict]:
        """Best bid / offer across venues after each row (state kept across frames)."""
        rows = self._ev_row[i:j]
        tss = self._ev_ts[i:j].tolist()
        names = self._names
        sym = self._sym[rows].tolist()
        bp, bs, ap, asz = (a[rows].tolist() for a in (self._bp, self._bs, self._ap, self._as))
        xc, xs = self._x_cat, self._x[rows].tolist()
        days = self._day[rows].tolist()
        venues = self._venues
        ts_ = P.Timestamp.from_unix_nano
        out = []
        for k in range(len(tss)):
            sk = sym[k]
            state = venues.get(sk)
            if state is None or state[2] != days[k]:
                state = ({}, {}, days[k])  # new symbol or new session: forget venues
                venues[sk] = state
            bids, asks, _ = state
            x = xc[xs[k]] if xs[k] >= 0 else ""
            if bp[k] > 0:
                bids[x] = (bp[k], bs[k])
            if ap[k] > 0:
                asks[x] = (ap[k], asz[k])
            if not bids or not asks:
                continue
            bx = max(bids, key=lambda v: bids[v][0])
            ax = min(asks, key=lambda v: asks[v][0])
            out.append(
                {
                    "T": "q",
                    "S": names[sk],
                    "bx": bx,
                    "bp": bids[bx][0],
                    "bs": bids[bx][1],
                    "ax": ax,
                    "ap": asks[ax][0],
                    "as": asks[ax][1],
                    "t": ts_(tss[k]),
                    "c": ["R"],
                    "z": "A",
                }
            )
        return out


def file_actions(
    path: str | Path, symbols: Any = None, start: Any = None, end: Any = None, adjustment: str = "all"
) -> list[CorporateAction]:
    """The corporate actions a replay of `path` leaves to the runner (see `ReplayFeed.actions`),
    reading only the columns they need: the daemon's consumers get them without loading the whole file."""
    if adjustment == "all":
        return []
    head = read_columns(Path(path))
    if not has_factors(head):
        return []
    keep = {
        "symbol", "timestamp", "date", "close", "bid_close", "ask_close", "bid", "ask", "price",
        "split_factor", "price_factor", "adjusted_close", "split_coefficient", "dividend_amount",
    }  # fmt: skip
    feed = ReplayFeed(
        path,
        symbols=symbols,
        start=start,
        end=end,
        adjustment=adjustment,
        columns=[c for c in head if c in keep],
    )
    return feed.actions()


def plan_actions(plan: TradePlan) -> tuple[CorporateAction, ...]:
    """The corporate actions the plan's replay leaves raw (the daemon hands them to every consumer)."""
    src = plan.source
    if src.kind != "replay" or src.adjustment == "all" or not src.path:
        return ()
    return tuple(file_actions(plan.path(src.path), src.symbol_list, src.start, src.end, src.adjustment))


def _release_memory() -> None:
    """Hand memory freed by parsing (arrow pool, malloc arenas) back to the OS."""
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception:
        pass
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


# Lean's TradeConditionFlags bits (QuantConnect.Data.Auxiliary) → the CTS sale condition code Alpaca sends
# for it on tapes A and B; bits without a code of their own (stopped, bunched, CAP election,
# trade-through exempt, undocumented) are left out.
_LEAN_CONDITIONS = {
    0: "@", 1: "C", 2: "N", 3: "R", 4: "Y", 5: "F", 6: "O", 7: "6", 8: "5", 9: "4", 10: "T", 11: "L",
    13: "T", 14: "Z", 15: "S", 16: "A", 18: "V", 19: "D", 20: "B", 21: "X", 22: "H", 23: "K", 24: "M",
    25: "P", 26: "Q", 28: "E", 31: "I",
}  # fmt: skip


def alpaca_conditions(values: list[str]) -> list[list[str]]:
    """Each recorded condition value as Alpaca's list of condition codes.

    Lean's hexadecimal flag strings are translated bit by bit (a print with none of the coded bits is
    a regular "@"); any other value (a file recorded from Alpaca) is passed on as one code.
    """
    try:
        flags = [int(v, 16) for v in values]
    except ValueError:
        return [[v] for v in values]
    out = []
    for f in flags:
        codes: list[str] = []
        for bit, code in _LEAN_CONDITIONS.items():
            if f >> bit & 1 and code not in codes:
                codes.append(code)
        out.append(codes or ["@"])
    return out


def _codes(df: pd.DataFrame, col: str) -> tuple[list[str], np.ndarray]:
    """(category names, int codes; -1 = missing) of a text column."""
    if col not in df:
        return [], np.full(len(df), -1, np.int32)
    cat = (
        df[col] if isinstance(df[col].dtype, pd.CategoricalDtype) else df[col].astype(str).astype("category")
    )
    return [str(x) for x in cat.cat.categories], cat.cat.codes.to_numpy(dtype=np.int32)
