"""The bad-tick filter: the band, the re-anchoring, sale conditions, bar repair, and its place in the
runner (before bars, fills and strategies), on made-up prints and on the recorded ticks."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgpack
import numpy as np
import pandas as pd
import pytest

from liu.backtest import run_backtest
from liu.brokers.account import Account
from liu.brokers.paper import PaperBroker
from liu.events import BAR, TRADE, TRADE_NO_LAST
from liu.plan import parse_plan
from liu.plugins import load_class
from liu.runner import StrategyRunner
from liu.sources import protocol as P
from liu.strategy import Strategy, StrategyConfig
from liu.testing import sample_data
from liu.ticks import TickFilter, erroneous_band, merge_reports, no_last

MIN = 60 * 10**9
T0 = 1_700_000_000 * 10**9


def _feed(f: TickFilter, sym: str, prices: list[float]) -> list[bool]:
    return [f.check(sym, p) for p in prices]


def test_sale_conditions_that_do_not_update_the_last_price():
    assert not no_last(["@"]) and not no_last(["@", "F"]) and not no_last(["@", "T"])  # regular, ISO, Form T
    assert not no_last([]) and not no_last(None)  # crypto trades carry none
    for code in ("I", "W", "Z", "P", "C", "N", "R", "H", "M", "Q", "4", "7", "9", "U", "V", "G"):
        assert no_last(["@", code]), code
    assert no_last(["B"], "A") and no_last(["B"], "B")  # average price on the CTS tapes
    assert not no_last(["B"], "C")  # bunched trade on the UTP tape: a regular print


def test_a_print_far_outside_the_band_is_dropped_and_counted_per_symbol():
    f = TickFilter()
    assert _feed(f, "AAPL", [92.2, 92.3, 645.57, 92.25, 0.0, -1.0, float("nan"), 92.4]) == [
        True, True, False, True, False, False, False, True,
    ]  # fmt: skip
    assert _feed(f, "IBM", [180.0, 180.1]) == [True, True]
    assert f.report() == {"AAPL": {"band": 4, "conditions": 0, "bars": 0, "moved": 0}}


def test_the_band_follows_the_clearly_erroneous_tiers_unless_set():
    assert [erroneous_band(p) for p in (5.0, 25.0, 25.01, 50.0, 50.01, 900.0)] == [
        0.1,
        0.1,
        0.05,
        0.05,
        0.03,
        0.03,
    ]
    tiers = TickFilter()
    assert _feed(tiers, "CHEAP", [10.0, 10.9, 8.95]) == [True, True, False]  # 9 % in, 10.5 % out
    assert _feed(tiers, "DEAR", [100.0, 102.9, 96.9]) == [True, True, False]  # 2.9 % in, 3.1 % out
    wide = TickFilter(band_pct=20)
    assert _feed(wide, "DEAR", [100.0, 85.0, 79.0]) == [True, True, False]


def test_a_real_move_is_followed_after_confirm_agreeing_prints():
    f = TickFilter(confirm=3)
    # A halt reopens 20 % higher: two prints dropped, the third agrees and becomes the reference.
    assert _feed(f, "X", [50.0, 50.1, 60.0, 60.2, 60.1, 60.3, 50.0]) == [
        True, True, False, False, True, True, False,
    ]  # fmt: skip
    assert f.report()["X"] == {"band": 3, "conditions": 0, "bars": 0, "moved": 1}
    # Outliers that disagree with each other never move it.
    g = TickFilter(confirm=3)
    assert _feed(g, "Y", [50.0, 80.0, 20.0, 80.0, 20.0, 50.2]) == [True, False, False, False, False, True]
    assert g.report()["Y"]["moved"] == 0


def test_a_bad_first_print_is_replaced_by_the_market_after_confirm_prints():
    f = TickFilter(confirm=3)
    assert _feed(f, "Z", [500.0, 50.0, 50.1, 50.2, 50.1, 500.0]) == [True, False, False, True, True, False]


def test_the_reference_is_the_median_of_the_last_block_so_a_slow_trend_is_followed():
    f = TickFilter(window=5)
    prices = [100.0 * 1.001**i for i in range(2000)]  # +640 % in small steps
    assert all(_feed(f, "T", prices))
    assert f.report() == {}


def test_trades_whose_conditions_do_not_update_last_are_dropped_unless_conditions_is_off():
    f = TickFilter()
    assert f.check("S", 100.0) and not f.check("S", 100.0, TRADE_NO_LAST)
    assert f.report()["S"]["conditions"] == 1
    off = TickFilter(conditions=False)
    assert off.check("S", 100.0) and off.check("S", 100.0, TRADE_NO_LAST)
    assert not off.check("S", 1000.0, TRADE_NO_LAST)  # still a print: the band applies


def test_a_bars_bad_open_is_cut_back_to_its_close():
    f = TickFilter()
    first = (BAR, "AAPL", T0, 92.1, 92.3, 92.0, 92.2, 1000.0, 0)
    assert f.check_bar(first) is first
    bad = (BAR, "AAPL", T0 + MIN, 645.57, 645.57, 92.23, 92.42, 4200.0, 0)
    assert f.check_bar(bad) == (BAR, "AAPL", T0 + MIN, 92.42, 92.42, 92.23, 92.42, 4200.0, 0)
    fine = (BAR, "AAPL", T0 + 2 * MIN, 92.4, 94.0, 92.1, 93.5, 1000.0, 0)  # a fast but real minute
    assert f.check_bar(fine) is fine
    gap = (BAR, "AAPL", T0 + 3 * MIN, 120.0, 121.0, 119.0, 120.5, 1000.0, 0)  # a gap: the close moved too
    assert f.check_bar(gap) is gap
    assert f.report()["AAPL"] == {"band": 0, "conditions": 0, "bars": 1, "moved": 0}


def test_bars_are_cut_at_their_price_tier_and_at_a_set_band():
    """Cheap stocks get the wide tiers (10 % up to $25, 5 % up to $50), others 3 %; a set band is used as is."""
    for price, tier in ((20.0, 0.10), (40.0, 0.05), (100.0, 0.03)):
        for band_pct, width in ((None, tier), (1.0, 0.01)):
            f = TickFilter(band_pct=band_pct)
            f.check_bar((BAR, "A", T0, price, price, price, price, 1.0, 0))
            inside = (BAR, "A", T0 + MIN, price, price, price * (1 - 0.98 * width), price, 1.0, 0)
            assert f.check_bar(inside) is inside, (price, band_pct)
            low = price * (1 - 1.02 * width)
            cut = f.check_bar((BAR, "A", T0 + 2 * MIN, price, price, low, price, 1.0, 0))
            assert cut[5] == price, (price, band_pct)  # the low cut back to the bar's own open and close
            assert f.report()["A"]["bars"] == 1


def test_a_split_moves_the_references_with_the_prices():
    f = TickFilter()
    assert _feed(f, "A", [700.0, 701.0])
    f.check_bar((BAR, "A", T0, 700.0, 701.0, 699.0, 700.0, 1.0, 0))
    f.adjust("A", 1 / 7)
    assert _feed(f, "A", [100.1, 700.0]) == [True, False]
    bar = (BAR, "A", T0 + MIN, 100.0, 100.5, 99.5, 100.2, 7.0, 0)
    assert f.check_bar(bar) is bar


def test_merged_reports_add_up_per_symbol():
    a = {"X": {"band": 1, "conditions": 2, "bars": 0, "moved": 0}}
    b = {
        "X": {"band": 1, "conditions": 0, "bars": 3, "moved": 1},
        "A": {"band": 5, "conditions": 0, "bars": 0, "moved": 0},
    }
    assert merge_reports([a, b]) == {
        "A": {"band": 5, "conditions": 0, "bars": 0, "moved": 0},
        "X": {"band": 2, "conditions": 2, "bars": 3, "moved": 1},
    }


def test_the_decoder_marks_prints_that_do_not_update_last():
    msgs = [
        P.trade_msg("A", T0, 10.0, 100, conditions=["@", "F"]),
        P.trade_msg("A", T0, 10.5, 100, conditions=["@", "I"]),
        P.trade_msg("A", T0, 10.5, 100, conditions=["B"], tape="A"),
        P.trade_msg("A", T0, 10.5, 100, conditions=["B"], tape="C"),
        {k: v for k, v in P.trade_msg("A", T0, 10.0, 1).items() if k != "c"},  # crypto: no conditions
    ]
    kinds = [P.wire_event(m, 0)[0] for m in msgpack.unpackb(P.encode(msgs), timestamp=2)]
    assert kinds == [TRADE, TRADE_NO_LAST, TRADE_NO_LAST, TRADE, TRADE]


# -- in the runner ------------------------------------------------------------------------------


class Recorder(Strategy):
    def __init__(self, name="rec", config=None):
        super().__init__(name, config or StrategyConfig())
        self.trades, self.bars, self.fills = [], [], []

    def on_trade(self, trade, ctx):
        self.trades.append(trade.price)
        if len(self.trades) == 1:
            return [ctx.buy(trade.symbol, 10, limit=99.0)]  # rests below the market
        return None

    def on_bar(self, bar, ctx):
        self.bars.append(bar)

    def on_fill(self, fill, ctx):
        self.fills.append(fill)


async def test_the_runner_drops_bad_prints_before_bars_fills_and_strategies():
    rec = Recorder()
    r = StrategyRunner(PaperBroker(Account(100_000.0)), ticks=TickFilter())
    r.add_strategy(rec)
    r.assign(["A"])
    batch = [
        (TRADE, "A", T0, 100.0, 100.0, 0),
        (TRADE, "A", T0 + 1, 100.1, 100.0, 0),
        (TRADE, "A", T0 + 2, 1.0, 100.0, 0),  # a fat-finger print: would fill the 99 limit and make the low
        (TRADE_NO_LAST, "A", T0 + 3, 98.0, 100.0, 0),  # an average-price print below the limit
        (TRADE, "A", T0 + 4, 100.2, 100.0, 0),
        (TRADE, "A", T0 + MIN, 100.3, 100.0, 0),  # closes the first minute's bar
    ]
    await r.process(batch)
    assert rec.trades == [100.0, 100.1, 100.2, 100.3]
    assert rec.fills == []
    (bar,) = rec.bars
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (100.0, 100.2, 100.0, 100.2, 300.0)
    assert r.last_price["A"] == 100.3
    assert r.ticks.report() == {"A": {"band": 1, "conditions": 1, "bars": 0, "moved": 0}}
    c = r.counts
    assert c["received"] == c["processed"] == 6  # dropped prints were handled, not lost

    # Off: every print goes through (the bad one fills the limit order).
    rec2 = Recorder()
    off = StrategyRunner(PaperBroker(Account(100_000.0)))
    off.add_strategy(rec2)
    off.assign(["A"])
    await off.process(batch)
    assert len(rec2.trades) == 6 and len(rec2.fills) == 1


REPO = Path(__file__).resolve().parent.parent
PRINTS = """
from liu.strategy import Strategy


class Prints(Strategy):
    seen = []

    def on_trade(self, trade, ctx):
        Prints.seen.append(trade.price)
"""


def _ticks_plan(tmp_path: Path, bad_ticks: str) -> object:
    (tmp_path / "prints.py").write_text(PRINTS)
    text = f"""
[source]
kind = "replay"
path = "{sample_data("us_equity_trade_ticks_lean_2013-10.csv.gz")}"
symbols = ["BAC"]
start = "2013-10-08"
end = "2013-10-08"
bad_ticks = {bad_ticks}
[[strategies]]
name = "prints"
file = "{tmp_path / "prints.py"}"
class = "Prints"
"""
    return parse_plan(tomllib.loads(text), "tradeplan.toml", tmp_path)


@pytest.mark.data
def test_recorded_average_price_and_out_of_sequence_prints_are_dropped(tmp_path):
    """BAC on 2013-10-08: the prints Lean flags as average-price, out-of-sequence, derivatively priced...
    are exactly those dropped; the band drops none of this liquid day's prints."""
    df = pd.read_csv(sample_data("us_equity_trade_ticks_lean_2013-10.csv.gz"), dtype={"condition": str})
    ts = pd.to_datetime(df.timestamp, utc=True, format="ISO8601").dt.tz_convert("America/New_York")
    day = df[(df.symbol == "BAC") & (ts.dt.date.astype(str) == "2013-10-08") & ~df.suspicious.astype(bool)]
    flags = day.condition.map(lambda v: int(v, 16)).to_numpy()
    # Lean bits of cash, next day, seller, derivatively priced, out of sequence, stock-option, average
    # price, price variation, official close, prior reference price, official open, odd lot.
    mask = sum(1 << b for b in (1, 2, 3, 9, 14, 18, 20, 22, 24, 25, 26, 31))
    excluded = (flags & mask) != 0
    assert excluded.sum() > 100

    result = run_backtest(_ticks_plan(tmp_path, "true"))
    seen = load_class(tmp_path / "prints.py", "Prints", Strategy).seen  # type: ignore[attr-defined]
    assert result.bad_ticks == {"BAC": {"band": 0, "conditions": int(excluded.sum()), "bars": 0, "moved": 0}}
    assert seen == day.price.to_numpy()[~excluded].tolist()  # every other print, in order
    assert result.counts["processed"] == len(day)

    seen.clear()
    off = run_backtest(_ticks_plan(tmp_path, "false"))
    assert off.bad_ticks == {} and len(seen) == len(day)
    prices = day.price.to_numpy()
    regular = prices[~excluded]
    # The dropped prints reach outside the regular prints' range: a stop or limit there would have filled.
    assert prices.max() > regular.max() or prices.min() < regular.min()
    assert np.isin(prices[excluded], regular).mean() < 1.0
