import numpy as np
import pandas as pd
import pytest

from liu.brokers.account import Account
from liu.brokers.paper import PaperBroker
from liu.events import MALFORMED, TRADE
from liu.runner import StrategyRunner
from liu.strategy import Strategy, StrategyConfig
from liu.testing import make_bars, sample_data

MIN = 60 * 10**9


class Recorder(Strategy):
    def __init__(self, name="rec", config=None):
        super().__init__(name, config or StrategyConfig())
        self.bars = []
        self.fills = []

    def on_bar(self, bar, ctx):
        self.bars.append(bar)

    def on_fill(self, fill, ctx):
        self.fills.append(fill)


class Buyer(Recorder):
    def on_bar(self, bar, ctx):
        super().on_bar(bar, ctx)
        if len(self.bars) == 2:
            return [ctx.buy(bar.symbol, 1)]
        return None


class Exploder(Strategy):
    def on_bar(self, bar, ctx):
        raise RuntimeError("boom")


def _runner(*strategies, **kw):
    r = StrategyRunner(PaperBroker(Account(100_000.0)), **kw)
    for s in strategies:
        r.add_strategy(s)
    r.assign(["A", "B"])
    return r


async def test_stale_events_are_dropped_and_counted_fresh_ones_processed():
    rec = Recorder()
    r = _runner(rec, stale_after_ns=5 * 10**9)
    now = 1_000 * 10**9
    batch = [
        (TRADE, "A", now - 10 * 10**9, 1.0, 1.0, 0),
        (TRADE, "A", now - 1 * 10**9, 2.0, 1.0, 0),
        (TRADE, "B", now - 6 * 10**9, 3.0, 1.0, 0),
        (TRADE, "B", now, 4.0, 1.0, 0),
    ]
    await r.process(batch, now_ns=now)
    c = r.counts
    assert (c["received"], c["processed"], c["stale"]) == (4, 2, 2)
    assert r.last_price == {"A": 2.0, "B": 4.0}


async def test_strategy_that_raises_is_counted_and_others_go_on(caplog):
    rec = Recorder()
    r = _runner(Exploder("bad", StrategyConfig()), rec)
    await r.process(make_bars("A", 5))
    assert len(rec.bars) == 5
    assert r.counts["strategy_errors"] == 5
    assert "strategy bad raised in on_bar for symbol A" in caplog.text
    assert "RuntimeError: boom" in caplog.text


async def test_malformed_events_are_counted_not_processed():
    r = _runner(Recorder())
    await r.process([(MALFORMED, "A", 0, "ValueError: p", 0), (TRADE, "A", MIN, 1.0, 1.0, 0)])
    assert (r.counts["received"], r.counts["processed"], r.counts["malformed"]) == (2, 1, 1)


async def test_orders_fill_on_the_next_bar_open_and_reach_the_strategy():
    buyer = Buyer()
    r = _runner(buyer, bars_from_trades=False)
    bars = make_bars("A", 4)
    await r.process(bars)
    (fill,) = buyer.fills
    assert fill.price == bars[2][3]  # the open of the bar after the signal bar
    assert fill.ts == bars[2][2]
    assert r.broker.position("rec", "A").qty == 1


async def test_rejected_symbol_stops_reaching_the_strategy():
    class Picky(Recorder):
        def on_bar(self, bar, ctx):
            super().on_bar(bar, ctx)
            ctx.reject(bar.symbol)

    p = Picky()
    r = _runner(p, bars_from_trades=False)
    await r.process(make_bars("A", 3))
    assert len(p.bars) == 1


async def test_async_hooks_are_awaited():
    class AsyncBuyer(Recorder):
        async def on_bar(self, bar, ctx):
            self.bars.append(bar)
            return [ctx.buy(bar.symbol, 1)] if len(self.bars) == 1 else None

    s = AsyncBuyer()
    r = _runner(s, bars_from_trades=False)
    await r.process(make_bars("A", 3))
    assert len(s.fills) == 1


@pytest.mark.data
async def test_minute_bars_from_recorded_ticks_match_pandas_resample():
    path = sample_data("us_equity_trade_ticks_lean_2013-10.csv.gz")
    df = pd.read_csv(path, dtype={"condition": str})
    df = df[(df.symbol == "IBM") & (~df.suspicious.astype(bool))]
    ts = pd.to_datetime(df.timestamp, utc=True, format="ISO8601").dt.as_unit("ns")
    ns = ts.astype("int64").to_numpy()
    rec = Recorder()
    r = _runner(rec)
    r.assign(["IBM"])
    batch = [
        (TRADE, "IBM", int(t), float(p), float(s), 0)
        for t, p, s in zip(ns, df.price, df["size"], strict=True)
    ]
    await r.process(batch)
    expected = (
        pd.DataFrame(
            {"price": df.price.to_numpy(), "size": df["size"].to_numpy().astype(float)}, index=ts.to_numpy()
        )
        .resample("1min")
        .agg({"price": ["first", "max", "min", "last"], "size": "sum"})
        .dropna()
    )
    expected = expected.iloc[:-1]  # the last minute is still open in the runner
    got = np.array([[b.open, b.high, b.low, b.close, b.volume] for b in rec.bars])
    assert len(rec.bars) == len(expected) > 1000
    assert [b.ts for b in rec.bars] == list(expected.index.as_unit("ns").astype("int64"))
    np.testing.assert_array_equal(got, expected.to_numpy())


async def test_every_fill_reaches_the_log_and_the_strategy():
    class EveryBar(Recorder):
        def on_bar(self, bar, ctx):
            super().on_bar(bar, ctx)
            return [ctx.buy(bar.symbol, 1)]

    s = EveryBar()
    r = _runner(s, bars_from_trades=False)
    await r.process(make_bars("A", 10))
    assert len(s.fills) == len(r.fill_log) == r.counts["fills"] == 9
    assert r.broker.position("rec", "A").qty == 9


async def test_a_late_print_after_a_flushed_bar_does_not_open_a_second_bar_for_that_minute():
    rec = Recorder()
    r = _runner(rec)
    t0 = 1_700_000_040 * 10**9 // MIN * MIN
    await r.process([(TRADE, "A", t0 + 1, 10.0, 5.0, 0), (TRADE, "A", t0 + 2, 11.0, 5.0, 0)])
    await r.flush_bars(t0 + MIN + 3 * 10**9)  # a quiet symbol's bar closed by the clock
    await r.process([(TRADE, "A", t0 + 3, 12.0, 5.0, 0)])  # a print of that minute, arriving late
    await r.process([(TRADE, "A", t0 + MIN + 1, 13.0, 5.0, 0), (TRADE, "A", t0 + 2 * MIN, 14.0, 5.0, 0)])
    assert [(b.ts, b.open, b.close, b.volume) for b in rec.bars] == [
        (t0, 10.0, 11.0, 10.0),
        (t0 + MIN, 13.0, 13.0, 5.0),
    ]
    assert r.last_price["A"] == 14.0
