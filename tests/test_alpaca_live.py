"""`trader` with `[source] kind = "alpaca"` against liu's local exchange (a subprocess, real sockets on
127.0.0.1, alpaca-py's own REST clients inside): stocks and crypto together on two consumers, warm
indicators on the first live bar, counts that add up, a 407 gap back-filled, the market calendar, and
bad input answered with one clear line that never contains the secret."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil
import pytest

from liu.market import calendar_session
from liu.scanner import Scanner, ScannerRunner, ScheduledScanner, asset_infos
from liu.sources.alpaca.client import AlpacaData, Credentials, Endpoints
from liu.sources.alpaca.history import History, HistorySource
from liu.sources.exchange.calendar import MarketCalendar
from liu.sources.exchange.local import LocalExchange
from liu.sources.sim import SimFeed
from tests.alpaca_helpers import KEY, SECRET, Trader, env
from tests.helpers import eventually

pytestmark = pytest.mark.slow
NY = ZoneInfo("America/New_York")
NS = 1_000_000_000
MINUTE = 60 * NS
STOCKS, CRYPTO = ["AAA", "BBB", "CCC"], ["BTC/USD", "ETH/USD"]

STRATEGY = '''
import json, os
from liu.strategy import Strategy, StrategyConfig


class Cfg(StrategyConfig):
    out: str
    symbols: list[str] = []


class FirstBar(Strategy):
    """Notes, per symbol, what the first live bar found; at the end, every bar time in history."""

    Config = Cfg

    def on_start(self, ctx):
        self.seen = set()

    def on_bar(self, bar, ctx):
        if bar.symbol not in self.seen:
            self.seen.add(bar.symbol)
            rec = {"symbol": bar.symbol, "ts": bar.ts, "sma": ctx.ta(bar.symbol, "SMA", timeperiod=30),
                   "rsi": ctx.ta(bar.symbol, "RSI", timeperiod=14), "bars": len(ctx.bars(bar.symbol))}
            with open(self.config.out, "a") as f:
                f.write(json.dumps(rec) + "\\n")
        return None

    def on_stop(self, ctx):
        with open(self.config.out + ".history", "a") as f:
            for sym in sorted(s for s in self.config.symbols if ctx.last_price(s) is not None):  # its own
                f.write(json.dumps({"symbol": sym, "ts": [int(t) for t in ctx.bars(sym).ts]}) + "\\n")
'''


def feed(symbols: list[str], rate: float = 400, kinds=("t", "q", "b")) -> SimFeed:
    mix = {"t": 0.6, "q": 0.2, "b": 0.2} if "b" in kinds else {"t": 0.8, "q": 0.2}
    return SimFeed(symbols=symbols, rate=rate, seed=11, kinds=mix)


def plan_text(
    tmp_path: Path,
    ex: LocalExchange | None,
    dsn: str,
    symbols: list[str],
    *,
    duration="6",
    extra: str = "",
    **source,
) -> str:
    (tmp_path / "strat.py").write_text(STRATEGY)
    src = {"kind": "alpaca", "symbols": symbols, "bars": "stream", **source}
    src_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in src.items())
    urls = (
        f'data_url = "{ex.http_url}"\nstream_url = "{ex.ws_url}"\ntrading_url = "{ex.http_url}"\n'
        if ex
        else ""
    )
    return f"""
[session]
duration = {duration}
[source]
{src_lines}
[alpaca]
{urls}timeout = 10
[consumers]
count = 2
[database]
dsn = "{dsn}"
[[strategies]]
name = "first"
file = "{tmp_path / "strat.py"}"
class = "FirstBar"
[strategies.config]
out = "{tmp_path / "first.jsonl"}"
symbols = {json.dumps(symbols)}
{extra}
"""


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def check_counts(summary: dict) -> None:
    """Every consumer accounts for each event it was sent, and the producer's count adds up."""
    received = 0
    for c in summary["consumers"]:
        assert c["received"] == c["processed"] + c["stale"] + c["malformed"]
        received += c["received"]
    assert received == sum(summary["sent_per_consumer"]) == summary["producer"]["events"]


# -- the session ------------------------------------------------------------------------------------


def test_stocks_and_crypto_on_two_consumers_warm_from_the_first_live_bar(tmp_path, pg_dsn):
    with LocalExchange(feed(STOCKS + CRYPTO), key=KEY, secret=SECRET) as ex:
        trader = Trader(tmp_path, plan_text(tmp_path, ex, pg_dsn, STOCKS + CRYPTO))
        try:
            code = trader.wait()
        finally:
            trader.close()
    assert code == 0, trader.text[-3000:]
    summary = trader.json()
    assert summary["end_reason"] == "session end"
    check_counts(summary)
    consumers = summary["consumers"]
    assert all(c["processed"] > 0 for c in consumers)  # events flowed to both consumers
    assert sorted(s for c in consumers for s in c["symbols"]) == sorted(STOCKS + CRYPTO)
    # Every symbol was warmed before its first live bar: its indicators were there on that bar.
    first = {r["symbol"]: r for r in lines(tmp_path / "first.jsonl")}
    assert sorted(first) == sorted(STOCKS + CRYPTO)
    for r in first.values():
        assert r["sma"] is not None and r["rsi"] is not None, r
        assert r["bars"] == 101, r  # 100 history bars (the default warm-up) + this live bar
    warm = [c["warmup"] for c in consumers]
    assert sum(w["symbols"] for w in warm) == 5 and sum(w["bars"] for w in warm) == 500
    assert all(not w["failed"] for w in warm)
    assert "history (warm-up before the first live bar" in trader.text, "".join(trader.out)[-3000:]
    assert SECRET not in trader.text


def test_a_stalled_producer_gets_407_and_the_gap_is_back_filled(tmp_path, pg_dsn):
    symbols = ["AAA", "BTC/USD"]
    ex = LocalExchange(
        feed(symbols, rate=3000, kinds=("t", "q")),
        key=KEY,
        secret=SECRET,
        slow_client_bytes=50_000,
        slow_client_grace=1,
    )
    with ex:
        plan = plan_text(tmp_path, ex, pg_dsn, symbols, duration="300", bars="trades")
        launched = time.time_ns()
        trader = Trader(tmp_path, plan)
        try:
            eventually(lambda: ex.server.subscribers() == 2, 60, "trader streaming stocks and crypto")
            producer = eventually(
                lambda: _producer(trader.proc.pid, ex.server.port), 30, "the producer process"
            )
            # Stall the producer (a CPU-starved process) until a whole minute has gone by: the server drops
            # it with 407; the minute it stalled in is seen only in part live, the next one not at all.
            producer.send_signal(signal.SIGSTOP)
            try:
                resume_at = (time.time_ns() // MINUTE + 2) * MINUTE + 3 * NS
                eventually(lambda: ex.server.slow_disconnects >= 1, 60, "the 407")
                eventually(lambda: time.time_ns() >= resume_at, 130, "a missed minute", interval=0.2)
            finally:
                producer.send_signal(signal.SIGCONT)
            eventually(lambda: "back-fill:" in "".join(trader.err), 60, "the back-fill")
            trader.proc.send_signal(signal.SIGINT)
            code = trader.wait()
        finally:
            trader.close()
    assert code == 0, trader.text[-3000:]
    text = trader.text
    summary = trader.json()
    check_counts(summary)
    assert summary["gaps"] and max(summary["gaps"]) > 30  # from the last frame before the stall
    # (The 407 itself sat behind the backlog the server dropped: Alpaca too may close without sending it.)
    assert "back-filling and resubscribed" in text
    warm = [c["warmup"] for c in summary["consumers"]]
    # The minute missed whole was filled for both symbols (and nothing was left out; holes: below).
    assert sum(w["backfills"] for w in warm) >= 1 and sum(w["filled_bars"] for w in warm) >= 2, warm
    assert not any(w["unfilled"] for w in warm)
    # Bar history has no hole: from the minute trader started on, one bar per minute for each symbol.
    started = launched - launched % MINUTE
    history = lines(tmp_path / "first.jsonl.history")
    assert sorted(r["symbol"] for r in history) == sorted(symbols)
    for row in history:
        live = [t for t in row["ts"] if t >= started]
        assert len(live) >= 2, row["symbol"]
        assert all(b - a == MINUTE for a, b in itertools.pairwise(live)), (row["symbol"], live)
    assert SECRET not in text


def _producer(trader_pid: int, port: int) -> psutil.Process | None:
    """The trader's child holding the websocket connections to the exchange."""
    for p in psutil.Process(trader_pid).children(recursive=True):
        try:
            if sum(1 for c in p.net_connections("tcp") if c.raddr and c.raddr.port == port) >= 2:
                return p
        except psutil.Error:
            continue
    return None


# -- bad input: one clear line, never the secret -----------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        (
            "wrong keys",
            "error: Alpaca refused the API keys (APCA_API_KEY_ID / APCA_API_SECRET_KEY) for assets",
        ),
        ("missing keys", "error: Alpaca keys missing: set APCA_API_KEY_ID and APCA_API_SECRET_KEY"),
        (
            "unknown feed",
            "tradeplan.toml: [source] feed: given 'opra', expected 'iex', 'sip' or 'delayed_sip'",
        ),
        (
            "crypto on the stock feed",
            "error: tradeplan [source] symbols: 'BTCUSD' is not a stock on the iex feed",
        ),
        (
            "unknown symbol",
            "error: tradeplan [source] symbols: 'ZZZZ' is not an active, tradable stock at Alpaca",
        ),
        ("feed not in the plan", "producer: stock market data server ws://"),
    ],
)
def test_bad_input_is_one_clear_line_without_the_secret(tmp_path, pg_dsn, case, expect):
    symbols = ["AAA", "BTC/USD"]
    source = {}
    environ = env()
    if case == "wrong keys":
        environ = env(secret="wrong-" + SECRET[::-1])
    elif case == "missing keys":
        environ = env(secret=None, key=None)
    elif case == "unknown feed":
        source["feed"] = "opra"
    elif case == "crypto on the stock feed":
        symbols = ["AAA", "BTCUSD"]
    elif case == "unknown symbol":
        symbols = ["AAA", "ZZZZ"]
    elif case == "feed not in the plan":
        source["feed"] = "sip"
    server = {"sip_allowed": False} if case == "feed not in the plan" else {}
    with LocalExchange(feed(["AAA", "BTC/USD", "ETH/USD"]), key=KEY, secret=SECRET, **server) as ex:
        trader = Trader(tmp_path, plan_text(tmp_path, ex, pg_dsn, symbols, **source), environ=environ)
        try:
            code = trader.wait()
        finally:
            trader.close()
    text = trader.text
    assert code != 0
    said = [ln for ln in text.splitlines() if ln.startswith(("error:", "producer:"))]
    assert len(said) == 1 and expect in said[0], text[-2000:]
    if case == "feed not in the plan":
        assert "insufficient subscription (code 409)" in said[0]
    assert "Traceback" not in text, text[-4000:]
    assert SECRET not in text and SECRET[::-1] not in text


# -- the market calendar -----------------------------------------------------------------------------


def _ny(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()) * NS


def test_on_a_holiday_trader_once_says_when_the_half_day_opens_and_exits(tmp_path, pg_dsn):
    # Thanksgiving 2024 (NYSE rules of the exchange's calendar): closed; Friday closes at 13:00.
    ex = LocalExchange(
        feed(STOCKS), key=KEY, secret=SECRET, start_feed=False, epoch_ns=_ny("2024-11-28T10:00")
    )
    with ex:
        plan = plan_text(tmp_path, ex, pg_dsn, STOCKS, duration='"market"')
        trader = Trader(tmp_path, plan, "--once")
        try:
            code = trader.wait()
        finally:
            trader.close()
    assert code == 0, trader.text[-2000:]
    assert (
        "market closed; no session on Thu 2024-11-28 (market holiday); next session opens Fri 2024-11-29 09:30 "
        "New York, closes 13:00 (early close 13:00); in 23h 30m" in trader.text
    )
    assert "--once: not waiting for the open" in trader.text and not trader.summary.exists()


def test_a_half_day_session_ends_at_the_early_close(tmp_path, pg_dsn):
    cal = {"half_days": {"2024-07-03": "13:00"}}
    ex = LocalExchange(
        feed(STOCKS),
        key=KEY,
        secret=SECRET,
        start_feed=False,
        epoch_ns=_ny("2024-07-03T12:59:54"),
        calendar=MarketCalendar(**cal),
    )
    with ex:
        plan = plan_text(tmp_path, ex, pg_dsn, STOCKS, duration='"market"')
        trader = Trader(tmp_path, plan)
        try:
            code = trader.wait(timeout=90)
        finally:
            trader.close()
    assert code == 0, trader.text[-2000:]
    assert "market open until Wed 2024-07-03 13:00 New York (early close 13:00)" in trader.text
    assert trader.json()["end_reason"] == "market close"


async def test_the_calendar_session_comes_from_the_local_servers_clock_and_calendar():
    cal = MarketCalendar(holidays=["2024-03-13"], half_days={"2024-03-14": "12:30"}, rules=False)
    with LocalExchange(
        feed(STOCKS), key=KEY, secret=SECRET, start_feed=False, epoch_ns=_ny("2024-03-13T11:00"), calendar=cal
    ) as ex:
        data = AlpacaData(Endpoints(ex.http_url, ex.ws_url, ex.http_url), Credentials(KEY, SECRET))
        s = await calendar_session(data)
    assert not s.open_now and s.start == _ny("2024-03-14T09:30") and s.end == _ny("2024-03-14T12:30")
    assert s.holidays == (datetime(2024, 3, 13).date(),) and s.early_close


# -- scanners on the real universe ------------------------------------------------------------------


class Cheap(Scanner):
    """Shortable, easy-to-borrow stocks under $200 by their snapshot's latest trade."""

    def scan(self, ctx):
        assert threading.current_thread() is not threading.main_thread()  # REST kept off the event loop
        stocks = [s for s, i in ctx.universe.items() if i.asset_class == "us_equity" and i.shortable]
        snaps = ctx.snapshots(stocks + ["BTC/USD"])
        self.snaps = snaps
        return sorted(s for s in stocks if snaps[s].price is not None and snaps[s].price < 200)


async def test_scanners_see_alpacas_assets_and_snapshots():
    symbols = [f"S{i:03d}" for i in range(250)] + ["BTC/USD"]  # more than one snapshot batch
    with LocalExchange(feed(symbols, rate=2000), key=KEY, secret=SECRET) as ex:
        data = AlpacaData(Endpoints(ex.http_url, ex.ws_url, ex.http_url), Credentials(KEY, SECRET))
        eventually(lambda: len(data.snapshots(["S000"])) == 1, 20, "a first snapshot")
        assets = await asyncio.to_thread(data.assets)
        universe = asset_infos(assets)
        scanner = Cheap("cheap", Cheap.Config())
        runner = ScannerRunner([ScheduledScanner(scanner, None, ())], universe, data.snapshots)
        ((_, picked),) = await runner.run_due(time.time_ns())
    assert universe["BTC/USD"].asset_class == "crypto" and not universe["BTC/USD"].shortable
    shortable = {s for s, i in universe.items() if i.asset_class == "us_equity" and i.shortable}
    assert shortable and len(shortable) < 250  # the simulator marks some stocks not shortable
    assert set(scanner.snaps) == shortable | {"BTC/USD"}  # every symbol answered, batches included
    snap = scanner.snaps["BTC/USD"]
    assert snap.price and snap.bid and snap.ask and snap.daily_bar is not None
    expected = sorted(s for s in shortable if scanner.snaps[s].price < 200)
    assert picked == expected and picked


# -- warm-up from stock_ohlc when it is fresh ----------------------------------------------------------


async def test_warm_up_reads_fresh_stock_ohlc_and_asks_alpaca_for_the_rest(pg_dsn):
    import asyncpg

    now = time.time_ns()
    last = now - now % MINUTE - MINUTE
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = []
        for k in range(150):
            t = datetime.fromtimestamp((last - k * MINUTE) / NS, NY)
            rows.append(("AAA", t, 1.0 + k, 2.0 + k, 0.5 + k, 1.5 + k, 100.0))
            rows.append(("BBB", t - timedelta(hours=2), 1.0, 2.0, 0.5, 1.5, 1.0))
        await conn.copy_records_to_table(
            "stock_ohlc",
            records=rows,
            columns=["symbol", "symbol_date", "open", "high", "low", "close", "volume"],
        )
    finally:
        await conn.close()
    with LocalExchange(feed(["AAA", "BBB", "BTC/USD"]), key=KEY, secret=SECRET) as ex:
        ep = Endpoints(ex.http_url, ex.ws_url, ex.http_url)
        got = await History(HistorySource(ep, Credentials(KEY, SECRET), 100, pg_dsn)).warm(
            ["AAA", "BBB", "BTC/USD"], now
        )
    assert got.from_db == {"AAA"}  # BBB's stored bars are two hours old: not fresh, so Alpaca's are used
    assert [r[0] for r in got.bars["AAA"]] == [last - k * MINUTE for k in range(99, -1, -1)]
    assert got.bars["AAA"][-1][4] == 1.5  # the stored close, not a simulated one
    assert len(got.bars["BBB"]) == 100 and len(got.bars["BTC/USD"]) == 100 and not got.failed
