"""`trader` with source and broker both on liu's local exchange (subprocess, real sockets, alpaca-py's real
TradingClient and TradingStream in the gateway process, real PostgreSQL): two consumers, market, limit and
bracket orders and a rejection; every order and fill in PostgreSQL equals what the exchange reports, the
positions equal the exchange's, and the keys appear in no output."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import defaultdict
from pathlib import Path

import asyncpg
import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

from liu.brokers.alpaca.ids import consumer_of
from liu.sources.exchange.local import LocalExchange
from liu.sources.sim import SimFeed
from tests.alpaca_helpers import Trader, env
from tests.helpers import eventually, trader_command

pytestmark = pytest.mark.slow
KEY, SECRET = "PKGWE2EKEY", "gw-e2e-secret-never-printed-5521"
SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]

STRATEGY = '''
import json, os
from liu.strategy import Strategy, StrategyConfig


class Cfg(StrategyConfig):
    out: str


class Mixed(Strategy):
    """Per symbol: a market buy, then a marketable limit buy, then a bracket; one order for an unknown symbol."""

    Config = Cfg

    def on_start(self, ctx):
        self.n = {}
        self.bad = False

    def _note(self, **rec):
        rec["pid"] = os.getpid()
        with open(self.config.out, "a") as f:
            f.write(json.dumps(rec) + "\\n")

    def on_bar(self, bar, ctx):
        k = self.n[bar.symbol] = self.n.get(bar.symbol, 0) + 1
        out = []
        if k == 1:
            out.append(ctx.buy(bar.symbol, 2))
            if not self.bad:
                self.bad = True
                out.append(ctx.buy("NOPE", 1))
        elif k == 2:
            out.append(ctx.buy(bar.symbol, 1, limit=round(bar.close * 1.05, 2)))
        elif k == 3:
            out.append(ctx.buy(bar.symbol, 3, stop=round(bar.close * 0.5, 2), target=round(bar.close * 3, 2)))
        return out

    def on_order(self, order, ctx):
        self._note(kind="order", id=order.client_order_id, status=order.status, reason=order.reason,
                   symbol=order.symbol)

    def on_fill(self, fill, ctx):
        self._note(kind="fill", id=fill.client_order_id, qty=fill.qty, price=fill.price, symbol=fill.symbol)
'''


def plan_text(tmp_path: Path, ex: LocalExchange, dsn: str, duration: int = 12) -> str:
    (tmp_path / "mixed.py").write_text(STRATEGY)
    return f"""
[session]
duration = {duration}
[source]
kind = "alpaca"
symbols = {json.dumps(SYMBOLS)}
bars = "stream"
[alpaca]
data_url = "{ex.http_url}"
stream_url = "{ex.ws_url}"
trading_url = "{ex.server.trading_url}"
timeout = 5
[broker]
kind = "alpaca"
[consumers]
count = 2
[database]
dsn = "{dsn}"
[[strategies]]
name = "mixed"
file = "{tmp_path / "mixed.py"}"
class = "Mixed"
[strategies.config]
out = "{tmp_path / "notes.jsonl"}"
"""


async def _rows(dsn: str, batch: str) -> tuple[list, list]:
    conn = await asyncpg.connect(dsn)
    try:
        orders = await conn.fetch("select * from orders where batch_id = $1", batch)
        fills = await conn.fetch("select * from trades where batch_id = $1", batch)
    finally:
        await conn.close()
    return orders, fills


def test_trader_on_the_exchange_orders_and_fills_equal_the_exchanges(tmp_path, pg_dsn):
    feed = SimFeed(symbols=SYMBOLS, rate=400, seed=5, kinds={"t": 0.6, "q": 0.2, "b": 0.2})
    with LocalExchange(feed, key=KEY, secret=SECRET, trading=True) as ex:
        trader = Trader(tmp_path, plan_text(tmp_path, ex, pg_dsn), environ=env(SECRET, KEY))
        try:
            code = trader.wait(180)
        finally:
            trader.close()
        text = trader.text
        (tmp_path / "trader.out").write_text(text)  # kept for a failing run's reader
        assert code == 0, text[-4000:]
        client = TradingClient(KEY, SECRET, raw_data=True, url_override=ex.server.trading_url)
        ex_orders = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500, nested=True))
        ex_positions = {p["symbol"]: float(p["qty"]) for p in client.get_all_positions()}
    batch = trader.json()["batch_id"]
    orders, fills = asyncio.run(_rows(pg_dsn, batch))
    by_cid = {o["client_order_id"]: o for o in orders}
    entries = [o for o in ex_orders if o["client_order_id"].startswith(batch)]
    assert len(entries) == len(SYMBOLS) * 3, [o["client_order_id"] for o in entries]  # one per client id
    filled: dict[str, float] = defaultdict(float)
    for f in fills:
        filled[f["client_order_id"]] += f["qty"]
    for e in entries:
        row = by_cid[e["client_order_id"]]
        assert row["filled_qty"] == float(e["filled_qty"]), e["client_order_id"]
        assert filled[e["client_order_id"]] == float(e["filled_qty"])
        if float(e["filled_qty"]):
            assert row["filled_avg_price"] == pytest.approx(float(e["filled_avg_price"]))
        assert row["status"] == {"canceled": "cancelled", "new": "accepted"}.get(e["status"], e["status"])
        if e.get("order_class") == "bracket":
            assert sorted(row["legs"]) == sorted(
                [row["client_order_id"] + "-sl", row["client_order_id"] + "-tp"]
            )
    # positions: what liu's fills add up to equals the exchange's
    held: dict[str, float] = defaultdict(float)
    for f in fills:
        held[f["symbol"]] += f["qty"] if f["side"] == "buy" else -f["qty"]
    assert {s: q for s, q in held.items() if q} == ex_positions
    # the unknown symbol's rejection reached on_order with the exchange's message
    notes = [json.loads(x) for x in (tmp_path / "notes.jsonl").read_text().splitlines()]
    rejected = [n for n in notes if n["kind"] == "order" and n["status"] == "rejected"]
    assert [(n["symbol"], n["reason"]) for n in rejected] == [
        ("NOPE", '422 asset "NOPE" not found')
    ] * 2  # 1/consumer
    assert sum(n["qty"] for n in notes if n["kind"] == "fill") == sum(filled.values())
    # each order's news reached the consumer process that placed it, and only that one
    pids = defaultdict(set)
    for n in notes:
        pids[consumer_of(n["id"])].add(n["pid"])
    assert len(pids[0]) == len(pids[1]) == 1 and pids[0] != pids[1], dict(pids)
    logs = text + "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.log"))
    assert KEY not in logs and SECRET not in logs


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        trader_command(*args, "--plan", str(tmp_path / "tradeplan.toml")),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env(SECRET, KEY),
        timeout=60,
    )


def test_cli_account_positions_orders_and_flatten_without_a_session(tmp_path, pg_dsn):
    feed = SimFeed(symbols=SYMBOLS, rate=400, seed=6, kinds={"t": 0.8, "q": 0.2})
    with LocalExchange(feed, key=KEY, secret=SECRET, trading=True) as ex:
        (tmp_path / "tradeplan.toml").write_text(plan_text(tmp_path, ex, pg_dsn))
        client = TradingClient(KEY, SECRET, raw_data=True, url_override=ex.server.trading_url)
        client.submit_order(MarketOrderRequest(symbol="AAA", qty=7, side="buy", time_in_force="day"))
        client.submit_order(
            LimitOrderRequest(
                symbol="BBB",
                qty=1,
                side="buy",
                time_in_force="day",
                limit_price=0.01,
                client_order_id="rest-1",
            )
        )
        eventually(lambda: {p["symbol"] for p in client.get_all_positions()} == {"AAA"}, 15, "AAA bought")
        outs = []
        acct = _cli(tmp_path, "account")
        outs.append(acct)
        assert acct.returncode == 0, acct.stderr
        assert "buying_power" in acct.stdout and "ACTIVE" in acct.stdout
        pos = _cli(tmp_path, "positions")
        outs.append(pos)
        assert pos.returncode == 0 and "AAA" in pos.stdout and " 7 " in pos.stdout, pos.stdout
        opn = _cli(tmp_path, "orders", "--open")
        outs.append(opn)
        assert "rest-1" in opn.stdout and "AAA" not in opn.stdout, opn.stdout
        flat = _cli(tmp_path, "flatten")
        outs.append(flat)
        assert flat.returncode == 0, flat.stdout + flat.stderr
        assert "no running trader" in flat.stdout and "AAA: closing order sent" in flat.stdout
        eventually(lambda: client.get_all_positions() == [], 15, "positions closed")
        assert client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN)) == []
    bad = tmp_path / "paper"
    bad.mkdir()
    (bad / "tradeplan.toml").write_text(
        plan_text(bad, ex, pg_dsn).replace('kind = "alpaca"\n[consumers]', 'kind = "paper"\n[consumers]')
    )
    paper = _cli(bad, "positions")
    outs.append(paper)
    assert paper.returncode == 2 and 'kind = "paper"' in paper.stdout, paper.stdout
    for p in outs:
        assert KEY not in p.stdout + p.stderr and SECRET not in p.stdout + p.stderr


KEEPER = '''
import json, os
from liu.strategy import Strategy, StrategyConfig


class Cfg(StrategyConfig):
    out: str


class Keeper(Strategy):
    """On each symbol's first bar: note what it holds; when it holds nothing, buy 2 and rest a gtc bid."""

    Config = Cfg

    def on_start(self, ctx):
        self.seen = set()

    def on_bar(self, bar, ctx):
        if bar.symbol in self.seen:
            return []
        self.seen.add(bar.symbol)
        held, resting = ctx.position(bar.symbol), [o.client_order_id for o in ctx.open_orders(bar.symbol)]
        with open(self.config.out, "a") as f:
            f.write(json.dumps({"symbol": bar.symbol, "position": held, "open": resting}) + "\\n")
        if held or resting:
            return []
        return [ctx.buy(bar.symbol, 2), ctx.buy(bar.symbol, 1, limit=0.01, tif="gtc")]
'''


def test_restart_after_sigkill_restores_positions_and_open_orders_before_any_order(tmp_path, pg_dsn):
    feed = SimFeed(symbols=SYMBOLS, rate=400, seed=8, kinds={"t": 0.6, "q": 0.2, "b": 0.2})
    (tmp_path / "keeper.py").write_text(KEEPER)
    with LocalExchange(feed, key=KEY, secret=SECRET, trading=True) as ex:
        plan = (
            plan_text(tmp_path, ex, pg_dsn, duration=120)
            .replace(str(tmp_path / "mixed.py"), str(tmp_path / "keeper.py"))
            .replace('class = "Mixed"', 'class = "Keeper"')
        )
        client = TradingClient(KEY, SECRET, raw_data=True, url_override=ex.server.trading_url)

        def settled() -> bool:
            held = {p["symbol"]: float(p["qty"]) for p in client.get_all_positions()}
            resting = {o["symbol"] for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))}
            return held == dict.fromkeys(SYMBOLS, 2.0) and resting == set(SYMBOLS)

        first = Trader(tmp_path, plan, environ=env(SECRET, KEY))
        try:
            eventually(settled, 60, "every symbol held and bid at the exchange")
        finally:
            first.close()  # SIGKILL to the whole tree: trader, consumers, gateway
        (tmp_path / "notes.jsonl").rename(tmp_path / "notes-1.jsonl")
        before = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))
        second = Trader(tmp_path, plan.replace("duration = 120", "duration = 8"), environ=env(SECRET, KEY))
        try:
            code = second.wait(120)
        finally:
            second.close()
        text = second.text
        (tmp_path / "trader-2.out").write_text(text)
        assert code == 0, text[-4000:]
        after = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))
    assert len(after) == len(before) == 2 * len(SYMBOLS)  # nothing sent twice, nothing new
    resting = {o["symbol"]: o["client_order_id"] for o in after if o["status"] == "new"}
    notes = [json.loads(x) for x in (tmp_path / "notes.jsonl").read_text().splitlines()]
    assert sorted(n["symbol"] for n in notes) == SYMBOLS
    for n in notes:  # the strategy saw its position and its resting order on its first bar
        assert n["position"] == 2.0 and n["open"] == [resting[n["symbol"]]], n
    assert "batch" in text and "did not end cleanly" in text  # the crashed runs were closed
    assert text.count("back to strategy mixed") + text.count("back to mixed") >= 2 * len(SYMBOLS), text[
        -3000:
    ]
    assert KEY not in text and SECRET not in text


def test_a_position_liu_did_not_open_stops_the_start_when_the_plan_says_so(tmp_path, pg_dsn):
    feed = SimFeed(symbols=SYMBOLS, rate=400, seed=9, kinds={"t": 0.8, "q": 0.2})
    with LocalExchange(feed, key=KEY, secret=SECRET, trading=True) as ex:
        client = TradingClient(KEY, SECRET, raw_data=True, url_override=ex.server.trading_url)
        client.submit_order(MarketOrderRequest(symbol="CCC", qty=4, side="buy", time_in_force="day"))
        eventually(lambda: client.get_all_positions(), 15, "CCC bought by hand")
        plan = plan_text(tmp_path, ex, pg_dsn).replace(
            'kind = "alpaca"\n[consumers]', 'kind = "alpaca"\nunexplained = "stop"\n[consumers]'
        )
        trader = Trader(tmp_path, plan, environ=env(SECRET, KEY))
        try:
            code = trader.wait(120)
        finally:
            trader.close()
        text = trader.text
        assert code == 2, text[-3000:]
        assert (
            "position CCC: Alpaca holds 4, liu's orders explain 0 (no liu order); adopted by no strategy"
            in text
        )
        assert 'positions no strategy explains: CCC ([broker] unexplained = "stop"' in text
        assert (
            client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))[0]["symbol"] == "CCC"
        )
        assert (
            len(client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))) == 1
        )  # none sent
        assert KEY not in text and SECRET not in text
