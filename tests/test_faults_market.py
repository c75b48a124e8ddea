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
import signal
import time
from pathlib import Path

import pytest

from liu.sources.alpaca.client import AlpacaData, Credentials, Endpoints
from tests.fault_helpers import (
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
