"""Report: fill-marked equity by hand, JSON safety, HTML/PNG files, the rich table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from rich.console import Console

from liu.analysis.report import build_report, equity_from_fills
from tests.analysis.helpers import M, T, fill  # fill(..., t=minutes after T)

DAY = 86_400 * 10**9


FILLS = [
    fill("a", "buy", 10, 10, fee=1, t=0),  # cash 899, AAA 10 @ 10
    fill("b", "buy", 2, 50, t=1, symbol="BBB"),  # cash 799, BBB 2 @ 50
    fill("c", "sell", 10, 12, fee=1, t=2),  # cash 918, AAA flat
    fill("d", "sell", 1, 40, t=2, symbol="BBB", strategy="other"),  # same time: one sample; BBB marked 40
]


def test_equity_from_fills_by_hand() -> None:
    ts, eq = equity_from_fills(FILLS, 1000.0)
    assert list(ts) == [T, T + M, T + 2 * M]
    # t0: 899 + 10*10; t1: 799 + 100 + 2*50; t2: cash 918 + 40 (sold 1 BBB) = 958, BBB 1 @ 40
    assert eq == pytest.approx([999.0, 999.0, 958.0 + 40.0])


def test_report_from_fills_only_notes_the_fill_marked_curve() -> None:
    r = build_report(list(reversed(FILLS)), None, None, 1000.0, title="t")
    assert r.equity_source == "fills"
    assert any("fill" in n for n in r.notes)
    assert r.metrics["fills"] == 4
    assert r.metrics["fees"] == pytest.approx(2.0)
    assert r.metrics["round_trips"] == 1  # AAA; BBB's 'other' sell opens a short of another strategy
    assert r.metrics["open_positions"] == 2
    assert r.metrics["total_return"] == pytest.approx(998 / 1000 - 1)
    assert r.drawdown == pytest.approx([999 / 1000 - 1, 999 / 1000 - 1, 998 / 1000 - 1])
    (aaa,) = [row for row in r.per_symbol if row["symbol"] == "AAA"]
    assert aaa["pnl"] == pytest.approx(20 - 2) and aaa["fees"] == 2.0


def given_curve():
    ts = np.array([T + i * DAY for i in range(5)], dtype=np.int64)
    return ts, np.array([1000.0, 1010.0, 990.0, 1020.0, 1030.0])


def test_to_json_is_strict_json_and_nan_becomes_none(tmp_path) -> None:
    ts, eq = given_curve()
    r = build_report([], ts, eq, 1000.0, title="empty")
    data = r.to_json()
    text = json.dumps(data, allow_nan=False)  # raises on NaN/inf
    assert data["metrics"]["win_rate"] is None  # no round trips
    assert data["metrics"]["total_return"] == pytest.approx(0.03)
    assert [d["equity"] for d in data["equity_daily"]] == [1000.0, 1010.0, 990.0, 1020.0, 1030.0]
    assert data["equity_source"] == "given"
    path = r.write_json(tmp_path / "out" / "r.json")
    assert json.loads(path.read_text()) == json.loads(text)


def test_profit_factor_inf_is_null_in_json() -> None:
    r = build_report(FILLS[:1] + FILLS[2:3], None, None, 1000.0)
    assert r.metrics["profit_factor"] == math.inf
    assert r.to_json()["metrics"]["profit_factor"] is None


def test_html_is_self_contained_and_png_is_a_png(tmp_path) -> None:
    ts, eq = given_curve()
    r = build_report(FILLS, ts, eq, 1000.0, title="charts")
    html = r.write_html(tmp_path / "r.html").read_text()
    assert "Plotly.newPlot" in html
    assert 'src="https://cdn' not in html  # the library is embedded: opens offline
    assert len(html) > 1_000_000
    png = r.write_png(tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_long_curves_are_decimated_for_charts_but_keep_the_trough(tmp_path) -> None:
    n = 50_000
    ts = T + np.arange(n, dtype=np.int64) * M
    eq = 1000 + np.sin(np.arange(n) / 500.0)
    eq[31_337] = 900.0  # one deep trough
    r = build_report([], ts, eq, 1000.0)
    html = r.write_html(tmp_path / "long.html").read_text()
    assert len(html) < 6_000_000
    fig = r.figure()
    (line,) = fig.axes[0].get_lines()
    assert len(line.get_ydata()) <= 4002
    assert min(line.get_ydata()) == 900.0


def test_print_shows_headline_and_breakdowns() -> None:
    ts, eq = given_curve()
    r = build_report(FILLS, ts, eq, 1000.0, title="My run")
    console = Console(record=True, width=160)
    r.print(console)
    out = console.export_text()
    for text in ("My run", "Sharpe", "Max drawdown", "By strategy", "By symbol", "AAA", "other", "3.00 %"):
        assert text in out


def test_equity_marked_to_bar_closes_by_hand() -> None:
    fills = [fill("a", "buy", 10, 10, fee=1, t=1), fill("b", "sell", 10, 13, t=4)]
    # Bar closes of AAA at 0, 2, 3 and 4 minutes; at 4 minutes the fill (13) is later than the bar (12.5).
    prices = {"AAA": (np.array([T, T + 2 * M, T + 3 * M, T + 4 * M]), np.array([9.0, 11.0, 9.5, 12.5]))}
    ts, eq = equity_from_fills(fills, 1000.0, prices)
    assert list(ts) == [T, T + M, T + 2 * M, T + 3 * M, T + 4 * M]
    # before the buy: 1000; bought at 10 (cash 899): 899 + 100; then marked at 11 and 9.5; sold at 13: 1029
    assert eq == pytest.approx([1000.0, 999.0, 1009.0, 994.0, 1029.0])


def test_bar_closes_are_stamped_at_the_bar_end() -> None:
    from liu.analysis.batch import bar_closes

    bars = {"AAA": {"ts": np.array([0, 60, 120, 300]), "close": np.array([1.0, 2.0, 3.0, 4.0])}}
    ((ts, close),) = bar_closes(bars).values()
    assert list(ts) == [60, 120, 180, 360]  # most common spacing: 60
    assert list(close) == [1.0, 2.0, 3.0, 4.0]
