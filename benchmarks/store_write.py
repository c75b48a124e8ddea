"""TradeWriter throughput against an embedded PostgreSQL.

Reproduce:  .venv/bin/python benchmarks/store_write.py [--rows 100000] [--max-batch 5000]

Starts a throwaway embedded server in a temp dir, migrates it, writes N orders
(timed separately), then N fills through TradeWriter, and prints rows/s for
each phase measured from the first add_* to the end of close() (all rows committed).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import warnings
from pathlib import Path

import asyncpg

from liu.events import Fill, Order
from liu.store import EmbeddedPostgres, TradeWriter, create_runs, upgrade

BASE_NS = 1_700_000_000_000_000_000


async def bench(dsn: str, n: int, max_batch: int) -> None:
    runs = await create_runs(dsn, "bench", "BACKTEST", [("momo", 0, {"k": 1})])
    run_ids = {"momo": runs[("momo", 0)]}
    orders = [
        Order(
            symbol=f"S{i % 500}",
            side="buy" if i % 2 else "sell",
            qty=10.0,
            stop=99.0,
            target=110.0,
            strategy="momo",
            client_order_id=f"o-{i}",
            submitted_ts=BASE_NS + i * 1000,
            indicators={"rsi": 55.5},
        )
        for i in range(n)
    ]
    fills = [
        Fill(
            f"o-{i}",
            "momo",
            f"S{i % 500}",
            "buy",
            10.0,
            100.0 + i * 1e-4,
            0.01,
            BASE_NS + i * 1000 + 7,
            99.0,
            110.0,
            {"rsi": 55.5},
        )
        for i in range(n)
    ]

    for label, items, add in (("orders", orders, "add_order"), ("fills", fills, "add_fill")):
        w = await TradeWriter.open(dsn, "bench", run_ids, max_batch=max_batch)
        fn = getattr(w, add)
        t0 = time.perf_counter()
        for i, item in enumerate(items):
            fn(item)
            if i % 1000 == 999:
                await asyncio.sleep(0)  # a consumer yields between event batches
        t_add = time.perf_counter() - t0
        assert await w.close()
        dt = time.perf_counter() - t0
        print(
            f"{label:6s}: {n:,} rows in {dt:.2f} s = {n / dt:,.0f} rows/s "
            f"(add_* calls alone {t_add * 1e6 / n:.2f} µs/row)"
        )

    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM trades") == n
    finally:
        await conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--max-batch", type=int, default=5000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pg = EmbeddedPostgres.start(Path(tmp) / "pg")
        try:
            upgrade(pg.dsn)
            asyncio.run(bench(pg.dsn, args.rows, args.max_batch))
        finally:
            pg.stop()
    print(
        f"reproduce: .venv/bin/python benchmarks/store_write.py --rows {args.rows} --max-batch {args.max_batch}"
    )


if __name__ == "__main__":
    main()
