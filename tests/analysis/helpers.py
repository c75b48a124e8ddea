"""Shared helpers of the analysis tests: fills at minutes after a fixed time."""

from __future__ import annotations

from liu.events import Fill, Order
from liu.store import TradeWriter, create_runs, record_account

T = 1_700_000_000 * 10**9
M = 60 * 10**9


def fill(coid, side, qty, price, fee=0.0, t=0, stop=None, symbol="AAA", strategy="s"):
    return Fill(coid, strategy, symbol, side, float(qty), float(price), float(fee), T + t * M, stop=stop)


# A stored batch (tests/analysis/test_batch.py, test_report_page.py).
BATCH_T = 1_704_724_200 * 10**9  # 2024-01-08 14:30 UTC = 09:30 New York


def batch_fill(coid, strategy, symbol, side, qty, price, fee=0.0, t=0, stop=None):
    return Fill(
        coid,
        strategy,
        symbol,
        side,
        float(qty),
        float(price),
        float(fee),
        BATCH_T + t * M,
        stop,
        None,
        {"t": t},
    )


# Strategy "momo" runs on two consumers (two algo_run rows); AAA is traded by consumer 0, BBB by consumer 1.
FILLS_C0 = [
    batch_fill("o1", "momo", "AAA", "buy", 10, 100, fee=1.0, t=0, stop=98),
    batch_fill("o2", "momo", "AAA", "sell", 10, 103, fee=1.0, t=30),
    batch_fill("o3", "revert", "AAA", "sell", 5, 104, t=31, stop=106),
    batch_fill("o4", "revert", "AAA", "buy", 5, 105, t=40),
]
FILLS_C1 = [
    batch_fill("o5", "momo", "BBB", "buy", 20, 50, fee=0.5, t=1, stop=49),
    batch_fill("o6", "momo", "BBB", "sell", 20, 49.5, fee=0.5, t=50),
    batch_fill("o7", "momo", "BBB", "buy", 4, 49.0, t=55),  # still open at the end
]


async def write_batch(dsn: str, batch_id: str = "b1", cash: float | None = 50_000.0) -> dict:
    runs = await create_runs(dsn, batch_id, "PAPER", [("momo", 0, {}), ("revert", 0, {}), ("momo", 1, {})])
    for consumer, fills in ((0, FILLS_C0), (1, FILLS_C1)):
        run_ids = {name: rid for (name, c), rid in runs.items() if c == consumer}
        w = await TradeWriter.open(dsn, batch_id, run_ids)
        for f in fills:
            w.add_order(
                Order(
                    f.symbol,
                    f.side,
                    f.qty,
                    strategy=f.strategy,
                    client_order_id=f.client_order_id,
                    submitted_ts=f.ts,
                    stop=f.stop,
                    status="filled",
                )
            )
            w.add_fill(f)
        assert await w.close()
    if cash is not None:
        await record_account(dsn, batch_id, cash)
    return runs
