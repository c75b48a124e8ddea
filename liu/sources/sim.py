"""SimFeed: seeded synthetic market data, paced in wall time, stamped with the data clock.

Determinism: the sequence of messages (symbols, kinds, prices, sizes) depends
only on the constructor arguments and the clock's speed; only `t` depends on
when frames are sent (`t` = `clock.now_ns()` at send time).

Price model: each symbol follows a log random walk. The per-event step is
scaled so that the variance grows with *data* time: a symbol receiving
`rate * weight` events per wall second under a clock running `speed`× sees
`1 / (rate * weight) * speed` data seconds between its events, and its daily
volatility (seeded, 1-4 %) applies per 6.5 h of data time. Quotes bracket the
last trade price (bid < ask, at least one cent apart).

Crypto pairs (symbols with a slash, "BTC/USD") get Alpaca's crypto message shapes (float sizes, no
exchange, conditions or tape; trades carry the taker side `tks`), a 24-hour day for their volatility,
their own seeded prices, and are never shortable.

History: `SimFeed.history(calendar, epoch_ns)` is the feed's past, minute bars generated
deterministically backwards from `epoch_ns` (where the stream starts, at each symbol's base price):
stocks during the calendar's sessions, crypto around the clock. It depends only on the constructor
arguments, the calendar and the epoch, so a test, the backtester and the local exchange see the same bars.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import numpy as np

from liu.clock import Clock
from liu.sources import protocol as P
from liu.sources.exchange.calendar import MarketCalendar, ny_date
from liu.sources.exchange.history import MINUTE_NS, NS, Bars
from liu.sources.protocol import is_crypto

SESSION_SECONDS = 6.5 * 3600
CRYPTO_DAY_SECONDS = 24 * 3600
# Rough price levels (times a seeded factor in 0.8..1.25) so well-known pairs look familiar.
_CRYPTO_PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0, "LTC": 80.0, "DOGE": 0.15, "AVAX": 30.0}
_DEFAULT_MIX = {"t": 0.8, "q": 0.2, "b": 0.05, "d": 0.01}


class SimFeed:
    """Endless synthetic feed.

    Args:
        symbols: a count (names "SIM000", "SIM001", ...) or an explicit list of names.
        rate: events per wall second, all symbols together; None = as fast as the
            connections take them (no pacing).
        seed: seeds everything (per-symbol parameters and the event stream).
        batch: messages per frame.
        kinds: message types to emit, ("t", "q") by default; a dict {type: share}
            sets the mix (default shares t 0.8, q 0.2, b 0.05, d 0.01, normalised).
        preencoded: benchmark fast path: cycle through `prebuilt_frames` frames
            prebuilt as msgpack bytes for all symbols, patching the real time in at
            send time with one `bytes.replace`. Only connections subscribed to "*"
            on every emitted channel receive them.
        prebuilt_frames: how many distinct frames the pre-encoded mode cycles through.
        shortable_share: share of stock symbols marked shortable (crypto never is).
    """

    finite = False

    def __init__(
        self,
        symbols: int | list[str] = 100,
        rate: float | None = 10_000.0,
        seed: int = 0,
        batch: int = 200,
        kinds: tuple[str, ...] | list[str] | dict[str, float] = ("t", "q"),
        preencoded: bool = False,
        prebuilt_frames: int = 64,
        shortable_share: float = 0.8,
    ) -> None:
        if isinstance(symbols, int):
            width = max(3, len(str(symbols - 1)))
            self.symbols = [f"SIM{i:0{width}d}" for i in range(symbols)]
        else:
            self.symbols = list(symbols)
        if not self.symbols:
            raise ValueError("SimFeed needs at least one symbol")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None for unpaced)")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        mix = dict(kinds) if isinstance(kinds, dict) else {k: _DEFAULT_MIX[k] for k in kinds}
        for k in mix:
            if k not in ("t", "q", "b", "d"):
                raise ValueError(f"unknown message kind {k!r}")
        total = sum(mix.values())
        self._kind_codes = list(mix)
        self._kind_p = np.array([v / total for v in mix.values()])
        self.types = frozenset(mix)
        self.rate = rate
        self.seed = seed
        self.batch = batch
        self.preencoded = preencoded
        self.prebuilt_frames = prebuilt_frames
        self.events = 0

        n = len(self.symbols)
        rng = np.random.default_rng([seed, 0])
        self.base_price = np.round(np.exp(rng.uniform(math.log(20), math.log(500), n)), 2)
        self.daily_vol = rng.uniform(0.01, 0.04, n)
        w = rng.lognormal(0.0, 1.0, n)
        self.weight = w / w.sum()
        self.shortable = rng.random(n) < shortable_share
        self.avg_volume = np.round(self.weight * n * 2_000_000.0)
        self.crypto = np.array([is_crypto(s) for s in self.symbols], dtype=bool)
        if self.crypto.any():
            if preencoded and not self.crypto.all():
                raise ValueError("SimFeed: pre-encoded frames need stock-only or crypto-only symbols")
            crng = np.random.default_rng([seed, 4])  # own stream: stock symbols keep their values
            price = np.exp(crng.uniform(math.log(0.1), math.log(1_000), n))
            jitter = np.exp(crng.uniform(math.log(0.8), math.log(1.25), n))
            for k, s in enumerate(self.symbols):
                if s.split("/")[0] in _CRYPTO_PRICES:
                    price[k] = _CRYPTO_PRICES[s.split("/")[0]] * jitter[k]
            vol = crng.uniform(0.02, 0.06, n)
            c = self.crypto
            self.base_price[c] = np.where(price[c] >= 1, np.round(price[c], 2), np.round(price[c], 8))
            self.daily_vol[c] = vol[c]
            self.shortable[c] = False
            self.avg_volume[c] = np.round(self.weight[c] * n * 50_000_000.0 / self.base_price[c], 4)

    # -- Feed protocol -------------------------------------------------------

    def universe(self) -> dict[str, dict]:
        return {
            s: {
                "price": float(self.base_price[i]),
                "avg_volume": float(self.avg_volume[i]),
                "shortable": bool(self.shortable[i]),
            }
            for i, s in enumerate(self.symbols)
        }

    def first_ts(self) -> int | None:
        return None

    def history(self, calendar: MarketCalendar, epoch_ns: int) -> SimHistory:
        """This feed's past up to `epoch_ns` (see the module docstring)."""
        return SimHistory(self, calendar, epoch_ns)

    async def frames(self, clock: Clock) -> AsyncIterator[list[dict] | P.Encoded]:
        gen = _Generator(self, clock.spec.speed)
        if self.preencoded:
            make = self._preencoded_maker(gen, clock)
        else:

            def make() -> list[dict]:
                return gen.frame(self.batch, clock.now_ns())

        loop = asyncio.get_running_loop()
        if self.rate is None:
            while True:
                frame = make()
                self.events += self.batch
                yield frame
        interval = self.batch / self.rate  # wall seconds per frame
        t0 = loop.time()
        sent = 0
        while True:
            due = int((loop.time() - t0) / interval) + 1 - sent
            if due <= 0:
                # Sleep until the next deadline; >= 1 ms so a coarse timer never spins.
                await asyncio.sleep(max(t0 + sent * interval - loop.time(), 0.001))
                continue
            for _ in range(due):
                frame = make()
                sent += 1
                self.events += self.batch
                yield frame

    # -- pre-encoded fast path ----------------------------------------------

    def prebuild(self, gen: _Generator | None = None) -> list[bytes]:
        """The frames the pre-encoded mode cycles through, `t` set to the placeholder."""
        gen = gen or _Generator(self, 1.0)
        out = []
        for _ in range(self.prebuilt_frames):
            msgs = gen.frame(self.batch, 0)
            for m in msgs:
                m["t"] = P.PLACEHOLDER_TS
            data = P.encode(msgs)
            if data.count(P.PLACEHOLDER_BYTES) != len(msgs):  # pragma: no cover - ~impossible
                raise RuntimeError("placeholder timestamp pattern is not unique in a frame")
            out.append(data)
        return out

    def _preencoded_maker(self, gen: _Generator, clock: Clock):
        frames = self.prebuild(gen)
        k = len(frames)
        count = self.batch
        placeholder = P.PLACEHOLDER_BYTES
        ts64 = P.ts64_bytes
        state = [0]

        def make() -> P.Encoded:
            i = state[0]
            state[0] = i + 1
            return P.Encoded(frames[i % k].replace(placeholder, ts64(clock.now_ns())), count)

        return make


class _Generator:
    """The seeded event stream of a SimFeed."""

    def __init__(self, feed: SimFeed, speed: float | None) -> None:
        self.feed = feed
        self.rng = np.random.default_rng([feed.seed, 1])
        self.price = feed.base_price.astype(float).tolist()
        self.last_bar_close = list(self.price)
        speed = 1.0 if speed is None else speed
        rate = feed.rate if feed.rate is not None else 100_000.0
        dt = speed / (rate * feed.weight)  # data seconds between a symbol's events
        day = np.where(feed.crypto, CRYPTO_DAY_SECONDS, SESSION_SECONDS)
        self.step_sd = (feed.daily_vol * np.sqrt(dt / day)).tolist()
        self.half_spread = np.where(
            feed.crypto, feed.base_price * 0.0001, np.maximum(0.005, feed.base_price * 0.0002)
        ).tolist()
        self.crypto = feed.crypto.tolist()
        self.any_crypto = bool(feed.crypto.any())
        self.trade_id = 0

    def frame(self, n: int, ts_ns: int) -> list[dict]:
        f = self.feed
        rng = self.rng
        syms = rng.choice(len(f.symbols), size=n, p=f.weight).tolist()
        kinds = rng.choice(len(f._kind_codes), size=n, p=f._kind_p).tolist()
        z = rng.standard_normal(n).tolist()
        sizes = (rng.geometric(0.35, n) * 100).tolist()
        sizes2 = (rng.geometric(0.35, n) * 100).tolist()
        codes = f._kind_codes
        names = f.symbols
        price = self.price
        sd = self.step_sd
        t = P.Timestamp.from_unix_nano(ts_ns)
        out = []
        crypto = self.crypto if self.any_crypto else None
        for j in range(n):
            i = syms[j]
            if crypto is not None and crypto[i]:
                out.append(self._crypto_msg(i, codes[kinds[j]], z[j], sizes[j], sizes2[j], t))
                continue
            p = max(price[i] * math.exp(sd[i] * z[j]), 1.0)
            price[i] = p
            kind = codes[kinds[j]]
            if kind == "t":
                self.trade_id += 1
                out.append(
                    {
                        "T": "t",
                        "S": names[i],
                        "i": self.trade_id,
                        "x": "V",
                        "p": round(p, 2),
                        "s": sizes[j],
                        "t": t,
                        "c": ["@"],
                        "z": "C",
                    }
                )
            elif kind == "q":
                hs = self.half_spread[i]
                bid = round(p - hs, 2)
                ask = round(p + hs, 2)
                if ask <= bid:
                    ask = round(bid + 0.01, 2)
                out.append(
                    {
                        "T": "q",
                        "S": names[i],
                        "bx": "V",
                        "bp": bid,
                        "bs": sizes[j],
                        "ax": "V",
                        "ap": ask,
                        "as": sizes2[j],
                        "t": t,
                        "c": ["R"],
                        "z": "C",
                    }
                )
            else:  # "b" / "d"
                o = self.last_bar_close[i]
                c = round(p, 2)
                wig = abs(z[j]) * sd[i] * p
                h = round(max(o, c) + wig, 2)
                lo = round(max(min(o, c) - wig, 0.01), 2)
                self.last_bar_close[i] = c
                v = sizes[j] * 10
                out.append(
                    {
                        "T": kind,
                        "S": names[i],
                        "o": o,
                        "h": h,
                        "l": lo,
                        "c": c,
                        "v": v,
                        "t": t,
                        "n": v // 100,
                        "vw": round((o + h + lo + c) / 4, 4),
                    }
                )
        return out

    def _crypto_msg(self, i: int, kind: str, z: float, size: float, size2: float, t: P.Timestamp) -> dict:
        """One crypto message (Alpaca's v1beta3 shapes: float sizes, no x / c / z)."""
        price = self.price
        p = max(price[i] * math.exp(self.step_sd[i] * z), 1e-6)
        price[i] = p
        name = self.feed.symbols[i]
        if kind == "t":
            self.trade_id += 1
            return {
                "T": "t",
                "S": name,
                "p": _crypto_round(p),
                "s": round(size * 10.0 / p, 8),
                "t": t,
                "i": self.trade_id,
                "tks": "B" if z >= 0 else "S",
            }
        if kind == "q":
            hs = self.half_spread[i]
            return {
                "T": "q",
                "S": name,
                "bp": _crypto_round(p - hs),
                "bs": round(size * 10.0 / p, 8),
                "ap": _crypto_round(p + hs),
                "as": round(size2 * 10.0 / p, 8),
                "t": t,
            }
        o = self.last_bar_close[i]
        c = _crypto_round(p)
        wig = abs(z) * self.step_sd[i] * p
        h = _crypto_round(max(o, c) + wig)
        lo = _crypto_round(max(min(o, c) - wig, 1e-6))
        self.last_bar_close[i] = c
        v = round(size * 100.0 / p, 8)
        return {
            "T": kind,
            "S": name,
            "o": o,
            "h": h,
            "l": lo,
            "c": c,
            "v": v,
            "t": t,
            "n": int(size // 10),
            "vw": _crypto_round((o + h + lo + c) / 4),
        }


def _crypto_round(x: float) -> float:
    return round(x, 2) if x >= 1 else round(x, 8)


# -- history ---------------------------------------------------------------------------------------


class SimHistory:
    """A SimFeed's past: 1-minute bars before `epoch_ns`, ending at each symbol's base price.

    Each day's minutes come from their own seeded generator (seed, symbol index, date), so any window is
    the same whatever else was asked before. Prices walk backwards from the epoch: the close of the last
    minute before it is the base price the stream starts from, so history and stream join without a gap.
    Stocks trade the calendar's sessions (half days are shorter); crypto trades every minute of every
    UTC day. At most `max_days` days before the epoch are served.
    """

    def __init__(self, feed: SimFeed, calendar: MarketCalendar, epoch_ns: int, max_days: int = 3660) -> None:
        self.feed = feed
        self.calendar = calendar
        self.epoch = epoch_ns - epoch_ns % MINUTE_NS
        self.max_days = max_days
        self._index = {s: i for i, s in enumerate(feed.symbols)}
        self._cache: OrderedDict[str, tuple[date, Bars]] = OrderedDict()

    def symbols(self) -> frozenset[str]:
        return frozenset(self.feed.symbols)

    def minute_bars(self, symbol: str, start_ns: int, end_ns: int, adjustment: str = "raw") -> Bars:
        """Bars with `start_ns <= t <= end_ns` and `t < epoch` (the simulator has no corporate actions,
        so every adjustment is raw)."""
        i = self._index.get(symbol)
        end_ns = min(end_ns, self.epoch - 1)
        floor = self.epoch - self.max_days * 86400 * NS
        start_ns = max(start_ns, floor)
        if i is None or start_ns > end_ns:
            return Bars.empty()
        crypto = bool(self.feed.crypto[i])
        first = _utc_date(start_ns) if crypto else ny_date(start_ns)
        got = self._cache.get(symbol)
        if got is None or got[0] > first:
            got = (first, self._generate(i, first, crypto))
            self._cache[symbol] = got
            if len(self._cache) > 64:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(symbol)
        return got[1].between(start_ns, end_ns)

    def _days(self, first: date, crypto: bool) -> list[tuple[date, int, int]]:
        """(day, first minute ns, minutes in the full day) from `first` to the epoch's day."""
        last = _utc_date(self.epoch - 1) if crypto else ny_date(self.epoch - 1)
        if crypto:
            out = []
            d = first
            while d <= last:
                start = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * NS
                out.append((d, start, 1440))
                d += timedelta(days=1)
            return out
        return [(s.day, s.open_ns, s.minutes) for s in self.calendar.sessions(first, last)]

    def _generate(self, i: int, first: date, crypto: bool) -> Bars:
        f = self.feed
        day_seconds = CRYPTO_DAY_SECONDS if crypto else SESSION_SECONDS
        sd = float(f.daily_vol[i]) * math.sqrt(60.0 / day_seconds)
        ts, zs, ws, us = [], [], [], []
        for d, start, minutes in self._days(first, crypto):
            rng = np.random.default_rng([f.seed, 2, i, d.toordinal()])
            z = rng.standard_normal(minutes)
            w = rng.random((2, minutes))
            u = rng.lognormal(0.0, 0.5, minutes)
            t = start + np.arange(minutes, dtype=np.int64) * MINUTE_NS
            keep = t < self.epoch
            ts.append(t[keep])
            zs.append(z[keep])
            ws.append(w[:, keep])
            us.append(u[keep])
        if not ts:
            return Bars.empty()
        t = np.concatenate(ts)
        if not len(t):
            return Bars.empty()
        x = sd * np.concatenate(zs)
        w = np.concatenate(ws, axis=1)
        u = np.concatenate(us)
        base = float(f.base_price[i])
        close = base * np.exp(np.cumsum(x) - x.sum())  # the last close is the base price
        open_ = np.concatenate([[close[0] * math.exp(-x[0])], close[:-1]])
        high = np.maximum(open_, close) * np.exp(w[0] * sd)
        low = np.minimum(open_, close) * np.exp(-w[1] * sd)
        per_minute = float(f.avg_volume[i]) / (1440 if crypto else 390)
        if crypto:
            o, h, lo, c = (
                np.where(a >= 1, np.round(a, 2), np.round(a, 8)) for a in (open_, high, low, close)
            )
            v = np.round(per_minute * u, 4)
            n = np.maximum(1, np.round(u * 20)).astype(np.int64)
        else:
            o, h, lo, c = (np.round(a, 2) for a in (open_, high, low, close))
            v = np.maximum(1.0, np.round(per_minute * u))
            n = np.maximum(1, v // 100).astype(np.int64)
        h = np.maximum(h, np.maximum(o, c))
        lo = np.minimum(lo, np.minimum(o, c))
        vw = np.round((o + h + lo + c) / 4.0, 4)
        return Bars(t, o, h, lo, c, v, n, vw)


def _utc_date(ts_ns: int) -> date:
    return datetime.fromtimestamp(ts_ns / NS, UTC).date()
