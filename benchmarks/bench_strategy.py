"""Benchmark strategy for benchmarks/live_path.py: realistic per-trade work, no orders.

Per trade it reads the symbol's minute bars (built by the runner from trades),
peeks SMA(10) and RSI(14) at the trade price, and, when the benchmark consumer
asks for it, records the latency from the producer's receive time to this
callback (and from the server's stamp to this callback).

The receive time comes from `ctx.received_ns`, which the runner sets per trade.

`LiveBenchML` is the same plus one model named in its tradeplan entry: liu scores it at every
bar close (the runner's `ModelScorer` hook) and `on_bar` reads the bar's probabilities, as an ML
strategy would. Its on_start warms the model's feature streams with the same synthetic history.
"""

from __future__ import annotations

import time
from array import array

from liu.events import Bar, Trade
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
        if not hasattr(r, "bench_clock"):
            r.bench_clock = None  # the consumer's Clock (set at Start), to map data time to wall time
        self.samples: dict[int, tuple[array, array]] = {}
        self.k = 0
        self.acc = 0.0
        if self.config.warm_symbols:
            # Live, history would be loaded before the open; here: a flat-ish synthetic history.
            feats = self.runner.features
            for sym, ts, p in self.warm_history(self.config.warm_bars):
                feats.add_bar(sym, ts, p, p + 1, p - 1, p, 1000.0)

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
                clock = r.bench_clock  # trade.ts is data time: wall time only at speed 1
                fast = clock is not None and clock.spec.speed != 1.0
                s[1].append(t - (clock.data_to_wall_ns(trade.ts) if fast else trade.ts))
        return None

    def warm_history(self, bars: int) -> list[tuple[str, int, float]]:
        """(symbol, bar ts, price) of the synthetic history on_start feeds, oldest first per symbol."""
        n = self.config.warm_symbols
        width = max(3, len(str(n - 1)))
        start = (time.time_ns() // MINUTE - bars - 1) * MINUTE
        return [
            (f"SIM{i:0{width}d}", start + j * MINUTE, 100.0 + (j % 7) - 3)
            for i in range(n)
            for j in range(bars)
        ]


class MLBenchConfig(BenchConfig):
    model: str = "sma_rsi"  # the model's name (its spec's `name`) in this strategy's tradeplan entry
    ml_warm_bars: int = 60  # history for the model's features (sma_rsi needs 34 bars)


class LiveBenchML(LiveBench):
    """LiveBench plus a model scored at every bar close by liu's bar hook; on_bar reads its outputs."""

    Config = MLBenchConfig

    def on_start(self, ctx: Context) -> None:
        super().on_start(ctx)
        self.bars_seen = self.bars_scored = 0
        self.p_sum = 0.0
        if self.config.warm_symbols:
            from liu.ml.inference import scorer_of

            scorer = scorer_of(self.runner)
            if scorer is None:
                raise RuntimeError(
                    "LiveBenchML: no model attached (add models = [...] to its tradeplan entry)"
                )
            # Live, the features would be warmed from history before the open. With no routes the
            # hook only updates the feature streams: nothing is scored or counted.
            routes, scorer.routes = scorer.routes, {}
            try:
                for sym, ts, p in self.warm_history(self.config.ml_warm_bars):
                    scorer(Bar(sym, ts, p, p + 1, p - 1, p, 1000.0))
            finally:
                scorer.routes = routes

    def on_bar(self, bar: Bar, ctx: Context) -> OrderList:
        self.bars_seen += 1
        p = ctx.prediction(self.config.model, bar.symbol)
        if p is not None:
            self.bars_scored += 1
            self.p_sum += float(p[-1])  # P(up): what a threshold strategy would compare
        return None
