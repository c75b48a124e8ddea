"""The market session from Alpaca's clock and calendar: open now, closed until the next open, an early
close, a holiday; and the small parsers and checks of the Alpaca client (no network here: the REST side
is tested against liu's exchange in tests/test_alpaca_live.py)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from liu.errors import ConfigError
from liu.market import check_symbols, warmup_bars
from liu.plan import parse_plan
from liu.sources.alpaca.calendar import market_day, market_session
from liu.sources.alpaca.client import Asset, Credentials, MarketClock, load_credentials, rfc3339_ns
from liu.sources.alpaca.history import stock_window_start, window_start

NY = ZoneInfo("America/New_York")
NS = 1_000_000_000

# Thanksgiving week 2024: Thu 28 closed, Fri 29 closes at 13:00.
CALENDAR = [
    {"date": "2024-11-25", "open": "09:30", "close": "16:00"},
    {"date": "2024-11-26", "open": "09:30", "close": "16:00"},
    {"date": "2024-11-27", "open": "09:30", "close": "16:00"},
    {"date": "2024-11-29", "open": "09:30", "close": "13:00"},
    {"date": "2024-12-02", "open": "09:30", "close": "16:00"},
]
DAYS = [market_day(d) for d in CALENDAR]


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()) * NS


def clock(now: str, is_open: bool, next_open: str, next_close: str) -> MarketClock:
    return MarketClock(ns(now), is_open, ns(next_open), ns(next_close))


def test_open_now_runs_until_the_close():
    s = market_session(clock("2024-11-26T11:00", True, "2024-11-27T09:30", "2024-11-26T16:00"), DAYS)
    assert s.open_now and s.start == ns("2024-11-26T11:00") and s.end == ns("2024-11-26T16:00")
    assert not s.early_close
    assert s.describe() == "market open until Tue 2024-11-26 16:00 New York"


def test_a_half_day_ends_at_its_early_close():
    s = market_session(clock("2024-11-29T10:00", True, "2024-12-02T09:30", "2024-11-29T13:00"), DAYS)
    assert s.open_now and s.end == ns("2024-11-29T13:00") and s.early_close
    assert "early close 13:00" in s.describe()


def test_a_holiday_is_named_and_the_session_waits_for_the_next_open():
    # Thanksgiving morning: closed all day; the next session is the half day.
    s = market_session(clock("2024-11-28T10:00", False, "2024-11-29T09:30", "2024-11-29T13:00"), DAYS)
    assert not s.open_now
    assert s.start == ns("2024-11-29T09:30") and s.end == ns("2024-11-29T13:00")
    assert s.holidays == (date(2024, 11, 28),) and s.early_close
    text = s.describe()
    assert "market closed; no session on Thu 2024-11-28 (market holiday)" in text
    assert (
        "next session opens Fri 2024-11-29 09:30 New York, closes 13:00 (early close 13:00); in 23h 30m"
        in text
    )


def test_after_the_close_the_night_is_no_holiday_and_weekends_are_not_either():
    s = market_session(clock("2024-11-29T14:00", False, "2024-12-02T09:30", "2024-12-02T16:00"), DAYS)
    assert s.holidays == () and s.start == ns("2024-12-02T09:30") and s.end == ns("2024-12-02T16:00")
    assert s.describe().startswith("market closed; next session opens Mon 2024-12-02 09:30 New York")


def test_the_clock_is_the_authority_when_the_calendar_disagrees():
    s = market_session(clock("2024-11-27T08:00", False, "2024-11-27T10:00", "2024-11-27T16:00"), DAYS)
    assert s.start == ns("2024-11-27T10:00") and s.day is None and s.end == ns("2024-11-27T16:00")


def test_rfc3339_times_keep_nanoseconds_and_offsets():
    assert rfc3339_ns("2024-01-02T14:30:00Z") == ns("2024-01-02T09:30")
    assert rfc3339_ns("2024-01-02T09:30:00.123456789-05:00") == ns("2024-01-02T09:30") + 123_456_789
    assert rfc3339_ns("2024-01-02T14:30:00.5Z") == ns("2024-01-02T09:30") + 500_000_000
    assert rfc3339_ns("2024-01-02T14:30:00") == ns("2024-01-02T09:30")  # naive: UTC, as alpaca-py does


def test_credentials_never_show_and_missing_ones_name_the_variables():
    c = Credentials("AKXXXXXXXXXXXXXXXXXX", "s3cr3t-value")
    assert "s3cr3t" not in repr(c) and "AKX" not in repr(c) and "s3cr3t" not in str(c)
    with pytest.raises(ConfigError, match="set APCA_API_SECRET_KEY in the environment or in .env"):
        load_credentials(environ={"APCA_API_KEY_ID": "AK1"})
    assert load_credentials(environ={"APCA_API_KEY_ID": " AK1 ", "APCA_API_SECRET_KEY": "s"}).key_id == "AK1"


ASSETS = {
    "AAPL": Asset("AAPL", "us_equity", "NASDAQ"),
    "BTC/USD": Asset("BTC/USD", "crypto", "CRYPTO"),
    "ETH/USD": Asset("ETH/USD", "crypto", "CRYPTO"),
}


def test_plan_symbols_are_checked_against_the_assets_in_one_line():
    check_symbols(["AAPL", "BTC/USD"], ASSETS, "iex")
    with pytest.raises(ConfigError, match=r"'ZZZZ' is not an active, tradable stock at Alpaca"):
        check_symbols(["AAPL", "ZZZZ"], ASSETS, "iex")
    with pytest.raises(ConfigError, match=r"'DOGE/USD' is not an active, tradable crypto pair"):
        check_symbols(["DOGE/USD"], ASSETS, "iex")
    # A crypto pair written as a stock symbol would go to the stock feed.
    with pytest.raises(
        ConfigError, match=r"'BTCUSD' is not a stock on the iex feed but the crypto pair 'BTC/USD'"
    ):
        check_symbols(["BTCUSD"], ASSETS, "iex")


def test_warm_up_size_follows_indicators_models_and_declarations(tmp_path):
    strat = tmp_path / "s.py"
    strat.write_text("def on_bar(self, bar, ctx):\n    return ctx.ta(bar.symbol, 'SMA', timeperiod=250)\n")
    plain = tmp_path / "p.py"
    plain.write_text("def on_bar(self, bar, ctx):\n    return None\n")

    def plan(**entry):
        return parse_plan(
            {"strategies": [{"file": entry.pop("file"), "class": "S", **entry}]}, base_dir=tmp_path
        )

    assert warmup_bars(plan(file="s.py")) == 250  # SMA(250) needs 250 bars
    assert warmup_bars(plan(file="p.py")) == 100  # nothing to size: the default
    assert warmup_bars(plan(file="p.py", warmup=20)) == 20  # declared
    assert warmup_bars(plan(file="s.py", warmup=0)) == 0  # declared: none


def test_history_windows_span_trading_minutes_back_from_now():
    # Monday 10:00 New York, 500 bars: 360 minutes of Monday (04:00-10:00) and 140 of Friday's evening.
    end = ns("2024-12-02T10:00")
    assert stock_window_start(end, 500) == ns("2024-11-29T17:40")
    assert window_start("BTC/USD", end, 100) == end - (110 + 5) * 60 * NS  # crypto: every minute
