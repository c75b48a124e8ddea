"""Metrics against values computed by hand (see the conventions in liu.analysis.metrics)."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from liu.analysis.metrics import (
    breakdown,
    compute_metrics,
    daily_equity,
    daily_returns,
    drawdown,
    equity_metrics,
    exposure,
    trade_metrics,
)
from liu.analysis.trades import OpenPosition, RoundTrip

NY = ZoneInfo("America/New_York")
H = 3600 * 10**9
DAY_S = 86_400


def ny_ns(y, mo, d, h, mi=0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=NY).timestamp()) * 10**9


# Mon 8 Jan 2024 .. Fri 12 Jan, then Mon 15 Jan (a weekend in between); closes at 16:00 New York,
# plus one intraday sample on Tue at 10:00 that is below everything (drawdown sees it, returns do not).
TS = np.array(
    [
        ny_ns(2024, 1, 8, 16),
        ny_ns(2024, 1, 9, 10),
        ny_ns(2024, 1, 9, 16),
        ny_ns(2024, 1, 10, 16),
        ny_ns(2024, 1, 11, 16),
        ny_ns(2024, 1, 12, 16),
        ny_ns(2024, 1, 15, 16),
    ],
    dtype=np.int64,
)
EQ = np.array([101.0, 98.0, 99.0, 102.0, 101.5, 101.8, 101.9])
START = 100.0


def test_daily_returns_use_end_of_day_equity_from_start() -> None:
    r = daily_returns(TS, EQ, START)
    expected = [
        101 / 100 - 1,
        99 / 101 - 1,
        102 / 99 - 1,
        101.5 / 102 - 1,
        101.8 / 101.5 - 1,
        101.9 / 101.8 - 1,
    ]
    assert r == pytest.approx(expected)


def test_days_are_new_york_dates() -> None:
    # 23:30 New York on 1 July is 03:30 UTC on 2 July: still 1 July's close.
    ts = np.array([ny_ns(2024, 7, 1, 15), ny_ns(2024, 7, 1, 23, 30), ny_ns(2024, 7, 2, 10)], dtype=np.int64)
    day_ts, day_eq = daily_equity(ts, np.array([1.0, 2.0, 3.0]))
    assert list(day_eq) == [2.0, 3.0]
    assert list(day_ts) == [ts[1], ts[2]]


def test_equity_metrics_by_hand() -> None:
    m = equity_metrics(TS, EQ, START)
    r = [101 / 100 - 1, 99 / 101 - 1, 102 / 99 - 1, 101.5 / 102 - 1, 101.8 / 101.5 - 1, 101.9 / 101.8 - 1]
    n = 6
    mean = sum(r) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in r) / (n - 1))  # sample std, ddof = 1
    downside = math.sqrt((r[1] ** 2 + r[3] ** 2) / n)  # the two negative days, over all 6 periods
    assert m["trading_days"] == 6
    assert m["total_return"] == pytest.approx(0.019)
    assert m["volatility"] == pytest.approx(sd * math.sqrt(252))
    assert m["sharpe"] == pytest.approx(mean / sd * math.sqrt(252))
    assert m["sortino"] == pytest.approx(mean / downside * math.sqrt(252))
    # Drawdown on every sample: the Tuesday 10:00 dip to 98 under the 101 peak.
    assert m["max_drawdown"] == pytest.approx(98 / 101 - 1)
    # Peak Mon 16:00 → first sample back at/above 101 is Wed 16:00: 2 days.
    assert m["max_drawdown_duration_s"] == pytest.approx(2 * DAY_S)
    # Longest: peak Wed 16:00 (102), never recovered, until Mon 15 Jan 16:00: 5 days.
    assert m["longest_drawdown_s"] == pytest.approx(5 * DAY_S)
    years = 7 / 365.25  # Mon 8 Jan 16:00 → Mon 15 Jan 16:00
    cagr = 1.019 ** (1 / years) - 1
    assert m["cagr"] == pytest.approx(cagr)
    assert m["calmar"] == pytest.approx(cagr / (1 - 98 / 101))
    assert (m["start_equity"], m["end_equity"]) == (100.0, 101.9)


def test_drawdown_counts_start_as_first_peak() -> None:
    dd = drawdown(np.array([99.0, 100.5, 100.0]), start_equity=100.0)
    assert dd == pytest.approx([-0.01, 0.0, 100 / 100.5 - 1])


def test_undefined_ratios_are_nan() -> None:
    ts = np.array([ny_ns(2024, 1, 8, 16), ny_ns(2024, 1, 9, 16), ny_ns(2024, 1, 10, 16)], dtype=np.int64)
    m = equity_metrics(ts, np.array([100.0, 100.0, 100.0]), 100.0)
    assert math.isnan(m["sharpe"]) and math.isnan(m["sortino"]) and math.isnan(m["calmar"])
    assert m["max_drawdown"] == 0.0 and m["max_drawdown_duration_s"] == 0.0
    assert m["volatility"] == 0.0
    one = equity_metrics(ts[:1], np.array([101.0]), 100.0)
    assert one["total_return"] == pytest.approx(0.01)
    assert math.isnan(one["sharpe"]) and math.isnan(one["cagr"])


def trip(gain, hours, r=None, symbol="AAA", strategy="s", fees=0.0, entry_h=0):
    entry = entry_h * H
    return RoundTrip(
        strategy, symbol, "long", 1.0, entry, entry + hours * H, 10.0, 10.0, gain, gain * 10, r, fees
    )


def test_trade_metrics_by_hand() -> None:
    trips = [trip(10, 1, r=1.0), trip(-5, 2, r=-0.5), trip(20, 3), trip(-5, 4, r=2.0), trip(0, 5)]
    m = trade_metrics(trips)
    assert (m["round_trips"], m["wins"], m["losses"]) == (5, 2, 2)
    assert m["win_rate"] == pytest.approx(2 / 5)
    assert m["profit_factor"] == pytest.approx((10 + 20) / (5 + 5))
    assert m["expectancy"] == pytest.approx((10 - 5 + 20 - 5 + 0) / 5)
    assert m["avg_win"] == pytest.approx(15) and m["avg_loss"] == pytest.approx(-5)
    assert m["pnl"] == pytest.approx(20)
    assert m["avg_holding_s"] == pytest.approx(3 * 3600)
    assert m["r_trips"] == 3
    assert m["mean_r"] == pytest.approx((1.0 - 0.5 + 2.0) / 3)
    only_wins = trade_metrics([trip(1, 1), trip(2, 1)])
    assert only_wins["profit_factor"] == math.inf
    assert math.isnan(only_wins["mean_r"])
    none = trade_metrics([])
    assert none["round_trips"] == 0 and math.isnan(none["win_rate"])


def test_exposure_is_the_union_of_holding_intervals() -> None:
    starts = np.array([10, 15, 50, 90])
    ends = np.array([20, 30, 60, 100])
    # [10, 30] + [50, 60] + [90, 100] = 40 of 100
    assert exposure(starts, ends, 0, 100) == pytest.approx(0.4)
    assert exposure(np.array([-5, 95]), np.array([5, 200]), 0, 100) == pytest.approx(0.1)
    assert exposure(np.array([]), np.array([]), 0, 100) == 0.0


def test_compute_metrics_exposure_includes_open_positions_and_fees() -> None:
    ts = np.array([0, 10 * H], dtype=np.int64)
    trips = [trip(5, 2, fees=1.0, entry_h=1), trip(-1, 1, fees=0.5, entry_h=2)]  # [1h, 3h] ∪ [2h, 3h]
    still = [OpenPosition("s", "BBB", "long", 1.0, 8 * H, 10.0, 0.25)]  # [8h, 10h]
    m = compute_metrics(ts, np.array([100.0, 104.0]), trips, start_equity=100.0, open_positions=still)
    assert m["exposure"] == pytest.approx((2 + 2) / 10)
    assert m["fees"] == pytest.approx(1.75)
    assert m["round_trips"] == 2


def test_breakdown_per_symbol_and_strategy() -> None:
    trips = [
        trip(10, 1, symbol="AAA", strategy="x", fees=1.0),
        trip(-4, 1, symbol="AAA", strategy="y", fees=1.0),
        trip(-3, 1, symbol="BBB", strategy="x", fees=2.0),
    ]
    rows = {row["symbol"]: row for row in breakdown(trips, "symbol", {"AAA": 3.0, "BBB": 2.0, "CCC": 0.5})}
    assert rows["AAA"]["pnl"] == pytest.approx(6) and rows["AAA"]["win_rate"] == pytest.approx(0.5)
    assert rows["AAA"]["fees"] == 3.0
    assert rows["CCC"]["round_trips"] == 0 and rows["CCC"]["fees"] == 0.5
    by_strategy = breakdown(trips, "strategy")
    assert [r["strategy"] for r in by_strategy] == ["x", "y"]  # best P&L first: x = 7, y = -4
    assert by_strategy[0]["pnl"] == pytest.approx(7) and by_strategy[0]["fees"] == pytest.approx(3.0)
    assert by_strategy[0]["profit_factor"] == pytest.approx(10 / 3)
    with pytest.raises(ValueError):
        breakdown(trips, "side")
