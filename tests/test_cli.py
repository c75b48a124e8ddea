"""`trader` on bad input, signals and a dying consumer: clear errors, closed runs, nothing hangs."""

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.test_daemon import STRATEGY, run_trader

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


def test_dying_consumer_closes_runs_and_stops_the_session(tmp_path, pg_dsn):
    proc = _start(tmp_path, pg_dsn)
    seen: list[str] = []
    try:
        pid = int(_wait_for_line(proc, r"consumer 1 started \(pid (\d+)\)", seen).group(1))
        _wait_for_line(proc, r"first event processed", seen)
        os.kill(pid, signal.SIGKILL)
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert code == 1
    runs = asyncio.run(_runs(pg_dsn))
    reasons = {r["consumer"]: r["end_reason"] for r in runs}
    assert reasons[1] == "consumer 1 died (exit code -9)"
    assert reasons[0] == "consumer 1 died (exit code -9)"
    assert all(r["end_time"] is not None for r in runs)


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
    """A strategy's model that fails validation is refused before any consumer starts."""
    from liu.ml.registry import Registry
    from liu.ml.spec import load_spec
    from tests.ml.test_inference import write_spec

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
