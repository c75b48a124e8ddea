"""Faults of the market: Alpaca's side (liu's local exchange, real processes and sockets) going away.

1. The market-data server SIGKILLed and started again on its port: the producer reconnects with backoff,
   the consumers back-fill the gap from the restarted server's history, events flow again, and every event
   is accounted for.
2. Trading through the Alpaca gateway: the trade_updates stream dropped while orders fill, then the
   gateway SIGKILLed while an order's POST is pending at the exchange. After the next start's
   reconciliation, every order the exchange has is in PostgreSQL once with its client order id, every fill
   the exchange made is a `trades` row once, and the positions match.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import psutil
import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest

from liu.sources.alpaca.client import AlpacaData, Credentials, Endpoints
from liu.sources.exchange.local import LocalExchange
from liu.sources.sim import SimFeed
from tests.fault_helpers import (
    fetch,
    free_port_pair,
    holding_connections,
    start_exchange,
    start_trader,
    wait_trader,
)
from tests.helpers import eventually, kill_tree

pytestmark = [pytest.mark.slow, pytest.mark.db]

NS = 1_000_000_000
MINUTE = 60 * NS
KEY, SECRET = "PKFAULTMARKET", "fault-market-secret-never-printed-9113"
SYMBOLS = ["DDD", "BTC/USD"]  # a stock and a crypto pair, one on each of the two consumers

TAPE = '''
import json, os, time
from liu.strategy import Strategy, StrategyConfig


class Cfg(StrategyConfig):
    out: str
    symbols: list[str] = []


class Tape(Strategy):
    """Notes a trade of each symbol every 0.2 s (its data time); at the end, each symbol's bar history."""

    Config = Cfg

    def on_start(self, ctx):
        self.last = {}

    def on_trade(self, trade, ctx):
        now = time.monotonic()
        if now - self.last.get(trade.symbol, 0.0) >= 0.2:
            self.last[trade.symbol] = now
            with open(self.config.out, "a") as f:
                f.write(json.dumps({"symbol": trade.symbol, "t": ctx.now}) + "\\n")
        return None

    def on_stop(self, ctx):
        with open(self.config.out + ".bars", "a") as f:
            for sym in sorted(s for s in self.config.symbols if ctx.last_price(s) is not None):  # its own
                b = ctx.bars(sym)
                f.write(json.dumps({"symbol": sym, "ts": [int(t) for t in b.ts], "close": list(map(float, b.close))})
                        + "\\n")
'''


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _tape_plan(tmp_path: Path, port: int, dsn: str) -> str:
    (tmp_path / "tape.py").write_text(TAPE)
    base = f"127.0.0.1:{port}"
    return f"""
[session]
duration = 900
[source]
kind = "alpaca"
symbols = {json.dumps(SYMBOLS)}
bars = "trades"
rate = 300
[alpaca]
data_url = "http://{base}"
stream_url = "ws://{base}"
trading_url = "http://{base}"
timeout = 10
[consumers]
count = 2
[dashboard]
enabled = false
[database]
dsn = "{dsn}"
[[strategies]]
name = "tape"
file = "{tmp_path / "tape.py"}"
class = "Tape"
[strategies.config]
out = "{tmp_path / "tape.jsonl"}"
symbols = {json.dumps(SYMBOLS)}
"""


def test_market_data_server_killed_and_restarted_reconnects_and_back_fills_the_gap(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port_pair()
    plan = _tape_plan(tmp_path, port, pg_dsn)
    (tmp_path / "tradeplan.toml").write_text(plan)
    # The exchange serves a simulator of the plan's symbols (same seed each start) with these local keys.
    ex_env = dict(os.environ) | {"LIU_EXCHANGE_KEY_ID": KEY, "LIU_EXCHANGE_SECRET_KEY": SECRET}
    ex_args = ("--plan", str(tmp_path / "tradeplan.toml"), "--port", str(port))
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)  # the trader reads its keys from the environment
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    tape = tmp_path / "tape.jsonl"
    started = []
    trader = None
    try:
        started.append(start_exchange(tmp_path, ex_env, "exchange-1", *ex_args))
        launched = time.time_ns()
        trader = start_trader(tmp_path, plan, "trader")
        eventually(
            lambda: holding_connections(trader.pid, port, 2), 90, "the producer's stock and crypto streams"
        )
        eventually(lambda: {r["symbol"] for r in _lines(tape)} == set(SYMBOLS), 60, "trades of both symbols")

        # SIGKILL the market-data server: no close frame, the port refuses connections.
        first = started[0]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        killed = time.time_ns()
        err = tmp_path / "trader.err"
        eventually(lambda: "lost (" in err.read_text(), 30, "the producer noticing the dead server")
        # Down until a whole minute has gone by: the minute of the kill is seen only in part live, the next
        # one not at all, so the back-fill has a bar to add (not only one to revise).
        back_at = (killed // MINUTE + 2) * MINUTE + 3 * NS
        eventually(lambda: time.time_ns() >= back_at, 130, "a missed minute", interval=0.2)
        assert trader.poll() is None, err.read_text()[-3000:]  # the session waits for its market data
        restarted = time.time_ns()
        started.append(start_exchange(tmp_path, ex_env, "exchange-2", *ex_args))

        eventually(lambda: "back-fill:" in err.read_text(), 60, "the back-fill after the reconnect")
        for sym in SYMBOLS:  # events from the restarted server reach the strategy
            eventually(
                lambda sym=sym: any(r["symbol"] == sym and r["t"] >= restarted for r in _lines(tape)),
                60,
                f"{sym} trades after the restart",
            )
        trader.send_signal(signal.SIGINT)
        code = wait_trader(trader, tmp_path, "trader", timeout=120)
        # What the restarted server's history says about the minutes it was down (what the back-fill read).
        data = AlpacaData(
            Endpoints(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
            Credentials(KEY, SECRET),
        )
        down = (killed - killed % MINUTE, restarted - restarted % MINUTE)  # [minute of the kill, restart's)
        served = data.bars(SYMBOLS, down[0], down[1] - 1)
    finally:
        for p in [trader, *started]:
            if p is not None and p.poll() is None:
                kill_tree(p.pid)
                p.wait()
    log = (tmp_path / "trader.err").read_text()
    assert code == 0, log[-4000:]
    summary = json.loads((tmp_path / "trader.json").read_text())

    # Reconnected with backoff, the gap reported (at least the minute and more it was down).
    producer = summary["producer"]
    assert producer["reconnects"] >= 1, producer
    assert summary["gaps"] and max(summary["gaps"]) >= 60, summary["gaps"]
    assert "back-filling and resubscribed" in log

    # Every event the producer sent is accounted for, per consumer, and events flowed on both.
    consumers = summary["consumers"]
    assert len(consumers) == len(summary["sent_per_consumer"]) == 2
    for c, sent in zip(consumers, summary["sent_per_consumer"], strict=True):
        assert c["received"] == sent, (c["index"], c["received"], sent)
        assert c["received"] == c["processed"] + c["stale"] + c["malformed"] + c["lost"], c
        assert c["lost"] == 0 and c["processed"] > 0, c
    assert sum(summary["sent_per_consumer"]) == producer["events"]

    # The consumers back-filled the gap: the missed minute's bars were added (crypto trades every minute).
    warm = [c["warmup"] for c in consumers]
    assert sum(w["backfills"] for w in warm) >= 1 and sum(w["filled_bars"] for w in warm) >= 1, warm
    assert "BTC/USD" not in {s for w in warm for s in w["unfilled"]}, warm

    # The bars of the minutes the server was down are the restarted server's (its simulator's past: not what
    # the killed one would have streamed, which nobody can know), in each symbol's history with their close.
    # A stock outside market hours has none there; the crypto pair has every minute.
    history = {
        r["symbol"]: dict(zip(r["ts"], r["close"], strict=True)) for r in _lines(tmp_path / "tape.jsonl.bars")
    }
    assert sorted(history) == sorted(SYMBOLS)
    crypto_minutes = [row[0] for row in served.get("BTC/USD", [])]
    assert crypto_minutes == list(range(down[0], down[1], MINUTE)), (down, crypto_minutes)
    for sym in SYMBOLS:
        for row in served.get(sym, []):
            assert history[sym].get(row[0]) == pytest.approx(row[4]), (sym, row, history[sym].get(row[0]))
    # The crypto pair's bar history has no hole: one bar a minute from the minute trader started on, through
    # the minutes the server was down.
    live = sorted(t for t in history["BTC/USD"] if t >= launched - launched % MINUTE)
    assert live and live[0] <= down[0] and live[-1] >= down[1] - MINUTE, (down, live)
    assert all(b - a == MINUTE for a, b in itertools.pairwise(live)), live
    assert SECRET not in log


# -- 2. the gateway: trade_updates dropped during fills, then SIGKILLed mid-order -----------------------------

PULSE = '''
import json, os, time
from liu.strategy import Strategy, StrategyConfig


class Cfg(StrategyConfig):
    every: float = 0.5
    pause: str  # once this file exists: no more orders
    notes: str  # each fill it hears of, a line


class Pulse(Strategy):
    """Trades each symbol continually: every `every` seconds, when it has no open order there, buys a share,
    or sells all it holds once that is 3."""

    Config = Cfg

    def on_start(self, ctx):
        self.next = {}

    def on_fill(self, fill, ctx):
        with open(self.config.notes, "a") as f:
            f.write(json.dumps({"id": fill.client_order_id, "qty": fill.qty}) + "\\n")
        return None

    def on_trade(self, trade, ctx):
        now = time.monotonic()
        if now < self.next.get(trade.symbol, 0.0) or ctx.open_orders(trade.symbol):
            return None
        if os.path.exists(self.config.pause):
            return None
        self.next[trade.symbol] = now + self.config.every
        held = ctx.position(trade.symbol)
        if held >= 3:
            return [ctx.sell(trade.symbol, held)]
        return [ctx.buy(trade.symbol, 1)]
'''

TRADED = ["AAA", "DDD"]  # one on each consumer


def _pulse_plan(tmp_path: Path, ex: LocalExchange, dsn: str) -> str:
    (tmp_path / "pulse.py").write_text(PULSE)
    return f"""
[session]
duration = 600
[source]
kind = "alpaca"
symbols = {json.dumps(TRADED)}
bars = "trades"
[alpaca]
data_url = "{ex.http_url}"
stream_url = "{ex.ws_url}"
trading_url = "{ex.server.trading_url}"
timeout = 5
[broker]
kind = "alpaca"
[consumers]
count = 2
[dashboard]
enabled = false
[database]
dsn = "{dsn}"
[[strategies]]
name = "pulse"
file = "{tmp_path / "pulse.py"}"
class = "Pulse"
[strategies.config]
pause = "{tmp_path / "pause"}"
notes = "{tmp_path / "fills.jsonl"}"
"""


UNSETTLED = (  # journaled orders whose end the journal never heard of
    "SELECT client_order_id FROM broker_orders WHERE status NOT IN ('filled', 'cancelled', 'expired', 'rejected')"
)


def _gateway_pid(log: str) -> int | None:
    m = re.search(r"Alpaca gateway started \(pid (\d+)\)", log)
    return int(m.group(1)) if m else None


def _heard_all(ex, acct, before: set[str], notes: Path) -> bool:
    """No order open at the exchange but those in `before`, and the strategy heard of every fill of the others."""
    orders = ex.on_loop(
        lambda: [(r.client_order_id, r.order.filled_qty, r.is_open) for r in acct.orders.values()]
    )
    heard: dict[str, float] = {}
    for n in _lines(notes):
        heard[n["id"]] = heard.get(n["id"], 0.0) + n["qty"]
    return all(
        not is_open and heard.get(cid, 0.0) == filled for cid, filled, is_open in orders if cid not in before
    )


def _fills(acct) -> list[tuple[str, float, float]]:
    """Every fill the exchange reported on trade_updates: (client order id, qty, price)."""
    return [
        (e["order"]["client_order_id"], float(e["qty"]), float(e["price"]))
        for e in acct.events
        if e["event"] in ("fill", "partial_fill")
    ]


def test_gateway_stream_dropped_during_fills_and_gateway_killed_mid_order_no_lost_or_duplicate_order(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    feed = SimFeed(symbols=TRADED, rate=400, seed=12, kinds={"t": 0.8, "q": 0.2})
    procs = []
    with LocalExchange(feed, key=KEY, secret=SECRET, trading=True) as ex:
        acct = ex.on_loop(ex.trading.account, KEY)  # touched on the exchange's loop only (ex.on_loop)
        client = TradingClient(KEY, SECRET, raw_data=True, url_override=ex.server.trading_url)
        plan = _pulse_plan(tmp_path, ex, pg_dsn)
        err = tmp_path / "first.err"
        try:
            first = start_trader(tmp_path, plan, "first")
            procs.append(first)
            eventually(lambda: len(ex.on_loop(_fills, acct)) >= 6, 90, "the first fills at the exchange")

            # (a) Drop the trade_updates stream while orders fill, until a drop window held a fill (the stream
            # reconnects within about a second): fills the gateway must find by reading orders back.
            missed: list = []
            for _attempt in range(10):
                sweeps = err.read_text().count("sweep: ")  # the gateway reads orders back after a reconnect
                assert ex.on_loop(ex.trading.drop_trade_streams) == 1
                seen = []  # the exchange's event count at each look that found no listener (read on its loop)

                def back(seen: list = seen) -> bool:
                    n, listening = ex.on_loop(lambda: (len(acct.events), len(acct.listeners)))
                    if not listening:
                        seen.append(n)
                    return bool(listening and seen)

                eventually(back, 60, "trade_updates back after the drop")
                window = ex.on_loop(lambda a=seen[0], b=seen[-1]: list(acct.events)[a:b])
                missed += [e for e in window if e["event"] in ("fill", "partial_fill")]
                if missed:
                    break
            assert missed, "no fill happened while trade_updates was away, in 10 drops"
            eventually(
                lambda: err.read_text().count("sweep: ") > sweeps, 30, "the gateway's sweep after reconnect"
            )

            # (b) The next order POST is answered 60 s late (the order exists at once): SIGKILL the gateway
            # process while that POST is pending.
            gateway = int(eventually(lambda: _gateway_pid(err.read_text()), 10, "the gateway's pid"))
            assert gateway in {c.pid for c in psutil.Process(first.pid).children(recursive=True)}
            n0 = ex.on_loop(lambda: (ex.trading.faults.delay_post(60.0, 1), len(acct.orders))[1])
            eventually(
                lambda: ex.on_loop(lambda: ex.trading.faults.delay_times == 0 and len(acct.orders) > n0),
                30,
                "an order POST held",
            )
            os.kill(gateway, signal.SIGKILL)
            eventually(
                lambda: "the Alpaca gateway died" in err.read_text(), 30, "the daemon seeing the gateway die"
            )
            # What was in flight fills at the exchange with nobody listening.
            eventually(
                lambda: not ex.on_loop(lambda: [r for r in acct.orders.values() if r.is_open]),
                30,
                "every order at the exchange filled",
            )
            first.send_signal(signal.SIGTERM)
            code1 = wait_trader(first, tmp_path, "first", timeout=120)
            # Orders open when the gateway died (the held POST's among them; trade_updates may have said `new`
            # before the POST's answer would have): the journal never heard how they ended; the exchange did.
            exchange_ids = ex.on_loop(lambda: set(acct.by_client))
            pending = [
                r["client_order_id"] for r in fetch(pg_dsn, UNSETTLED) if r["client_order_id"] in exchange_ids
            ]
            assert pending, "no order was open when the gateway died"

            # The next start on the same plan and database: it reconciles, then trades again.
            before = {
                o["client_order_id"]
                for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))
            }
            second = start_trader(tmp_path, plan, "second")
            procs.append(second)
            eventually(
                lambda: len([f for f in ex.on_loop(_fills, acct) if f[0] not in before]) >= 4,
                90,
                "fills of the second session's orders",
            )
            # Pause the strategy and stop only once the consumers heard of every fill of the session's orders:
            # what reaches the gateway after they have gone is the next start's to record, as above.
            (tmp_path / "pause").touch()
            eventually(lambda: _heard_all(ex, acct, before, tmp_path / "fills.jsonl"), 60, "a quiet account")
            second.send_signal(signal.SIGTERM)
            code2 = wait_trader(second, tmp_path, "second", timeout=120)
            ex_orders = client.get_orders(
                GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500, nested=False)
            )
            positions = {p["symbol"]: float(p["qty"]) for p in client.get_all_positions()}
            fills = ex.on_loop(_fills, acct)
        finally:
            for p in procs:
                if p.poll() is None:
                    kill_tree(p.pid)
                    p.wait()
    log1, log2 = err.read_text(), (tmp_path / "second.err").read_text()
    assert code1 == 0, log1[-4000:]
    assert "the Alpaca gateway closed its pipe" in log1 and "trading halted" in log1
    assert code2 == 0, log2[-4000:]
    assert len(ex_orders) < 500  # one page: every order the exchange has
    db_orders = fetch(pg_dsn, "SELECT * FROM orders")
    journal = fetch(pg_dsn, "SELECT * FROM broker_orders")
    trades = fetch(pg_dsn, "SELECT * FROM trades")

    # No client order id twice at the exchange; every order there is liu's, journaled and recorded.
    at_exchange = Counter(o["client_order_id"] for o in ex_orders)
    assert not [c for c, n in at_exchange.items() if n > 1]
    by_cid = {r["client_order_id"]: r for r in db_orders}
    jby_cid = {r["client_order_id"]: r for r in journal}
    assert set(at_exchange) <= set(by_cid) and set(at_exchange) <= set(jby_cid)
    # What is not at the exchange never went there: refused in liu (the halt) or never sent by the gateway.
    for cid in set(by_cid) - set(at_exchange):
        assert by_cid[cid]["status"] == "rejected", dict(by_cid[cid])
    for cid in set(jby_cid) - set(at_exchange):
        assert jby_cid[cid]["status"] == "rejected", dict(jby_cid[cid])

    # Every order's state in PostgreSQL is the exchange's, and each fill the exchange made is a trades row
    # once (the quantity, and the price within the fill's average). All differences are listed together.
    filled: dict[str, list] = defaultdict(list)
    for r in trades:
        filled[r["client_order_id"]].append((float(r["qty"]), float(r["price"])))
    reported: dict[str, list] = defaultdict(list)
    for cid, qty, price in fills:
        reported[cid].append((qty, price))
    problems = []
    for o in ex_orders:
        cid = o["client_order_id"]
        tag = f"{cid}{' (open when the gateway died)' if cid in pending else ''}"
        qty = float(o["filled_qty"] or 0)
        status = {"canceled": "cancelled", "new": "accepted"}.get(o["status"], o["status"])
        if sum(q for q, _ in reported[cid]) != qty:
            problems.append(f"{tag}: the exchange's fills {reported[cid]} but filled_qty {qty}")
        got = filled.get(cid, [])
        if sum(q for q, _ in got) != qty:
            problems.append(f"{tag}: trades rows {got}, the exchange's fills {reported[cid]}")
        elif qty and sum(q * p for q, p in got) / qty != pytest.approx(float(o["filled_avg_price"])):
            problems.append(f"{tag}: trades rows {got}, the exchange's average price {o['filled_avg_price']}")
        row, jrow = by_cid[cid], jby_cid[cid]
        if (row["status"], row["filled_qty"]) != (status, qty):
            problems.append(
                f"{tag}: orders row {row['status']} {row['filled_qty']:g}, exchange {status} {qty:g}"
            )
        if (jrow["status"], jrow["filled_qty"]) != (status, qty):
            problems.append(
                f"{tag}: broker_orders {jrow['status']} {jrow['filled_qty']:g}, exchange {status} {qty:g}"
            )
    problems += [
        f"{cid}: trades rows of an order the exchange does not have" for cid in set(filled) - set(at_exchange)
    ]
    assert not problems, "\n".join(problems)

    # Positions: the trades rows, and the journal's fills, add up to the exchange's.
    held: dict[str, float] = defaultdict(float)
    for r in trades:
        held[r["symbol"]] += float(r["qty"]) if r["side"] == "buy" else -float(r["qty"])
    assert {s: q for s, q in held.items() if q} == positions
    journaled: dict[str, float] = defaultdict(float)
    for r in journal:
        journaled[r["symbol"]] += float(r["filled_qty"]) * (1 if r["side"] == "buy" else -1)
    assert {s: q for s, q in journaled.items() if q} == positions
    assert KEY not in log1 + log2 and SECRET not in log1 + log2
