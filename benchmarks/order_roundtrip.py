"""Order round trip: strategy return → on_fill, through the Alpaca gateway against liu's local exchange,
and through the in-process paper broker, in the same run.

Reproduce:  .venv/bin/python benchmarks/order_roundtrip.py [--orders 300] [--rate 50] [--rate-limit 200]
                [--json PATH]

Gateway path: the real gateway process (`liu.brokers.alpaca.process.gateway_main`, forkserver, one duplex
pipe, as the daemon wires it) with alpaca-py's TradingClient and TradingStream against a `LocalExchange`
with trading on 127.0.0.1 (sim feed of trades, 4 symbols, 20k events/s, so a market order fills on the next
print within ~1 ms of exchange time). This process plays the consumer: `AlpacaBroker.submit` (what the desk
calls when a strategy returns an order), then reads the pipe; the clock stops when the `Fill` comes back.
Orders are offered at `--rate` per second; `--rate-limit` is the gateway's account limit (Alpaca allows
about 200 requests a minute, so at the default the sustained rate is capped near 3.3 orders/s by design;
pass e.g. 100000 to measure the machinery itself). Paper path: `PaperBroker.submit` then the next trade
(`on_trade`) in this process, the same orders.

Figures: orders/s sustained (filled orders / seconds from first send to last fill), p50/p99/max round trip.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liu.brokers.account import Account  # noqa: E402
from liu.brokers.alpaca.broker import AlpacaBroker  # noqa: E402
from liu.brokers.alpaca.ids import order_prefix  # noqa: E402
from liu.brokers.alpaca.process import GatewayReady, GatewaySetup, gateway_main  # noqa: E402
from liu.brokers.alpaca.wire import Updates  # noqa: E402
from liu.brokers.paper import PaperBroker  # noqa: E402
from liu.events import Fill, Order  # noqa: E402
from liu.sources.exchange.local import LocalExchange  # noqa: E402
from liu.sources.sim import SimFeed  # noqa: E402

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
KEY, SECRET = "bench-key", "bench-secret"


def _figures(lat: list[float], elapsed: float, sent: int) -> dict:
    lat_ms = sorted(x * 1e3 for x in lat)
    q = statistics.quantiles(lat_ms, n=100, method="inclusive") if len(lat_ms) >= 2 else lat_ms * 99
    return {
        "orders": sent,
        "filled": len(lat_ms),
        "orders_per_s": round(len(lat_ms) / elapsed, 1) if elapsed else None,
        "p50_ms": round(q[49], 3),
        "p99_ms": round(q[98], 3),
        "max_ms": round(lat_ms[-1], 3) if lat_ms else None,
    }


def gateway_run(n: int, rate: float, rate_limit: float) -> dict:
    os.environ["LIU_BENCH_KEY"], os.environ["LIU_BENCH_SECRET"] = KEY, SECRET
    feed = SimFeed(symbols=SYMBOLS, rate=20_000, seed=1, kinds=("t",))
    with LocalExchange(feed, key=KEY, secret=SECRET, trading=True, cash=1e12) as ex:
        batch = str(uuid.uuid4())
        setup = GatewaySetup(
            ex.server.trading_url,
            True,
            10.0,
            "LIU_BENCH_KEY",
            "LIU_BENCH_SECRET",
            batch,
            None,
            1,
            ("b",),
            rate_per_minute=rate_limit,
        )
        ctx = mp.get_context("forkserver")
        mine, theirs = ctx.Pipe()
        ready_r, ready_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=gateway_main, args=(setup, [theirs], ready_w), name="bench-gateway")
        proc.start()
        theirs.close()
        ready_w.close()
        try:
            if not ready_r.poll(60):
                raise SystemExit("gateway did not start within 60 s")
            ready: GatewayReady = ready_r.recv()
            if ready.error:
                raise SystemExit(ready.error)
            mine.recv()  # Restore
            broker = AlpacaBroker(mine.send)
            sent: dict[str, float] = {}
            lat: list[float] = []

            def drain(timeout: float) -> None:
                while mine.poll(timeout):
                    msg = mine.recv()
                    now = time.perf_counter()
                    if isinstance(msg, Updates):
                        for up in broker.on_message(msg):
                            if isinstance(up, Fill) and up.client_order_id in sent:
                                lat.append(now - sent.pop(up.client_order_id))
                    timeout = 0

            prefix = order_prefix(batch, 0)
            t0 = time.perf_counter()
            for i in range(n):
                due = t0 + i / rate
                while (wait := due - time.perf_counter()) > 0:
                    drain(wait)
                o = Order(SYMBOLS[i % len(SYMBOLS)], "buy" if i % 2 == 0 else "sell", 1, strategy="b")
                o.client_order_id = f"{prefix}{i + 1}"
                sent[o.client_order_id] = time.perf_counter()
                broker.submit(o, None, time.time_ns())
            deadline = time.perf_counter() + 120
            while sent and time.perf_counter() < deadline:
                drain(0.5)
            elapsed = time.perf_counter() - t0
        finally:
            mine.close()
            proc.join(60)
            if proc.exitcode is None:
                proc.kill()
    return _figures(lat, elapsed, n) | {"rate_offered": rate, "rate_limit_per_min": rate_limit}


def paper_run(n: int) -> dict:
    broker = PaperBroker(Account(1e12))
    lat: list[float] = []
    price, ts = 100.0, 1_700_000_000_000_000_000
    t0 = time.perf_counter()
    for i in range(n):
        o = Order(SYMBOLS[i % len(SYMBOLS)], "buy" if i % 2 == 0 else "sell", 1, strategy="b")
        o.client_order_id = f"p{i}"
        start = time.perf_counter()
        broker.submit(o, price, ts + i)
        ups = broker.on_trade(o.symbol, ts + i + 1, price, 100.0) or []
        if any(isinstance(u, Fill) for u in ups):
            lat.append(time.perf_counter() - start)
    return _figures(lat, time.perf_counter() - t0, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--rate", type=float, default=50.0, help="orders offered per second (gateway path)")
    ap.add_argument("--rate-limit", type=float, default=200.0, help="gateway requests per minute")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = {
        "gateway": gateway_run(args.orders, args.rate, args.rate_limit),
        "paper": paper_run(args.orders),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
