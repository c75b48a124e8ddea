"""`trader` on bad input, signals and a dying consumer: clear errors, closed runs, nothing hangs."""

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import STRATEGY, run_trader

pytestmark = pytest.mark.slow


def _trader(tmp_path: Path, plan: str) -> subprocess.CompletedProcess:
    proc, _ = run_trader(tmp_path, plan, timeout=120)
    return proc


def test_malformed_tradeplan_names_table_key_and_expectation(tmp_path):
    proc = _trader(tmp_path, "[source]\nkind = 'sim'\nrate = 'fast'\n")
    assert proc.returncode == 2
    assert "[source] rate: given 'fast', expected a valid number" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_missing_strategy_file_is_named(tmp_path):
    plan = "[[strategies]]\nfile = 'strategies/nope.py'\nclass = 'Nope'\n"
    proc = _trader(tmp_path, plan)
    assert proc.returncode == 2
    assert f"strategy file {tmp_path}/strategies/nope.py: not found (class Nope)" in proc.stdout.replace(
        "\n", ""
    )


def test_unreachable_dsn_is_one_clear_line_without_the_password(tmp_path):
    plan = f"[database]\ndsn = 'postgresql://trader:hunter2@127.0.0.1:1/liu'\n{STRATEGY}"
    proc = _trader(tmp_path, plan)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "cannot connect to postgresql://trader:***@127.0.0.1:1/liu" in out.replace("\n", "")
    assert "hunter2" not in out
    assert "Traceback" not in out


def test_strategy_that_raises_is_counted_while_the_others_trade(tmp_path, pg_dsn):
    (tmp_path / "boom.py").write_text(
        "from liu.strategy import Strategy\n\n"
        "class Boom(Strategy):\n"
        "    def on_bar(self, bar, ctx):\n"
        "        raise ZeroDivisionError('strategy bug')\n"
    )
    plan = f"""
[session]
duration = "5s"
speed = 600
[source]
symbols = 6
rate = 2000
[database]
dsn = "{pg_dsn}"
[consumers]
count = 2
[[strategies]]
name = "boom"
file = "boom.py"
class = "Boom"
{STRATEGY}
"""
    proc, summary = run_trader(tmp_path, plan)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["strategies"]["boom"]["errors"] > 0
    assert sum(c["strategy_errors"] for c in summary["consumers"]) == summary["strategies"]["boom"]["errors"]
    assert summary["strategies"]["sma_cross"]["trades"] > 0
    assert "strategy boom raised in on_bar for symbol" in proc.stderr
    assert "ZeroDivisionError: strategy bug" in proc.stderr


def _start(tmp_path: Path, pg_dsn: str, consumers: int = 2) -> subprocess.Popen:
    plan = f"""
[session]
duration = "10m"
speed = 60
[source]
symbols = 10
rate = 2000
[database]
dsn = "{pg_dsn}"
[consumers]
count = {consumers}
{STRATEGY}
"""
    (tmp_path / "tradeplan.toml").write_text(plan)
    return subprocess.Popen(
        [sys.executable, "-m", "liu.cli", "--plan", "tradeplan.toml", "--summary-json", "summary.json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(proc: subprocess.Popen, pattern: str, seen: list[str]) -> re.Match:
    for line in proc.stderr:
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError("trader ended before logging " + pattern + "\n" + "".join(seen[-50:]))


async def _runs(dsn: str):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("select consumer, end_time, end_reason from algo_run order by consumer")
    finally:
        await conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_closes_runs_and_exits_zero(tmp_path, pg_dsn, sig):
    proc = _start(tmp_path, pg_dsn)
    seen: list[str] = []
    try:
        _wait_for_line(proc, r"first event processed", seen)
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0  # the bound: drained and gone within 10 s
    finally:
        proc.kill()
    runs = asyncio.run(_runs(pg_dsn))
    assert [(r["end_reason"], r["end_time"] is not None) for r in runs] == [(sig.name, True)] * 2


def test_db_upgrade_migrates_the_embedded_database(tmp_path):
    (tmp_path / "tradeplan.toml").write_text(f"[database]\ndata_dir = '{tmp_path}/pg'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "liu.cli", "db", "upgrade"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "is at head" in proc.stdout
    assert (tmp_path / "pg" / "PG_VERSION").exists()


def test_bad_model_file_stops_the_start_with_one_line(tmp_path, pg_dsn):
    """A strategy's model that fails validation is refused before any consumer starts (no market data needed)."""
    from liu.ml.registry import Registry
    from liu.ml.spec import load_spec
    from tests.ml.helpers import write_spec

    spec_path = write_spec(tmp_path)
    model = Registry(load_spec(spec_path).registry_root, None).path("tiny", 1)
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not an onnx file")
    (tmp_path / "noop.py").write_text(
        "from liu.strategy import Strategy\n\n\nclass Noop(Strategy):\n    pass\n"
    )
    plan = f"""
[session]
duration = "5s"
[database]
dsn = "{pg_dsn}"
[[strategies]]
name = "noop"
file = "noop.py"
class = "Noop"
models = [{{ spec = "{spec_path}", version = 1 }}]
"""
    proc, summary = run_trader(tmp_path, plan, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "tiny" in lines[0] and str(model) in proc.stdout.replace("\n", ""), proc.stdout
    assert summary is None


def test_halt_status_flatten_resume_reach_a_running_trader(tmp_path, pg_dsn):
    def trader(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "liu.cli", "--plan", "tradeplan.toml", command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    proc = _start(tmp_path, pg_dsn, consumers=2)
    seen: list[str] = []
    try:
        _wait_for_line(proc, r"first event processed", seen)
        asyncio.run(_wait_for_fills(pg_dsn, deadline_s=60))  # positions are open before the halt
        halt, status = trader("halt"), trader("status")
        # A strategy's next entry is refused while halted (its exits would pass).
        _wait_for_line(proc, r"rejected: risk halted: trading halted \(manual\)", seen)
        flatten = trader("flatten")
        _wait_for_line(proc, r"flatten: open orders cancelled, positions closed at market", seen)
        second = trader("run")  # a second trader on the same plan
        _wait_for_line(proc, r"flatten: open orders cancelled", seen)  # both consumers flattened
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        resume = trader("resume")  # nothing listens any more
    finally:
        proc.kill()
    summary = json.loads((tmp_path / "summary.json").read_text())
    held = [c["strategies"][s]["positions"] for c in summary["consumers"] for s in c["strategies"]]
    assert not any(held), held
    assert sum(c["risk_refused"].get("halted", 0) for c in summary["consumers"]) >= 1
    net = asyncio.run(_net_positions(pg_dsn, summary["batch_id"]))
    assert net and all(abs(q) < 1e-9 for q in net.values()), net  # flattened and kept flat while halted
    assert halt.returncode == 0, halt.stdout + halt.stderr
    assert halt.stdout.startswith("halted: orders that open or grow a position are refused")
    assert status.stdout.startswith("halted (manual): equity ")
    assert (
        flatten.stdout.startswith("flattening: already halted (manual);") and "flatten #1" in flatten.stdout
    )
    assert [r.returncode for r in (status, flatten)] == [0, 0]
    assert resume.returncode == 1
    assert second.returncode == 2
    assert second.stdout.startswith(
        "error: another trader is running on this plan: it answers on .liu/control.sock; stop it first"
    )
    assert not (tmp_path / ".liu" / "control.sock").exists()  # the daemon removed it on the way out
    assert resume.stdout == "error: no running trader: nothing listens on .liu/control.sock\n"


async def _wait_for_fills(dsn: str, deadline_s: float) -> None:
    """Return once the trades table has a row (the writer flushes in batches); fail at the deadline."""
    conn = await asyncpg.connect(dsn)
    try:
        end = asyncio.get_running_loop().time() + deadline_s
        while not await conn.fetchval("select count(*) from trades"):
            assert asyncio.get_running_loop().time() < end, f"no fill reached the database in {deadline_s}s"
            await asyncio.sleep(0.2)  # polling the database: the event itself, with a deadline
    finally:
        await conn.close()


async def _net_positions(dsn: str, batch_id: str) -> dict[str, float]:
    """Net filled quantity per symbol of a batch, from the trades table."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "select symbol, sum(case when side = 'buy' then qty else -qty end) as net "
            "from trades where batch_id = $1 group by symbol",
            batch_id,
        )
    finally:
        await conn.close()
    return {r["symbol"]: r["net"] for r in rows}
