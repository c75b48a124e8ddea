"""The replay's split and dividend adjustment, the corporate actions a raw replay leaves, and Lean's
trade conditions as Alpaca's codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from liu.clock import Clock, ClockSpec
from liu.corporate import ActionSchedule, CorporateAction
from liu.errors import ConfigError
from liu.plan import parse_plan
from liu.sources.replay import ReplayFeed, alpaca_conditions, file_actions
from liu.testing import sample_data

NY = "America/New_York"
LEAN_COLS = (
    "symbol,timestamp,open,high,low,close,volume,bid_open,bid_high,bid_low,bid_close,bid_size,"
    "ask_open,ask_high,ask_low,ask_close,ask_size,split_factor,price_factor\n"
)


def _ns(text: str) -> int:
    return int(pd.Timestamp(text).tz_convert("UTC").value)


def _lean(tmp_path: Path, rows: list[tuple]) -> Path:
    """A Lean-format minute file: rows of (symbol, time, close, volume, bid, ask, split_factor, price_factor)."""
    lines = [
        f"{s},{t},{c},{c},{c},{c},{v},{b},{b},{b},{b},100,{a},{a},{a},{a},200,{sf},{pf}\n"
        for s, t, c, v, b, a, sf, pf in rows
    ]
    path = tmp_path / "lean.csv"
    path.write_text(LEAN_COLS + "".join(lines))
    return path


async def _messages(feed: ReplayFeed) -> list[dict]:
    out: list[dict] = []
    async for frame in feed.frames(Clock(ClockSpec(0, 0, None))):
        out.extend(frame)
    return out


# A 7-for-1 split between two days, with Lean's factors rounded to 7 digits as in the recorded file
# (0.0357143 = 1/28 before, 0.25 after: a later 4-for-1 split is in both).
SPLIT = [
    ("XYZ", "2014-06-06 15:58:00-04:00", 700.0, 100, 699.0, 701.0, 0.0357143, 0.9),
    ("XYZ", "2014-06-06 15:59:00-04:00", 707.0, 200, 706.0, 708.0, 0.0357143, 0.9),
    ("XYZ", "2014-06-09 09:30:00-04:00", 101.5, 1400, 101.0, 102.0, 0.25, 0.9),
    ("XYZ", "2014-06-09 09:31:00-04:00", 102.0, 700, 101.5, 102.5, 0.25, 0.9),
]


async def test_a_split_is_adjusted_by_default_so_the_last_prices_are_as_traded(tmp_path):
    feed = ReplayFeed(_lean(tmp_path, SPLIT), speed=None)
    msgs = await _messages(feed)
    bars = [m for m in msgs if m["T"] == "b"]
    quotes = [m for m in msgs if m["T"] == "q"]
    # Before the split: prices x 1/7 (the factors, rounded to 7 digits, are read as the 7-for-1 they
    # are), volumes and sizes x 7; after it: as recorded.
    seventh = 1 / 7
    assert [b["c"] for b in bars] == [700 * seventh, 707 * seventh, 101.5, 102.0]
    assert [b["v"] for b in bars] == [700.0, 1400.0, 1400.0, 700.0]
    assert (quotes[0]["bp"], quotes[0]["ap"], quotes[0]["bs"], quotes[0]["as"]) == (
        699 * seventh,
        701 * seventh,
        700.0,
        1400.0,
    )
    assert quotes[-1]["bp"] == 101.5
    assert feed.universe()["XYZ"]["price"] == pytest.approx(100.0)
    assert feed.actions() == []  # nothing left for the runner


async def test_the_basis_is_the_files_last_row_whatever_part_is_replayed(tmp_path):
    # Replaying only the day before the split gives the prices the whole file's replay gives that day:
    # history served from the same file, or a longer replay, agree with it.
    feed = ReplayFeed(_lean(tmp_path, SPLIT), speed=None, end="2014-06-06")
    assert [m["c"] for m in await _messages(feed) if m["T"] == "b"] == [700 * (1 / 7), 707 * (1 / 7)]


async def test_raw_replays_as_recorded_and_lists_the_split_at_its_ex_date(tmp_path):
    path = _lean(tmp_path, SPLIT)
    feed = ReplayFeed(path, speed=None, adjustment="raw")
    assert [m["c"] for m in await _messages(feed) if m["T"] == "b"] == [700.0, 707.0, 101.5, 102.0]
    split = CorporateAction("XYZ", _ns("2014-06-09 00:00:00-04:00"), split=7.0)
    assert feed.actions() == [split]
    assert file_actions(path, adjustment="raw") == [split]  # what the daemon hands its consumers
    # Dividend-adjusted only: the split is still raw, so it is still an action.
    assert ReplayFeed(path, speed=None, adjustment="dividend").actions() == [split]
    assert ReplayFeed(path, speed=None, adjustment="split").actions() == []


async def test_a_dividend_is_in_the_adjusted_prices_or_paid_as_cash_when_raw(tmp_path):
    # price_factor before = price_factor after x (1 - D / previous close): D = 50 x (1 - 0.98) = 1.0
    rows = [
        ("DIV", "2014-06-06 15:59:00-04:00", 50.0, 100, 49.9, 50.1, 1.0, 0.98 * 0.9),
        ("DIV", "2014-06-09 09:30:00-04:00", 49.0, 100, 48.9, 49.1, 1.0, 0.9),
    ]
    path = _lean(tmp_path, rows)
    closes = [m["c"] for m in await _messages(ReplayFeed(path, speed=None)) if m["T"] == "b"]
    assert closes == pytest.approx([49.0, 49.0])  # a total-return series: no drop at the ex-date
    split_only = ReplayFeed(path, speed=None, adjustment="split")
    assert [m["c"] for m in await _messages(split_only) if m["T"] == "b"] == [50.0, 49.0]
    (action,) = split_only.actions()
    assert (action.symbol, action.split) == ("DIV", 1.0)
    assert action.dividend == pytest.approx(1.0)
    assert action.ts == _ns("2014-06-09 00:00:00-04:00")


async def test_daily_files_adjust_with_adjusted_close_split_coefficient_and_dividend_amount(tmp_path):
    path = tmp_path / "daily.csv"
    path.write_text(
        "symbol,date,open,high,low,close,adjusted_close,volume,dividend_amount,split_coefficient\n"
        "ABC,2020-08-27,500,500,500,500,123.75,10,0,1\n"  # 4-for-1 on the 31st, then a 0.5 dividend
        "ABC,2020-08-28,500,500,500,500,123.75,10,0,1\n"
        "ABC,2020-08-31,125,125,125,125,123.75,40,0,4\n"
        "ABC,2020-09-01,124,124,124,124,123.50,40,0.5,1\n"
        "ABC,2020-09-02,124,124,124,124,124,40,0,1\n"
    )
    bars = [m for m in await _messages(ReplayFeed(path, speed=None)) if m["T"] == "b"]
    assert [b["c"] for b in bars] == pytest.approx([123.75, 123.75, 123.75, 123.5, 124.0])
    assert [b["v"] for b in bars] == pytest.approx([40, 40, 40, 40, 40])
    raw = ReplayFeed(path, speed=None, adjustment="raw")
    t = int(pd.Timestamp("2020-08-31", tz=NY).tz_convert("UTC").value)
    t2 = int(pd.Timestamp("2020-09-01", tz=NY).tz_convert("UTC").value)
    assert raw.actions() == [CorporateAction("ABC", t, split=4.0), CorporateAction("ABC", t2, dividend=0.5)]
    split = ReplayFeed(path, speed=None, adjustment="split")
    assert [m["c"] for m in await _messages(split) if m["T"] == "b"] == [125, 125, 125, 124, 124]
    assert split.actions() == [CorporateAction("ABC", t2, dividend=0.5)]


async def test_a_file_without_factors_is_replayed_as_recorded(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "symbol,timestamp,open,high,low,close,volume\nSPY,2011-01-03 21:00:00+00:00,1,2,0.5,1.5,10\n"
    )
    (bar,) = await _messages(ReplayFeed(path, speed=None))
    assert (bar["o"], bar["h"], bar["l"], bar["c"], bar["v"]) == (1, 2, 0.5, 1.5, 10)
    assert file_actions(path, adjustment="raw") == []


def test_an_unknown_adjustment_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="adjustment 'splits' must be one of all, split, dividend, raw"):
        ReplayFeed(_lean(tmp_path, SPLIT), adjustment="splits")
    with pytest.raises(ConfigError, match=r"\[source\] adjustment: given 'splits', expected 'all', 'split'"):
        parse_plan({"source": {"kind": "replay", "path": "x.csv", "adjustment": "splits"}})


def test_action_schedule_hands_each_action_out_once_in_time_order():
    a = CorporateAction("A", 10, split=2.0)
    b = CorporateAction("B", 20, dividend=0.1)
    sched = ActionSchedule([b, a])
    assert (len(sched), sched.next_ts) == (2, 10)
    assert sched.due(9) == []
    assert sched.due(15) == [a]
    assert sched.due(15) == []
    assert sched.due(100) == [b]
    assert sched.next_ts > 10**18


async def test_lean_trade_condition_flags_become_alpaca_condition_codes(tmp_path):
    # 1 regular; 20100200 trade-through exempt + average price + derivatively priced;
    # 4800 out of sequence + sold last; 2000 extended hours; 80000000 odd lot.
    assert alpaca_conditions(["1", "20100200", "4800", "2000", "80000000"]) == [
        ["@"],
        ["4", "B"],
        ["L", "Z"],
        ["T"],
        ["I"],
    ]
    assert alpaca_conditions(["@", "F"]) == [["@"], ["F"]]  # a file recorded from Alpaca: passed on
    path = tmp_path / "t.csv"
    path.write_text(
        "symbol,timestamp,price,size,exchange,condition,suspicious\n"
        "SPY,2013-10-07 09:30:00.000-04:00,168.0,100,P,1,False\n"
        "SPY,2013-10-07 09:30:00.100-04:00,171.4,100,D,100000,False\n"
    )
    assert [m["c"] for m in await _messages(ReplayFeed(path))] == [["@"], ["B"]]


# -- the recorded data ------------------------------------------------------------------------


@pytest.mark.data
async def test_recorded_aapl_split_and_twx_spin_off():
    path = sample_data("us_equity_minute_lean.csv.gz")

    async def closes(adjustment: str) -> tuple[float, float]:
        feed = ReplayFeed(path, symbols=["AAPL"], speed=None, adjustment=adjustment)
        bars = [m for m in await _messages(feed) if m["T"] == "b"]
        day = np.array([pd.Timestamp(b["t"].to_unix_nano(), tz="UTC").tz_convert(NY).day for b in bars])
        return bars[np.flatnonzero(day == 6)[-1]]["c"], bars[np.flatnonzero(day == 9)[0]]["c"]

    before, after = await closes("all")
    assert after / before == pytest.approx(1.0, abs=0.01)  # 92.2 then 92.4: no jump at the split
    before, after = await closes("raw")
    assert before / after == pytest.approx(7.0, rel=0.01)  # 645 then 92.4, as recorded
    actions = file_actions(path, adjustment="raw")
    by_symbol = {a.symbol: a for a in actions if a.ts < _ns("2015-01-01 00:00:00+00:00")}
    assert by_symbol["AAPL"] == CorporateAction("AAPL", _ns("2014-06-09 00:00:00-04:00"), split=7.0)
    # Time Warner's spin-off of Time Inc. (one TIME share for eight TWX, about $2.95 a TWX share),
    # which Lean's factors record as a dividend.
    assert by_symbol["TWX"].split == 1.0
    assert by_symbol["TWX"].dividend == pytest.approx(2.95, abs=0.02)
    assert actions == ReplayFeed(path, speed=None, adjustment="raw").actions()
