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
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import numpy as np

from liu.clock import Clock
from liu.sources import protocol as P

SESSION_SECONDS = 6.5 * 3600
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
        shortable_share: share of symbols marked shortable.
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
        self.step_sd = (feed.daily_vol * np.sqrt(dt / SESSION_SECONDS)).tolist()
        self.half_spread = np.maximum(0.005, feed.base_price * 0.0002).tolist()
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
        for j in range(n):
            i = syms[j]
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
