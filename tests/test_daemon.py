"""End to end: `trader` as a subprocess on the simulator and on recorded data, against PostgreSQL."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from liu.producer import shard_of
from liu.testing import sample_data

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

STRATEGY = f"""
[[strategies]]
name = "sma_cross"
file = "{REPO}/strategies/sma_cross.py"
class = "SmaCross"
[strategies.config]
fast_period = 3
slow_period = 8
allocation = 0.05
allow_short = true
"""


def run_trader(
    tmp_path: Path, plan: str, timeout: float = 180
) -> tuple[subprocess.CompletedProcess, dict | None]:
    (tmp_path / "tradeplan.toml").write_text(plan)
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "liu.cli",
            "--plan",
            str(tmp_path / "tradeplan.toml"),
            "--summary-json",
            str(summary),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )
    return proc, (json.loads(summary.read_text()) if summary.exists() else None)


async def _db_rows(dsn: str, batch_id: str):
    conn = await asyncpg.connect(dsn)
    try:
        runs = await conn.fetch("select * from algo_run where batch_id = $1", batch_id)
        fills = await conn.fetch("select * from trades where batch_id = $1", batch_id)
        orders = await conn.fetch("select * from orders where batch_id = $1", batch_id)
        keystore = await conn.fetch("select * from keystore where algo_name = 'sma_cross'")
    finally:
        await conn.close()
    return runs, fills, orders, keystore


def check_session(summary: dict, dsn: str, consumers: int, reason: str, log: str = "") -> list:
    runs, fills, orders, keystore = asyncio.run(_db_rows(dsn, summary["batch_id"]))
    # algo_run rows: one per strategy per consumer, all closed with the reason.
    assert len(runs) == consumers
    assert [(r["end_reason"], r["end_time"] is not None) for r in runs] == [(reason, True)] * consumers, log[
        -5000:
    ]
    # Every event is accounted for, per consumer, and nothing was lost between producer and consumer.
    for c, sent in zip(summary["consumers"], summary["sent_per_consumer"], strict=True):
        assert c["received"] == c["processed"] + c["stale"] + c["malformed"]
        assert c["received"] == sent
    # Each symbol stayed on one consumer: the one its stable hash names.
    seen: dict[str, int] = {}
    for c in summary["consumers"]:
        for sym in c["symbols"]:
            assert sym not in seen, f"{sym} on consumers {seen[sym]} and {c['index']}"
            seen[sym] = c["index"]
            assert shard_of(sym, consumers) == c["index"]
    # The fills in PostgreSQL are exactly the paper broker's fills.
    broker = sorted(
        (f["client_order_id"], f["symbol"], f["side"], f["qty"], round(f["price"], 6))
        for c in summary["consumers"]
        for f in c["fills"]
    )
    stored = sorted(
        (f["client_order_id"], f["symbol"], f["side"], f["qty"], round(f["price"], 6)) for f in fills
    )
    assert stored == broker
    # Every order a strategy placed is a row (bracket legs are rows too, linked to their entry), and no
    # order is left open once the session ended.
    placed = [o for o in orders if o["parent_id"] is None]
    assert len(placed) == sum(c["orders"] for c in summary["consumers"])
    assert all(o["parent_id"] in {p["client_order_id"] for p in placed} for o in orders if o["leg"])
    assert not [
        o["client_order_id"] for o in orders if o["status"] in ("new", "accepted", "held", "partially_filled")
    ]
    if broker:  # the strategy counts its fills in its persistent keystore
        assert [r["key"] for r in keystore] == ["fills"]
    return broker


def test_sim_session_end_to_end(tmp_path, pg_dsn):
    plan = f"""
[session]
duration = "8s"
speed = 600
[source]
kind = "sim"
symbols = 30
rate = 3000
[database]
dsn = "{pg_dsn}"
[consumers]
count = 2
stale_after = "10m"
[[scanners]]
name = "volume"
file = "{REPO}/scanners/volume.py"
class = "VolumeScanner"
target_strategies = ["sma_cross"]
[scanners.config]
top = 12
{STRATEGY}
"""
    proc, summary = run_trader(tmp_path, plan)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["end_reason"] == "session end"
    assert sum(c["received"] for c in summary["consumers"]) > 1000
    assert summary["producer"]["events"] == sum(summary["sent_per_consumer"])
    fills = check_session(summary, pg_dsn, 2, "session end", proc.stderr)
    assert fills, "the demo strategy should trade on the simulator"
    assert "batch_id" in proc.stdout and summary["batch_id"] in proc.stdout.replace("\n", "")


def test_replay_of_recorded_minute_bars_end_to_end(tmp_path, pg_dsn):
    path = sample_data("us_equity_minute_lean.csv.gz")
    plan = f"""
[session]
duration = "5m"
speed = "max"
[source]
kind = "replay"
path = "{path}"
symbols = ["SPY", "AIG", "BAC", "IBM"]
bars = "stream"
[database]
dsn = "{pg_dsn}"
[consumers]
count = 2
{STRATEGY}
"""
    proc, summary = run_trader(tmp_path, plan)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["end_reason"] == "source ended"
    assert sum(c["received"] for c in summary["consumers"]) == summary["producer"]["events"] > 5000
    assert summary["producer"]["events"] == summary["source_events"]
    fills = check_session(summary, pg_dsn, 2, "source ended", proc.stderr)
    assert fills


def test_embedded_database_default(tmp_path):
    """No DSN: liu starts its own PostgreSQL in the data directory and stops it at the end."""
    plan = f"""
[session]
duration = "3s"
speed = 600
[source]
symbols = 5
rate = 500
[database]
data_dir = "{tmp_path}/pgdata"
[consumers]
count = 1
{STRATEGY}
"""
    proc, summary = run_trader(tmp_path, plan)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()  # stopped
    assert summary["consumers"][0]["received"] > 0
