"""Both analysis notebooks run headless (nbclient) against a database filled by a short backtest."""

from __future__ import annotations

import tomllib
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from liu.analysis import batch_report
from liu.backtest import run_backtest
from liu.plan import parse_plan
from liu.store.writer import ns_to_datetime
from liu.testing import make_bars
from tests.conftest import run_sync

pytestmark = pytest.mark.db

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
NY = ZoneInfo("America/New_York")


def plan_text(dsn: str) -> str:
    return f"""
[session]
speed = "max"
[source]
bars = "stream"
[broker]
cash = 100000
fee_per_share = 0.005
slippage_bps = 2
[database]
dsn = "{dsn}"
[[strategies]]
name = "sma_cross"
file = "{REPO}/strategies/sma_cross.py"
class = "SmaCross"
[strategies.config]
fast_period = 10
slow_period = 30
allocation = 0.3
allow_short = true
"""


def session_bars(symbols: dict[str, float], days: int) -> list[tuple]:
    """`days` weekdays of 390 one-minute bars (09:30-16:00 New York) per symbol, from 2 Jan 2024."""
    bars: list[tuple] = []
    price = dict(symbols)
    d, done = date(2024, 1, 2), 0
    while done < days:
        if d.weekday() < 5:
            open_ns = int(datetime(d.year, d.month, d.day, 9, 30, tzinfo=NY).timestamp()) * 10**9
            for k, sym in enumerate(symbols):
                day = make_bars(sym, 390, start_ns=open_ns, seed=done * 10 + k, price=price[sym])
                price[sym] = day[-1][6]
                bars += day
            done += 1
        d += timedelta(days=1)
    bars.sort(key=lambda b: b[2])  # stable: time order, symbols interleaved
    return bars


async def store_bars(dsn: str, bars: list[tuple]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "stock_ohlc",
            records=[(b[1], ns_to_datetime(b[2]), *b[3:8]) for b in bars],
            columns=["symbol", "symbol_date", "open", "high", "low", "close", "volume"],
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def backtest_db(pg_dsn_module: str, tmp_path_factory: pytest.TempPathFactory):
    """A 30-day, two-symbol SMA-cross backtest stored in PostgreSQL, with its bars in stock_ohlc."""
    base = tmp_path_factory.mktemp("nb-plan")
    text = plan_text(pg_dsn_module)
    (base / "tradeplan.toml").write_text(text)
    bars = session_bars({"AAA": 100.0, "BBB": 40.0}, days=30)
    run_sync(store_bars(pg_dsn_module, bars))
    plan = parse_plan(tomllib.loads(text), "tradeplan.toml", base)
    result = run_backtest(
        plan, events=[bars[i : i + 500] for i in range(0, len(bars), 500)], dsn=pg_dsn_module
    )
    assert len(result.fills) > 20, "the test needs a backtest that trades"
    return pg_dsn_module, base / "tradeplan.toml", result


def execute(name: str, params: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = params
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return nb


def figure_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code" and "plt.show()" in c.source]


def text_of(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell() -> None:
    for name in ("batch_analysis.ipynb", "backtest_report.ipynb"):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", [])
        assert "batch_id = None" in code[0].source and "dsn = None" in code[0].source
        assert all(not c.outputs and c.execution_count is None for c in code), name


def test_batch_analysis_notebook(backtest_db) -> None:
    dsn, _plan, result = backtest_db
    nb = execute("batch_analysis.ipynb", f'batch_id = "{result.batch_id}"\nplan = None\ndsn = "{dsn}"')
    figures = figure_cells(nb)
    assert len(figures) == 4  # P&L, win/loss, r-units, prices
    for cell in figures:
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:60]
    summary = text_of(nb.cells[3])
    assert f"batch {result.batch_id}: {len(result.fills)} fills" in summary
    assert "equity from bar closes" in summary


def test_backtest_report_notebook_uses_the_plan_database_and_latest_batch(backtest_db) -> None:
    dsn, plan, result = backtest_db
    nb = execute("backtest_report.ipynb", f'batch_id = None\nplan = "{plan}"\ndsn = None')
    figures = figure_cells(nb)
    assert len(figures) == 3  # equity + drawdown, monthly heatmap, rolling Sharpe
    for cell in figures:
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:60]
    assert f"batch {result.batch_id}:" in text_of(nb.cells[3])
    assert "2024" in text_of(figures[1])  # the monthly table: January and February 2024


def test_bar_marked_equity_of_the_stored_batch_matches_the_backtester(backtest_db) -> None:
    """The notebooks' curve (fills from PostgreSQL, marked at stored bar closes) ends where the backtester's does."""
    dsn, _plan, result = backtest_db
    report = run_sync(batch_report(dsn, result.batch_id, mark_to_bars=True))
    assert report.equity_source == "bar closes"
    assert report.equity[-1] == pytest.approx(result.final_equity, rel=1e-9)
    # Both are sampled at the end of each minute: where the times agree, so do the values, except at
    # the instants where a fill is stamped (the next bar's open): the report's sample at t includes the
    # fills stamped at t, the backtester's end-of-minute sample does not (it is the previous minute's state).
    common, i, j = np.intersect1d(report.equity_ts, result.equity_ts, return_indices=True)
    no_fill = ~np.isin(common, [f.ts for f in result.fills])
    assert no_fill.sum() > 1000
    assert report.equity[i][no_fill] == pytest.approx(result.equity[j][no_fill], rel=1e-9)
