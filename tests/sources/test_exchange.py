"""liu's local exchange: Alpaca's REST served from the feed, read by alpaca-py's own clients.

The server runs on a thread (`LocalExchange`) so alpaca-py's blocking clients can call it. The data
clock is held at a fixed epoch (the feed is not started) unless a test streams, so every answer is exact.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import msgpack
import numpy as np
import pandas as pd
import pytest
import requests

from liu.clock import Clock, ClockSpec
from liu.sources import protocol as P
from liu.sources.exchange.calendar import MarketCalendar
from liu.sources.exchange.history import LIVE_MINUTES, MINUTE_NS, NS, LiveBook, Timeframe, resample
from liu.sources.exchange.local import LocalExchange
from liu.sources.replay import ReplayFeed
from liu.sources.server import MarketDataServer
from liu.sources.sim import SimFeed
from tests.helpers import exchange_cli

NY = ZoneInfo("America/New_York")
T = 10
STOCKS = ["AAA", "BBB", "CCC", "DDD"]
CRYPTO = ["BTC/USD", "ETH/USD"]
# Monday 2024-07-08 11:00 New York: a session is open; July 4 is a holiday, July 3 closes at 13:00.
EPOCH = int(datetime(2024, 7, 8, 11, 0, tzinfo=NY).timestamp()) * NS
# The test calendar adds a holiday (Tue July 2) and a noon close (Mon July 1) to the NYSE rules.
CALENDAR = {"holidays": ["2024-07-02"], "half_days": {"2024-07-01": "12:00"}}


def ny(*args) -> int:
    return int(datetime(*args, tzinfo=NY).timestamp()) * NS


def iso(ns: int) -> datetime:
    return pd.Timestamp(ns, tz="UTC").to_pydatetime()


@pytest.fixture(scope="module")
def exchange():
    feed = SimFeed(symbols=STOCKS + CRYPTO, seed=11, kinds=("t", "q", "b"))
    with LocalExchange(
        feed,
        key="k",
        secret="s3cr3t",
        start_feed=False,
        epoch_ns=EPOCH,
        calendar=MarketCalendar.from_config(CALENDAR),
    ) as ex:
        yield ex


def history(ex: LocalExchange, sym: str, start: int, end: int):
    """The feed's own bars: what REST must equal."""
    return ex.feed.history(MarketCalendar.from_config(CALENDAR), EPOCH).minute_bars(sym, start, end)


def assert_bars_equal(got: list, want) -> None:
    assert len(got) == len(want)
    assert [int(b.timestamp.timestamp()) * NS for b in got] == want.t.tolist()
    for attr, col in (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"), ("volume", "v")):
        assert [getattr(b, attr) for b in got] == getattr(want, col).tolist(), attr
    assert [b.trade_count for b in got] == want.n.tolist()
    assert [b.vwap for b in got] == want.vw.tolist()


# -- historical bars ----------------------------------------------------------------------------------


def test_stock_bars_multi_page_equal_the_feeds_history(exchange):
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame

    client = StockHistoricalDataClient("k", "s3cr3t", url_override=exchange.http_url)
    start = ny(2024, 6, 24, 9, 30)
    before = exchange.server.rest.requests
    got = client.get_stock_bars(
        StockBarsRequest(
            symbol_or_symbols=STOCKS, timeframe=TimeFrame.Minute, start=iso(start), adjustment="all"
        )
    )
    assert exchange.server.rest.requests - before >= 2, "more than 10,000 bars come in several pages"
    assert set(got.data) == set(STOCKS)
    for sym in STOCKS:
        want = history(exchange, sym, start, EPOCH)
        assert len(want) == 5 * 390 + 150 + 210 + 390 + 90  # June 24-28, July 1 (noon), 3, 5, 8 (to 11:00)
        assert_bars_equal(got.data[sym], want)
    # Days: no bar on the holidays, the half days end early, nothing at or after "now".
    t = pd.DatetimeIndex([b.timestamp for b in got.data["AAA"]]).tz_convert(NY)
    per_day = pd.Series(1, index=t.date).groupby(level=0).sum()
    assert date(2024, 7, 2) not in per_day and date(2024, 7, 4) not in per_day
    assert per_day[date(2024, 7, 1)] == 150 and per_day[date(2024, 7, 3)] == 210
    assert t.max() == pd.Timestamp("2024-07-08 10:59", tz=NY)


def test_crypto_bars_multi_page_without_keys(exchange):
    from alpaca.data.historical import CryptoHistoricalDataClient
    from alpaca.data.requests import CryptoBarsRequest
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

    client = CryptoHistoricalDataClient(url_override=exchange.http_url)  # crypto needs no keys
    start = EPOCH - 4 * 86400 * NS
    before = exchange.server.rest.requests
    got = client.get_crypto_bars(
        CryptoBarsRequest(symbol_or_symbols=CRYPTO, timeframe=TimeFrame.Minute, start=iso(start))
    )
    assert exchange.server.rest.requests - before >= 2
    for sym in CRYPTO:
        want = history(exchange, sym, start, EPOCH)
        assert len(want) == 4 * 1440  # crypto trades around the clock
        assert_bars_equal(got.data[sym], want)
        assert isinstance(got.data[sym][0].volume, float)
    hourly = client.get_crypto_bars(
        CryptoBarsRequest(
            symbol_or_symbols="BTC/USD", timeframe=TimeFrame(4, TimeFrameUnit.Hour), start=iso(start)
        )
    )
    want = resample(history(exchange, "BTC/USD", start, EPOCH), Timeframe(4, "Hour")).between(start, EPOCH)
    assert_bars_equal(hourly.data["BTC/USD"], want)  # buckets stamped before `start` are left out


def test_daily_and_5min_bars_aggregate_the_minutes(exchange):
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

    client = StockHistoricalDataClient("k", "s3cr3t", url_override=exchange.http_url)
    start = ny(2024, 6, 24)
    minutes = history(exchange, "BBB", start, EPOCH)
    df = pd.DataFrame(
        {"t": minutes.t, "o": minutes.o, "h": minutes.h, "l": minutes.l, "c": minutes.c, "v": minutes.v}
    )
    df["day"] = pd.to_datetime(df.t, utc=True).dt.tz_convert(NY).dt.date
    g = df.groupby("day")
    daily = client.get_stock_bars(
        StockBarsRequest(symbol_or_symbols="BBB", timeframe=TimeFrame.Day, start=iso(start))
    ).data["BBB"]
    assert [b.timestamp.astimezone(NY).date() for b in daily] == list(g.groups)
    assert all(b.timestamp.astimezone(NY).time().hour == 0 for b in daily)  # stamped at New York midnight
    assert [b.open for b in daily] == g.o.first().tolist()
    assert [b.high for b in daily] == g.h.max().tolist()
    assert [b.low for b in daily] == g.l.min().tolist()
    assert [b.close for b in daily] == g.c.last().tolist()
    assert [b.volume for b in daily] == g.v.sum().tolist()
    five = client.get_stock_bars(
        StockBarsRequest(
            symbol_or_symbols="BBB", timeframe=TimeFrame(5, TimeFrameUnit.Minute), start=iso(start)
        )
    ).data["BBB"]
    assert len(five) == len(minutes) // 5
    assert five[0].open == minutes.o[0] and five[0].close == minutes.c[4]
    assert five[0].high == minutes.h[:5].max() and five[0].volume == minutes.v[:5].sum()


def test_small_pages_tokens_sort_desc_and_limit(exchange):
    url = exchange.http_url + "/v2/stocks/bars"
    headers = {"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s3cr3t"}
    start = ny(2024, 7, 8, 9, 30)
    base = {"symbols": "CCC,AAA", "timeframe": "1Min", "start": iso(start), "end": iso(EPOCH)}
    for sort in ("asc", "desc"):
        pages, token = [], None
        while True:
            q = base | {"limit": 37, "sort": sort} | ({"page_token": token} if token else {})
            body = requests.get(url, params=q, headers=headers, timeout=T).json()
            pages.append(body["bars"])
            token = body["next_page_token"]
            if token is None:
                break
        assert len(pages) == -(-180 // 37)  # 2 symbols x 90 minutes, 37 a page
        assert sum(len(v) for p in pages for v in p.values()) == 180
        assert list(pages[0]) == ["AAA"]  # by symbol first
        for sym in ("AAA", "CCC"):
            ts = [b["t"] for p in pages for b in p.get(sym, [])]
            assert len(ts) == 90 and len(set(ts)) == 90
            assert ts == sorted(ts, reverse=sort == "desc")
    one = requests.get(
        exchange.http_url + "/v2/stocks/AAA/bars", params=base | {"limit": 5}, headers=headers, timeout=T
    )
    assert one.json()["symbol"] == "AAA" and len(one.json()["bars"]) == 5 and one.json()["next_page_token"]


# -- snapshots, latest --------------------------------------------------------------------------------


def test_snapshots_and_latest_from_history(exchange):
    from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
    from alpaca.data.requests import CryptoSnapshotRequest, StockLatestBarRequest, StockSnapshotRequest

    client = StockHistoricalDataClient("k", "s3cr3t", url_override=exchange.http_url)
    snaps = client.get_stock_snapshot(StockSnapshotRequest(symbol_or_symbols=["AAA", "DDD"]))
    assert set(snaps) == {"AAA", "DDD"}
    minutes = history(exchange, "AAA", ny(2024, 7, 3), EPOCH)
    s = snaps["AAA"]
    assert s.minute_bar.close == minutes.c[-1] == exchange.feed.universe()["AAA"]["price"]
    assert s.minute_bar.timestamp == pd.Timestamp("2024-07-08 10:59", tz=NY)
    today = minutes.between(ny(2024, 7, 8), EPOCH)
    assert s.daily_bar.open == today.o[0] and s.daily_bar.volume == today.v.sum()
    assert s.previous_daily_bar.timestamp == pd.Timestamp("2024-07-05", tz=NY)
    assert s.latest_trade.price == minutes.c[-1] and s.latest_quote.bid_price < s.latest_quote.ask_price
    latest = client.get_stock_latest_bar(StockLatestBarRequest(symbol_or_symbols="DDD"))
    assert latest["DDD"].close == snaps["DDD"].minute_bar.close
    crypto = CryptoHistoricalDataClient(url_override=exchange.http_url)
    cs = crypto.get_crypto_snapshot(CryptoSnapshotRequest(symbol_or_symbols=["BTC/USD"]))
    assert cs["BTC/USD"].minute_bar.timestamp == pd.Timestamp("2024-07-08 10:59", tz=NY)
    assert cs["BTC/USD"].latest_trade.exchange is None


# -- trading API: clock, calendar, assets ---------------------------------------------------------------


def test_clock_calendar_half_day_and_holiday(exchange):
    from alpaca.trading.client import TradingClient
    from alpaca.trading.requests import GetCalendarRequest

    tc = TradingClient("k", "s3cr3t", url_override=exchange.http_url)
    clock = tc.get_clock()
    assert clock.is_open and clock.timestamp == datetime(2024, 7, 8, 11, 0, tzinfo=NY)
    assert clock.next_close == datetime(2024, 7, 8, 16, 0, tzinfo=NY)
    assert clock.next_open == datetime(2024, 7, 9, 9, 30, tzinfo=NY)
    days = tc.get_calendar(GetCalendarRequest(start=date(2024, 6, 28), end=date(2024, 7, 9)))
    got = {d.date: (d.open.strftime("%H:%M"), d.close.strftime("%H:%M")) for d in days}
    assert got == {
        date(2024, 6, 28): ("09:30", "16:00"),
        date(2024, 7, 1): ("09:30", "12:00"),  # the configured half day
        # July 2: the configured holiday; July 4: Independence Day
        date(2024, 7, 3): ("09:30", "13:00"),  # the NYSE early close
        date(2024, 7, 5): ("09:30", "16:00"),
        date(2024, 7, 8): ("09:30", "16:00"),
        date(2024, 7, 9): ("09:30", "16:00"),
    }


def test_clock_on_a_holiday_points_at_the_next_session():
    from alpaca.trading.client import TradingClient

    feed = SimFeed(symbols=["AAA"])
    with LocalExchange(feed, key="k", secret="s", start_feed=False, epoch_ns=ny(2024, 7, 4, 12, 0)) as ex:
        clock = TradingClient("k", "s", url_override=ex.http_url).get_clock()
    assert not clock.is_open
    assert clock.next_open == datetime(2024, 7, 5, 9, 30, tzinfo=NY)
    assert clock.next_close == datetime(2024, 7, 5, 16, 0, tzinfo=NY)


def test_assets(exchange):
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import AssetClass
    from alpaca.trading.requests import GetAssetsRequest

    tc = TradingClient("k", "s3cr3t", url_override=exchange.http_url)
    assets = tc.get_all_assets()
    assert [a.symbol for a in assets] == STOCKS + CRYPTO
    uni = exchange.feed.universe()
    for a in assets:
        crypto = a.symbol in CRYPTO
        assert a.asset_class == (AssetClass.CRYPTO if crypto else AssetClass.US_EQUITY)
        assert a.tradable and a.fractionable and a.status == "active"
        assert a.shortable == (uni[a.symbol]["shortable"] and not crypto)
        assert a.marginable == (not crypto)
        assert a.easy_to_borrow <= a.shortable
        assert (a.exchange == "CRYPTO") == crypto
    only = tc.get_all_assets(GetAssetsRequest(asset_class=AssetClass.CRYPTO))
    assert [a.symbol for a in only] == CRYPTO
    btc = tc.get_asset("BTC/USD")
    assert btc.symbol == "BTC/USD" and tc.get_asset("BTCUSD").id == btc.id == tc.get_asset(str(btc.id)).id


# -- auth and bad input ----------------------------------------------------------------------------------


def test_rest_auth_errors(exchange):
    from alpaca.common.exceptions import APIError
    from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
    from alpaca.data.requests import CryptoLatestQuoteRequest, StockLatestQuoteRequest
    from alpaca.trading.client import TradingClient

    wrong = StockHistoricalDataClient("k", "wrong", url_override=exchange.http_url)
    with pytest.raises(APIError) as e:
        wrong.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols="AAA"))
    assert e.value.status_code == 403 and e.value.message == "forbidden."
    with pytest.raises(APIError) as e:
        TradingClient("nobody", "s3cr3t", url_override=exchange.http_url).get_clock()
    assert e.value.status_code == 403
    r = requests.get(
        exchange.http_url + "/v2/stocks/bars", params={"symbols": "AAA", "timeframe": "1Min"}, timeout=T
    )
    assert r.status_code == 401 and r.json() == {"message": "unauthorized."}
    with pytest.raises(APIError) as e:
        CryptoHistoricalDataClient("k", "wrong", url_override=exchange.http_url).get_crypto_latest_quote(
            CryptoLatestQuoteRequest(symbol_or_symbols="BTC/USD")
        )
    assert e.value.status_code == 403
    ok = CryptoHistoricalDataClient("k", "s3cr3t", url_override=exchange.http_url)
    assert "BTC/USD" in ok.get_crypto_latest_quote(CryptoLatestQuoteRequest(symbol_or_symbols="BTC/USD"))


@pytest.mark.parametrize(
    ("path", "params", "status", "text"),
    [
        ("/v2/stocks/bars", {"symbols": "BTC/USD", "timeframe": "1Min"}, 400, "BTC/USD"),
        ("/v1beta3/crypto/us/bars", {"symbols": "AAA", "timeframe": "1Min"}, 400, "BASE/QUOTE"),
        ("/v2/stocks/bars", {"symbols": "AAA", "timeframe": "2Day"}, 400, "timeframe"),
        ("/v2/stocks/bars", {"symbols": "AAA", "timeframe": "1Min", "limit": "0"}, 400, "limit"),
        ("/v2/stocks/bars", {"symbols": "AAA", "timeframe": "1Min", "feed": "nasdaq"}, 400, "feed"),
        ("/v2/stocks/bars", {"symbols": "AAA", "timeframe": "1Min", "adjustment": "some"}, 400, "adjustment"),
        ("/v2/stocks/bars", {"symbols": "AAA", "timeframe": "1Min", "start": "yesterday"}, 400, "start"),
        ("/v2/stocks/bars", {"symbols": "AAA", "timeframe": "1Min", "page_token": "%%%"}, 400, "page_token"),
        ("/v2/stocks/bars", {"timeframe": "1Min"}, 400, "symbols"),
        ("/v2/orders", {}, 404, "/v2/orders"),
        ("/v2/assets/NOPE", {}, 404, "NOPE"),
    ],
)
def test_rest_bad_input_one_clear_message(exchange, path, params, status, text):
    headers = {"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s3cr3t"}
    r = requests.get(exchange.http_url + path, params=params, headers=headers, timeout=T)
    assert r.status_code == status
    assert text in r.json()["message"]


def test_recent_sip_history_needs_a_subscription():
    feed = SimFeed(symbols=["AAA"])
    with LocalExchange(feed, key="k", secret="s", start_feed=False, epoch_ns=EPOCH, sip_allowed=False) as ex:
        url, headers = ex.http_url + "/v2/stocks/bars", {"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s"}
        q = {"symbols": "AAA", "timeframe": "1Min", "feed": "sip", "start": iso(EPOCH - 3600 * NS)}
        r = requests.get(url, params=q, headers=headers, timeout=T)
        assert r.status_code == 403 and "recent SIP" in r.json()["message"]
        r = requests.get(url, params=q | {"end": iso(EPOCH - 20 * 60 * NS)}, headers=headers, timeout=T)
        assert r.status_code == 200 and len(r.json()["bars"]["AAA"]) == 41  # 10:00..10:40, end included
        assert requests.get(url, params=q | {"feed": "iex"}, headers=headers, timeout=T).status_code == 200


# -- bars of what was streamed ---------------------------------------------------------------------------


class PushFeed:
    """A feed the test pushes frames into (no history of its own: REST serves what was streamed)."""

    finite = False
    types = frozenset("tq")

    def __init__(self) -> None:
        self.q: asyncio.Queue = asyncio.Queue()
        self.events = 0

    def universe(self) -> dict:
        return {"AAA": {"price": 10.0, "avg_volume": 1.0, "shortable": True}}

    def first_ts(self):
        return None

    async def frames(self, clock):
        while (msgs := await self.q.get()) is not None:
            self.events += len(msgs)
            yield msgs


async def test_rest_bars_and_latest_trade_follow_the_stream():
    """Minute bars REST serves for the streamed period are built from the streamed trades (what a
    gap back-fill reads), complete minutes only; the latest trade and quote are the last streamed."""
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.data.requests import StockBarsRequest, StockLatestQuoteRequest, StockLatestTradeRequest
    from alpaca.data.timeframe import TimeFrame

    feed = PushFeed()
    t0 = ny(2024, 7, 8, 10, 0)
    server = MarketDataServer(feed, key="k", secret="s", epoch_ns=t0)
    await server.start()
    try:
        server.start_feed(Clock(ClockSpec(t0, time.time_ns(), None)))
        prints = [
            (0, 10.0, 100),
            (20, 10.5, 200),
            (59, 10.2, 100),
            (60, 10.3, 300),
            (150, 9.9, 100),
            (185, 10.1, 50),
        ]
        feed.q.put_nowait([P.trade_msg("AAA", t0 + s * NS, p, n, id=i) for i, (s, p, n) in enumerate(prints)])
        feed.q.put_nowait([P.quote_msg("AAA", t0 + 185 * NS, 10.0, 1, 10.2, 2)])
        await asyncio.wait_for(_until(lambda: "AAA" in server.book.last_quote), T)
        client = StockHistoricalDataClient("k", "s", url_override=server.http_url)
        bars = (
            await asyncio.to_thread(
                client.get_stock_bars,
                StockBarsRequest(symbol_or_symbols="AAA", timeframe=TimeFrame.Minute, start=iso(t0)),
            )
        ).data["AAA"]
        # minutes 10:00 and 10:01 are complete; 10:02 ended at 10:03:00 <= now (10:03:05); 10:03 is open
        assert [(b.open, b.high, b.low, b.close, b.volume, b.trade_count) for b in bars] == [
            (10.0, 10.5, 10.0, 10.2, 400.0, 3.0),
            (10.3, 10.3, 10.3, 10.3, 300.0, 1.0),
            (9.9, 9.9, 9.9, 9.9, 100.0, 1.0),
        ]
        assert bars[0].vwap == round((10.0 * 100 + 10.5 * 200 + 10.2 * 100) / 400, 4)
        trade = (
            await asyncio.to_thread(
                client.get_stock_latest_trade, StockLatestTradeRequest(symbol_or_symbols="AAA")
            )
        )["AAA"]
        assert trade.price == 10.1 and trade.id == 5
        quote = (
            await asyncio.to_thread(
                client.get_stock_latest_quote, StockLatestQuoteRequest(symbol_or_symbols="AAA")
            )
        )["AAA"]
        assert (quote.bid_price, quote.ask_price) == (10.0, 10.2)
    finally:
        await server.stop()


async def _until(pred) -> None:
    while not pred():
        await asyncio.sleep(0.005)


# -- replay: the file's bars, no look-ahead, adjustments --------------------------------------------------


def _lean_file(tmp_path: Path) -> Path:
    """AAPL around its 7:1 split (June 9, 2014), with a dividend factor step after June 5."""
    head = "symbol,timestamp,open,high,low,close,volume,bid_close,bid_size,ask_close,ask_size,split_factor,price_factor"
    rows = [head]
    for d, split, div in (("2014-06-05", 1 / 7, 0.99), ("2014-06-06", 1 / 7, 1.0), ("2014-06-09", 1.0, 1.0)):
        for m in range(3):
            px = 600.0 + m if split < 1 else 90.0 + m
            rows.append(
                f"AAPL,{d} 09:3{m}:00-04:00,{px},{px + 1},{px - 1},{px + 0.5},{1000 * (m + 1)},"
                f"{px},1,{px + 1},1,{split},{div}"
            )
    p = tmp_path / "lean.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


async def _streamed_bars(feed) -> list[dict]:
    out = []
    async for frame in feed.frames(Clock(ClockSpec(0, 0, None))):
        out += [m for m in frame if m["T"] == "b"]
    return out


def test_replay_history_is_the_file_before_now_adjusted_as_the_replay_is(tmp_path):
    path = _lean_file(tmp_path)
    streamed = asyncio.run(_streamed_bars(ReplayFeed(path)))  # a default replay: adjustment "all"
    feed = ReplayFeed(path, start="2014-06-06")
    with LocalExchange(feed, key="k", secret="s", start_feed=False) as ex:
        assert ex.server.epoch_ns == feed.first_ts() == ny(2014, 6, 6, 9, 30)
        url, headers = ex.http_url + "/v2/stocks/bars", {"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s"}
        q = {"symbols": "AAPL", "timeframe": "1Min", "start": "2014-06-01"}

        def get(**extra) -> list[dict]:
            return requests.get(url, params=q | extra, headers=headers, timeout=T).json()["bars"]["AAPL"]

        # Before the replay starts, history is what precedes its first event: June 5 (before `start`).
        raw = get()
        assert [b["c"] for b in raw] == [600.5, 601.5, 602.5]
        assert [b["v"] for b in raw] == [1000, 2000, 3000]
        split = get(adjustment="split")
        assert [b["c"] for b in split] == pytest.approx([c / 7 for c in (600.5, 601.5, 602.5)], rel=1e-12)
        assert [b["v"] for b in split] == [7000, 14000, 21000]
        dividend = get(adjustment="dividend")
        assert [b["c"] for b in dividend] == pytest.approx(
            [c * 0.99 for c in (600.5, 601.5, 602.5)], rel=1e-12
        )
        # "all" is exactly what the replay streams for those minutes
        every = get(adjustment="all")
        assert [(b["o"], b["h"], b["l"], b["c"], b["vw"]) for b in every] == [
            (m["o"], m["h"], m["l"], m["c"], m["vw"]) for m in streamed[:3]
        ]
        # Once the replay has sent June 6 and 9, those bars are served too (complete minutes only).
        ex.start_feed(ClockSpec(feed.first_ts(), time.time_ns(), None))
        ex.call(asyncio.wait_for(ex.server.feed_done.wait(), T), T + 5)  # the replay has sent everything
        after = get(adjustment="all")
        assert len(after) == 8  # the last minute (June 9 09:32) is not complete yet at "now"
        assert [b["c"] for b in after] == [m["c"] for m in streamed[:8]]
        snap = requests.get(
            ex.http_url + "/v2/stocks/snapshots", params={"symbols": "AAPL"}, headers=headers, timeout=T
        )
        assert snap.json()["AAPL"]["latestQuote"]["bp"] == 92.0


# -- history unit checks -----------------------------------------------------------------------------------


def test_sim_history_is_deterministic_continuous_and_ends_at_the_base_price():
    feed = SimFeed(symbols=["AAA", "BTC/USD"], seed=3)
    cal = MarketCalendar()
    a = feed.history(cal, EPOCH)
    b = SimFeed(symbols=["AAA", "BTC/USD"], seed=3).history(cal, EPOCH)
    wide = a.minute_bars("AAA", EPOCH - 20 * 86400 * NS, EPOCH)
    narrow = b.minute_bars("AAA", EPOCH - 2 * 86400 * NS, EPOCH)  # asked alone, first
    k = int(np.searchsorted(wide.t, narrow.t[0]))
    assert wide.take(slice(k, None)).c.tolist() == narrow.c.tolist()
    assert wide.t[-1] == EPOCH - MINUTE_NS and wide.c[-1] == feed.universe()["AAA"]["price"]
    assert (wide.o[1:] == wide.c[:-1]).all()  # each minute opens at the last close
    assert (wide.l <= np.minimum(wide.o, wide.c)).all() and (wide.h >= np.maximum(wide.o, wide.c)).all()
    assert (np.diff(wide.t) > 0).all()
    other = (
        SimFeed(symbols=["AAA", "BTC/USD"], seed=4)
        .history(cal, EPOCH)
        .minute_bars("AAA", EPOCH - 86400 * NS, EPOCH)
    )
    assert other.c.tolist() != narrow.c[-len(other) :].tolist()
    btc = a.minute_bars("BTC/USD", EPOCH - 86400 * NS, EPOCH)
    assert len(btc) == 1440 and btc.c[-1] == feed.universe()["BTC/USD"]["price"]


def test_nyse_calendar_rules():
    cal = MarketCalendar()
    closed_2024 = [d for d in pd.bdate_range("2024-01-01", "2024-12-31").date if cal.session(d) is None]
    assert [str(d) for d in closed_2024] == [
        "2024-01-01",
        "2024-01-15",
        "2024-02-19",
        "2024-03-29",
        "2024-05-27",
        "2024-06-19",
        "2024-07-04",
        "2024-09-02",
        "2024-11-28",
        "2024-12-25",
    ]
    early = [
        d
        for d in pd.bdate_range("2024-01-01", "2024-12-31").date
        if (s := cal.session(d)) and s.close != "16:00"
    ]
    assert [str(d) for d in early] == ["2024-07-03", "2024-11-29", "2024-12-24"]
    assert cal.session(date(2022, 12, 26)) is None and cal.session(date(2021, 12, 31)) is not None
    with pytest.raises(ValueError, match="half_days"):
        MarketCalendar(half_days={"2024-07-01": "noon"})


# -- trader exchange -------------------------------------------------------------------------------------


def test_trader_exchange_prints_urls_and_a_local_key_and_serves(tmp_path):
    from alpaca.trading.client import TradingClient

    env = os.environ | {
        "LIU_EXCHANGE_SECRET_KEY": "local-test-secret-42",
        "APCA_API_SECRET_KEY": "real-alpaca-secret-do-not-print",
    }
    with exchange_cli(tmp_path, env) as (proc, text):
        http_url = next(w for w in text.split() if w.startswith("http://")).strip('",')
        assert "ws://" in text and "/v1beta3/crypto/us" in text and "/v2/iex" in text
        assert "local-test-secret-42" in text and "local test key" in text
        assert "real-alpaca-secret-do-not-print" not in text
        clock = TradingClient("liu-local", "local-test-secret-42", url_override=http_url).get_clock()
        assert clock.timestamp.year >= 2024
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "real-alpaca-secret-do-not-print" not in out


def test_the_live_book_keeps_a_day_of_minutes_per_symbol() -> None:
    book = LiveBook()
    t0 = 1_700_000_040 * NS - (1_700_000_040 * NS) % MINUTE_NS
    n = LIVE_MINUTES + 30
    for k in range(n):  # one print a minute; each new minute closes the one before
        ts = msgpack.Timestamp.from_unix_nano(t0 + k * MINUTE_NS)
        book.record([{"T": "t", "S": "AAA", "p": 100.0 + k, "s": 1, "t": ts}])
    bars = book.minute_bars("AAA", 0, t0 + n * MINUTE_NS)
    assert len(bars.t) == LIVE_MINUTES + 1  # the last day's closed minutes, and the open one
    assert bars.t[0] == t0 + (n - 1 - LIVE_MINUTES) * MINUTE_NS and bars.t[-1] == t0 + (n - 1) * MINUTE_NS
    assert bars.c[0] == 100.0 + n - 1 - LIVE_MINUTES  # each kept bar is its own minute's
