"""Benchmark strategy for benchmarks/live_path.py: realistic per-trade work, no orders.

Per trade it reads the symbol's minute bars (built by the runner from trades),
peeks SMA(10) and RSI(14) at the trade price, and, when the benchmark consumer
asks for it, records the latency from the producer's receive time to this
callback (and from the server's stamp to this callback).

The receive time comes from `ctx.received_ns`, which the runner sets per trade.
"""

from __future__ import annotations

import time
from array import array

from liu.events import Trade
from liu.runner import MINUTE
from liu.strategy import Context, OrderList, Strategy, StrategyConfig


class BenchConfig(StrategyConfig):
    warm_symbols: int = 0  # SIM000.. names to seed with history, so the indicators are open from the start
    warm_bars: int = 30
    work: bool = True  # False: only the latency probe (measures liu's path without strategy work)


class LiveBench(Strategy):
    Config = BenchConfig

    def on_start(self, ctx: Context) -> None:
        self.runner = r = ctx._runner
        if not hasattr(r, "bench_step"):  # run by `trader` itself: never record
            r.bench_step, r.bench_stride = 0, 1
        self.samples: dict[int, tuple[array, array]] = {}
        self.k = 0
        self.acc = 0.0
        n = self.config.warm_symbols
        if n:
            # Live, history would be loaded before the open; here: a flat-ish synthetic history.
            width = max(3, len(str(n - 1)))
            start = (time.time_ns() // MINUTE - self.config.warm_bars - 1) * MINUTE
            feats = self.runner.features
            for i in range(n):
                sym = f"SIM{i:0{width}d}"
                for j in range(self.config.warm_bars):
                    p = 100.0 + (j % 7) - 3
                    feats.add_bar(sym, start + j * MINUTE, p, p + 1, p - 1, p, 1000.0)

    def on_trade(self, trade: Trade, ctx: Context) -> OrderList:
        t = time.time_ns()
        sym = trade.symbol
        if self.config.work:
            price = trade.price
            bars = ctx.bars(sym)
            last_close = bars.close[-1] if bars.n else price
            sma = ctx.indicator(sym, "SMA", timeperiod=10).peek(price)
            rsi = ctx.indicator(sym, "RSI", timeperiod=14).peek(price)
            if sma is not None and rsi is not None:
                self.acc += (price - sma) * (rsi - 50.0) + (last_close - price)
        r = self.runner
        step = r.bench_step
        if step:
            self.k += 1
            if self.k % r.bench_stride == 0:
                s = self.samples.get(step)
                if s is None:
                    s = self.samples[step] = (array("q"), array("q"))
                s[0].append(t - ctx.received_ns)
                s[1].append(t - trade.ts)
        return None
