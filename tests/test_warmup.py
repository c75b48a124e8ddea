"""Warm-up and back-fill in the runner: history bars feed bar history, indicators and model features
exactly as if they had streamed; no strategy sees them and no model scores them.

Streaming after warm-up must equal the batch TA-Lib functions over history + live bars, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import talib

from liu.brokers.account import Account
from liu.brokers.paper import PaperBroker
from liu.events import TRADE, Bar
from liu.features import indicator_calls, lookback
from liu.ml.pipeline import FeaturePipeline
from liu.ml.spec import parse_spec
from liu.runner import StrategyRunner
from liu.strategy import Strategy
from liu.testing import make_bars

MINUTE = 60 * 10**9
INDICATORS = [
    ("SMA", {"timeperiod": 10}, lambda c: talib.SMA(c["close"], timeperiod=10)),
    ("RSI", {"timeperiod": 14}, lambda c: talib.RSI(c["close"], timeperiod=14)),
    ("EMA", {"timeperiod": 30}, lambda c: talib.EMA(c["close"], timeperiod=30)),
    ("MACD", {}, lambda c: talib.MACD(c["close"])),
    ("ATR", {"timeperiod": 14}, lambda c: talib.ATR(c["high"], c["low"], c["close"], timeperiod=14)),
    ("BBANDS", {"timeperiod": 20}, lambda c: talib.BBANDS(c["close"], timeperiod=20)),
]


class Seen(Strategy):
    """Records every bar it is given and, on each, every indicator's value."""

    def __init__(self, name, config):
        super().__init__(name, config)
        self.bars: list[Bar] = []
        self.values: list[dict] = []

    def on_bar(self, bar, ctx):
        self.bars.append(bar)
        self.values.append({name: ctx.ta(bar.symbol, name, **params) for name, params, _ in INDICATORS})


def _rows(wire: list[tuple]) -> list[tuple]:
    return [ev[2:8] for ev in wire]


def _columns(rows: list[tuple]) -> dict[str, np.ndarray]:
    a = np.array(rows, dtype=np.float64)
    return {"open": a[:, 1], "high": a[:, 2], "low": a[:, 3], "close": a[:, 4], "volume": a[:, 5]}


def _same(stream, batch) -> None:
    """A streaming value against the batch function's last output, exactly (NaN-aware)."""
    if isinstance(batch, tuple):
        assert isinstance(stream, tuple) and len(stream) == len(batch)
        for s, b in zip(stream, batch, strict=True):
            _same(s, b)
        return
    last = float(batch[-1])
    assert stream is not None
    if np.isnan(last):
        assert np.isnan(stream)
    else:
        assert float(stream) == last  # bit-identical, not approximately


def _runner(strategy: Strategy) -> StrategyRunner:
    runner = StrategyRunner(PaperBroker(Account(100_000.0)), bars_from_trades=False)
    runner.add_strategy(strategy)
    return runner


async def test_streaming_indicators_after_warm_up_equal_batch_over_history_and_live_bars():
    wire = make_bars("AAA", 400, seed=5)
    history, live = wire[:250], wire[250:]
    seen = Seen("s", Strategy.Config())
    runner = _runner(seen)
    runner.assign(["AAA"])
    assert runner.warm("AAA", _rows(history)) == 250
    assert seen.bars == []  # history is not replayed to the strategy
    await runner.process(live)
    assert len(seen.bars) == len(live)
    # The strategy's first live bar already has every indicator (they open on the loaded history).
    assert all(v is not None for v in seen.values[0].values())
    for k in range(len(live)):
        cols = _columns(_rows(wire[: 250 + k + 1]))
        for name, _, batch in INDICATORS:
            _same(seen.values[k][name], batch(cols))


async def test_a_back_fill_after_live_bars_keeps_streaming_equal_to_batch():
    wire = make_bars("AAA", 300, seed=6)
    seen = Seen("s", Strategy.Config())
    runner = _runner(seen)
    runner.assign(["AAA"])
    runner.warm("AAA", _rows(wire[:100]))
    await runner.process(wire[100:150])  # live; indicators are open now
    # A gap: bars 150..199 were missed live and come back from history; the overlap is skipped.
    assert runner.warm("AAA", _rows(wire[140:200])) == 50
    await runner.process(wire[200:])
    assert [b.ts for b in seen.bars] == [ev[2] for ev in wire[100:150] + wire[200:]]
    hist = runner.features.bars("AAA")
    assert hist.ts.tolist() == [float(ev[2]) for ev in wire]  # no hole, no repeat
    cols = _columns(_rows(wire))
    for name, _, batch in INDICATORS:
        _same(seen.values[-1][name], batch(cols))


async def test_history_covers_the_open_minute_so_late_prints_build_no_bar_for_it():
    runner = StrategyRunner(PaperBroker(Account(100_000.0)))  # bars from trades
    seen = Seen("s", Strategy.Config())
    runner.add_strategy(seen)
    runner.assign(["AAA"])
    t0 = 1_700_000_000 * 10**9 // MINUTE * MINUTE
    await runner.process([(TRADE, "AAA", t0 + 5 * 10**9, 10.0, 1.0, 0)])  # opens minute 0's bar
    runner.warm("AAA", [(t0, 10.0, 10.5, 9.5, 10.2, 500.0), (t0 + MINUTE, 10.2, 10.4, 10.1, 10.3, 400.0)])
    # A print of minute 1 (covered by history) and of minute 2: only minute 2 opens a bar.
    await runner.process(
        [(TRADE, "AAA", t0 + MINUTE + 1, 10.3, 1.0, 0), (TRADE, "AAA", t0 + 2 * MINUTE + 1, 10.6, 2.0, 0)]
    )
    await runner.process([(TRADE, "AAA", t0 + 3 * MINUTE + 1, 10.7, 1.0, 0)])  # closes minute 2
    assert [b.ts for b in seen.bars] == [t0 + 2 * MINUTE]
    assert runner.features.bars("AAA").ts.tolist() == [float(t0), float(t0 + MINUTE), float(t0 + 2 * MINUTE)]
    assert runner.last_price["AAA"] == 10.7


def _pipeline() -> FeaturePipeline:
    return FeaturePipeline(
        parse_spec(
            {
                "name": "p",
                "features": [
                    {"name": "sma_10", "function": "SMA", "params": {"timeperiod": 10}},
                    {"name": "rsi_14", "function": "RSI"},
                    {"name": "macd_hist", "function": "MACD", "output": "macdhist"},
                    {"name": "atr_14", "function": "ATR"},
                    {"name": "ret_5", "kind": "pct_change", "of": ["close"], "n": 5},
                ],
                "label": {"horizon": 2},
                "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
                "data": {"symbols": ["X"], "source": "x.csv"},
                "validation": {"purge": 2, "embargo": 2},
            }
        )
    )


class _FeatureHook:
    """A bar hook shaped like the model scorer: a feature stream per symbol; it notes whether the bar's
    symbol was routed (the scorer scores only routed symbols) and keeps the rows of routed bars."""

    def __init__(self, runner: StrategyRunner, pipeline: FeaturePipeline) -> None:
        self.runner, self.pipeline = runner, pipeline
        self.streams: dict = {}
        self.rows: list[np.ndarray | None] = []
        self.unrouted = 0

    def __call__(self, bar: Bar) -> None:
        stream = self.streams.setdefault(bar.symbol, self.pipeline.stream())
        row = stream.update(bar.open, bar.high, bar.low, bar.close, bar.volume)
        if self.runner.routes.get(bar.symbol):
            self.rows.append(row)
        else:
            self.unrouted += 1


async def test_model_features_after_warm_up_equal_batch_and_history_is_never_scored():
    pipe = _pipeline()
    wire = make_bars("AAA", 300, seed=8)
    runner = _runner(Seen("s", Strategy.Config()))
    hook = _FeatureHook(runner, pipe)
    runner.bar_hooks.append(hook)
    runner.assign(["AAA"])
    warm = pipe.lookback + 1  # exactly enough for the first live row
    runner.warm("AAA", _rows(wire[:warm]))
    assert hook.unrouted == warm and hook.rows == []  # history fed the features, and nothing was scored
    assert runner.routes["AAA"]  # the route is back
    await runner.process(wire[warm:])
    batch = pipe.batch(_columns(_rows(wire)))
    assert hook.rows[0] is not None
    for k, row in enumerate(hook.rows):
        assert np.array_equal(row, batch[warm + k], equal_nan=True)


async def test_a_revised_bar_reopens_indicators_on_the_revised_history():
    wire = make_bars("AAA", 120, seed=9)
    seen = Seen("s", Strategy.Config())
    runner = _runner(seen)
    runner.assign(["AAA"])
    runner.warm("AAA", _rows(wire[:100]))
    await runner.process(wire[100:110])
    f = runner.features
    ts, o, h, lo, c, v = wire[105][2:8]
    assert f.revise_bar("AAA", ts, o, h * 1.01, lo, c * 1.01, v + 300)  # Alpaca's updated bar `u`
    assert not f.revise_bar("AAA", ts + 30 * 10**9, o, h, lo, c, v)  # no bar starts there: no change
    await runner.process(wire[110:])
    rows = _rows(wire)
    rows[105] = (ts, o, h * 1.01, lo, c * 1.01, v + 300)
    cols = _columns(rows)
    for name, _, batch in INDICATORS:
        _same(seen.values[-1][name], batch(cols))


def test_indicator_calls_are_found_in_a_strategy_source_and_sized():
    src = """
def on_bar(self, bar, ctx):
    a = ctx.ta(bar.symbol, "RSI", timeperiod=14)
    b = ctx.ta(bar.symbol, 'macd')
    c = ctx.indicator(bar.symbol, "SMA", timeperiod=50)
    d = ctx.ta(bar.symbol, name)                       # not sizable: skipped
    e = ctx.ta(bar.symbol, "SMA", timeperiod=self.n)   # not sizable: skipped
"""
    calls = indicator_calls(src)
    assert calls == [("RSI", {"timeperiod": 14}), ("MACD", {}), ("SMA", {"timeperiod": 50})]
    assert [lookback(n, p) for n, p in calls] == [14, 33, 49]
    assert lookback("NOPE", {}) is None


@pytest.mark.parametrize("n", [1, 2])
async def test_warm_returns_zero_for_bars_it_already_has(n):
    wire = make_bars("AAA", 10, seed=1)
    runner = _runner(Seen("s", Strategy.Config()))
    runner.warm("AAA", _rows(wire))
    assert runner.warm("AAA", _rows(wire[-n:])) == 0
    assert runner.features.bars("AAA").n == 10
