"""The report page: each part is there, with the numbers it should draw, and nothing is loaded from outside.

The page is parsed (html.parser) and its charts read back from their JSON blocks: the tests check the
data a browser would draw, not only that some markup exists. One test sorts the round-trip table in a
real headless Chromium (skipped where Debian's chromium/chromedriver are not installed).
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from liu.analysis.batch import batch_page
from liu.analysis.metrics import daily_returns, ny_times
from liu.analysis.page import monthly_returns, render
from liu.analysis.report import build_report
from liu.analysis.timeaxis import trading_axis
from liu.events import Fill

NS = 10**9
MIN = 60 * NS
STEP = MIN
OPEN = 1_704_724_200 * NS  # Monday 2024-01-08 09:30 New York


def session_times(days: list[int]) -> np.ndarray:
    """Minute bar ends 09:31..16:00 New York on the given day offsets from Monday 2024-01-08."""
    return np.concatenate([OPEN + d * 86_400 * NS + np.arange(1, 391, dtype=np.int64) * MIN for d in days])


TS = session_times([0, 1, 2, 3, 4, 7, 8])  # Mon-Fri, then Mon-Tue: nights and a weekend
EQ = 100_000 + np.cumsum(np.sin(np.arange(TS.size) / 40.0) * 3)


def fill(coid, strategy, symbol, side, qty, price, ts, fee=1.0, stop=None):
    return Fill(coid, strategy, symbol, side, float(qty), float(price), fee, int(ts), stop)


FILLS = [
    fill("a1", "momo", "AAA", "buy", 10, 100.0, TS[10], stop=98.0),
    fill("a2", "momo", "AAA", "sell", 10, 104.0, TS[400]),  # held overnight: a winner
    fill("b1", "revert", "BBB", "sell", 5, 50.0, TS[900]),
    fill("b2", "revert", "BBB", "buy", 5, 51.0, TS[1000]),  # a losing short
    fill("a3", "momo", "AAA", "buy", 4, 101.0, TS[2000]),
    fill("a4", "momo", "AAA", "sell", 4, 100.5, TS[2500]),  # across the weekend, a loser
]
PRICES = {
    "AAA": (TS, 100 + np.sin(np.arange(TS.size) / 90.0) * 3),
    "BBB": (TS[::2], 50 + np.cos(np.arange(TS[::2].size) / 50.0)),
}


@pytest.fixture(scope="module")
def report():
    return build_report(
        FILLS, TS, EQ, 100_000.0, title="page test", prices=PRICES, batch_id="b-1", env="BACKTEST"
    )


@pytest.fixture(scope="module")
def page(report):
    return Page(render(report))


class Page(HTMLParser):
    """The parsed page: tags with their attributes, chart JSON by id, table rows by table id."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text = text
        self.tags: list[tuple[str, dict]] = []
        self.charts: dict[str, dict] = {}
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}
        self._script: str | None = None
        self._buf: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._cell_attrs: dict = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script" and "data-chart" in a:
            self._script, self._buf = a["data-chart"], []
        elif tag == "table":
            self._table = a.get("id", f"table-{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell, self._cell_attrs = [], a

    def handle_endtag(self, tag):
        if tag == "script" and self._script:
            self.charts[self._script.removeprefix("chart-")] = json.loads("".join(self._buf))
            self._script = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(("".join(self._cell).strip(), self._cell_attrs))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._script:
            self._buf.append(data)
        elif self._cell is not None:
            self._cell.append(data)


def values(v) -> np.ndarray:
    """A plotly array: a list, or a typed array {'dtype', 'bdata'}."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def test_nothing_is_loaded_from_outside(page) -> None:
    links = [(t, k, v) for t, a in page.tags for k, v in a.items() if k in ("src", "href") and v]
    assert not [x for x in links if x[2].lower().startswith(("http:", "https:", "//"))], links
    assert not [t for t, _ in page.tags if t in ("link", "iframe", "img")]
    assert "Plotly.newPlot" in page.text and "plotly.js v" in page.text.lower()  # the library is inline
    assert "@import" not in page.text.split("<script>")[0]


def test_the_dashboard_can_load_plotly_from_its_own_path(report) -> None:
    small = render(report, plotly_js="/static/plotly.min.js")
    assert '<script src="/static/plotly.min.js"></script>' in small
    assert len(small) < 400_000 < len(render(report))


def test_metrics_table_shows_every_headline_metric(page, report) -> None:
    cells = {a.get("data-key"): None for t, a in page.tags if t == "div" and "data-key" in a}
    assert {"total_return", "sharpe", "max_drawdown", "win_rate", "profit_factor", "fees"} <= set(cells)
    m = report.metrics
    assert f"{m['total_return'] * 100:.2f} %" in page.text
    assert f"{m['fees']:,.2f}" in page.text


def test_equity_is_drawn_on_trading_time_with_the_gaps_collapsed_and_marked(page, report) -> None:
    fig = page.charts["equity"]
    equity, drawdown, gaps = fig["data"]
    x = values(equity["x"])
    calendar = np.diff(TS)
    assert calendar.max() >= 2 * 86_400 * NS  # the calendar axis had a weekend (and nights)
    assert np.diff(x).max() <= STEP / NS + 1e-6  # the trading-time axis has no gap over one bar step
    assert np.all(np.diff(x) > 0)
    # The drawn values are the report's curve, at the right calendar times.
    axis = trading_axis(TS)
    k = np.searchsorted(axis.x, x)
    assert np.allclose(values(equity["y"]), EQ[k], rtol=1e-9)
    assert np.allclose(values(drawdown["y"]), report.drawdown[k] * 100, atol=1e-6)
    assert equity["customdata"][:2] == list(ny_times(TS[k[:2]]).strftime("%Y-%m-%d %H:%M"))
    # Six nights (one of them a weekend) are gaps, each one marked where it was collapsed.
    assert len(gaps["x"]) == 6 == len(fig["layout"]["shapes"])
    assert gaps["text"][4].startswith("Fri 2024-01-12 16:00 → Mon 2024-01-15 09:31 (2d 17h 31m")
    assert sorted(s["x0"] for s in fig["layout"]["shapes"]) == pytest.approx(sorted(gaps["x"]))
    assert all(x[i] < g < x[i + 1] for g in gaps["x"] for i in [int(np.searchsorted(x, g)) - 1])
    assert fig["layout"]["xaxis"]["ticktext"][0] == "Mon 08 Jan"


def test_pnl_by_strategy_and_by_symbol(page, report) -> None:
    for key, rows in (("strategy", report.per_strategy), ("symbol", report.per_symbol)):
        bars = page.charts[f"pnl-{key}"]["data"][0]
        assert dict(zip(bars["y"], bars["x"], strict=True)) == pytest.approx({r[key]: r["pnl"] for r in rows})
    momo = 10 * (104 - 100) - 2 + 4 * (100.5 - 101) - 2  # fees 1 per fill
    by = {r["strategy"]: r["pnl"] for r in report.per_strategy}
    assert by == pytest.approx({"momo": momo, "revert": 5 * (50 - 51) - 2})
    cumulative = {t["name"]: values(t["y"])[-1] for t in page.charts["pnl-cumulative"]["data"]}
    assert cumulative == pytest.approx(by)


def test_each_symbol_shows_its_price_and_its_fills(page, report) -> None:
    for k, symbol in enumerate(["AAA", "BBB"]):  # AAA has the most round trips: first
        fig = page.charts[f"price-{k}"]
        price, *rest = fig["data"]
        ts, px = PRICES[symbol]
        assert price["name"] == "bar close"
        drawn = values(price["y"])
        assert set(drawn) <= set(np.round(px, 6))  # decimated to at most 2000 points...
        assert drawn.min() == round(px.min(), 6) and drawn.max() == round(
            px.max(), 6
        )  # ...keeping the extremes
        axis = trading_axis(ts)
        markers = {t["name"]: t for t in rest if t["mode"] == "markers"}
        for side in ("buy", "sell"):
            mine = [f for f in FILLS if f.symbol == symbol and f.side == side]
            assert markers[side]["y"] == [f.price for f in mine]
            assert values(markers[side]["x"]) == pytest.approx(axis.x_of([f.ts for f in mine]), abs=1e-3)
        trips = [t for t in rest if t["mode"] == "lines"]
        won = {t["name"]: (len(t["x"]) // 3) for t in trips}
        assert won == ({"winning trip": 1, "losing trip": 1} if symbol == "AAA" else {"losing trip": 1})


def test_a_symbol_without_bars_is_drawn_on_its_fill_prices() -> None:
    r = build_report(FILLS, TS, EQ, 100_000.0, prices={"AAA": PRICES["AAA"]})
    p = Page(render(r, plotly_js="/p.js"))
    bbb = p.charts["price-1"]["data"][0]
    assert bbb["name"].startswith("fill price")
    assert list(values(bbb["y"])) == [50.0, 51.0]


def test_returns_by_day_and_by_month(page, report) -> None:
    bars = page.charts["returns-daily"]["data"][0]
    assert bars["x"] == [
        "2024-01-08",
        "2024-01-09",
        "2024-01-10",
        "2024-01-11",
        "2024-01-12",
        "2024-01-15",
        "2024-01-16",
    ]
    assert values(bars["y"]) == pytest.approx(daily_returns(TS, EQ, 100_000.0) * 100, abs=1e-4)
    header, row = page.tables["monthly"]
    assert [c for c, _ in header][1:4] == ["Jan", "Feb", "Mar"]
    assert row[0][0] == "2024"
    jan = float(row[1][1]["data-v"])
    assert jan == pytest.approx(EQ[-1] / 100_000 - 1, rel=1e-5)
    assert float(row[13][1]["data-v"]) == pytest.approx(jan, rel=1e-5)  # the year is January alone
    assert row[2][0] == ""  # no February


def test_monthly_returns_compound_by_hand() -> None:
    dates = ["2023-11-30", "2023-12-15", "2023-12-29", "2024-01-31", "2024-02-29"]
    eq = np.array([110.0, 99.0, 121.0, 108.9, 119.79])
    table = monthly_returns(dates, eq, 100.0)
    assert table["2023"] == pytest.approx({11: 0.10, 12: 0.10, 0: 0.21})
    assert table["2024"] == pytest.approx({1: -0.10, 2: 0.10, 0: -0.01})


def test_round_trips_table_has_one_row_per_trip_with_its_figures(page, report) -> None:
    header, *rows = page.tables["trips"]
    names = [c for c, _ in header]
    assert names[:5] == ["#", "strategy", "symbol", "side", "qty"]
    assert len(rows) == len(report.trips) == 3
    col = {n: i for i, n in enumerate(names)}
    for row, trip in zip(rows, report.trips, strict=True):
        cell = {n: row[i] for n, i in col.items()}
        assert (cell["strategy"][0], cell["symbol"][0], cell["side"][0]) == (
            trip.strategy,
            trip.symbol,
            trip.side,
        )
        assert float(cell["qty"][1]["data-v"]) == trip.qty
        assert float(cell["entry price"][1]["data-v"]) == pytest.approx(trip.entry_price)
        assert float(cell["exit price"][1]["data-v"]) == pytest.approx(trip.exit_price)
        assert float(cell["P&L"][1]["data-v"]) == pytest.approx(trip.gain_value)
        assert cell["P&L"][0] == f"{trip.gain_value:,.2f}"
        assert cell["entry (New York)"][0] == ny_times(np.array([trip.entry_ts]))[0].strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        assert float(cell["holding"][1]["data-v"]) == pytest.approx(trip.holding_ns / NS)
    first = {n: rows[0][i][0] for n, i in col.items()}
    assert (first["P&L"], first["R"], first["fees"]) == ("38.00", "1.90", "2.00")  # (104-100)*10-2; risk 20


def test_every_number_is_valid_json_even_with_nan_and_inf() -> None:
    r = build_report(FILLS[:2], TS, EQ, 100_000.0)  # one winning trip: profit factor inf, Sharpe defined
    text = render(r, plotly_js="/p.js")
    p = Page(text)
    assert "∞" in text  # the profit factor, in the metrics table
    blocks = re.findall(r'<script type="application/json" data-chart="[^"]+">(.*?)</script>', text, re.S)
    assert len(blocks) == len(p.charts) >= 5 and not [b for b in blocks if "NaN" in b or "Infinity" in b]


def test_an_empty_batch_still_renders() -> None:
    r = build_report([], None, None, 100_000.0, title="nothing")
    p = Page(render(r, plotly_js="/p.js"))
    assert "No round trips in this batch." in p.text
    assert "trips" not in p.tables


def test_write_html_is_the_page(report, tmp_path) -> None:
    path = report.write_html(tmp_path / "r" / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text == render(report)
    assert 1_000_000 < len(text) < 6_000_000


async def test_batch_page_of_a_stored_batch(pg_dsn) -> None:
    from tests.analysis.helpers import write_batch

    await write_batch(pg_dsn, "b-live")
    p = Page(await batch_page(pg_dsn, "b-live", plotly_js="/p.js"))
    assert "PAPER" in p.text and "b-live" in p.text
    header, *rows = p.tables["trips"]
    assert len(rows) == 3  # momo AAA, revert AAA, momo BBB (one BBB lot still open)
    assert "equity rebuilt from fills" in p.text  # a live batch: fill-marked, and the page says so
    assert "Open at the end" in p.text


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver",
)
def test_the_round_trip_table_sorts_in_a_browser(report, tmp_path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    path = report.write_html(tmp_path / "report.html")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(path.as_uri())
        pnl = lambda: [  # noqa: E731
            float(td.get_attribute("data-v"))
            for td in driver.find_elements(By.CSS_SELECTOR, "#trips tbody td:nth-child(11)")
        ]
        assert pnl() == [t.gain_value for t in report.trips]
        header = driver.find_element(By.XPATH, "//table[@id='trips']//th[text()='P&L']")
        header.click()
        assert pnl() == sorted(t.gain_value for t in report.trips)
        header.click()
        assert pnl() == sorted((t.gain_value for t in report.trips), reverse=True)
        drawn = driver.execute_script("return document.querySelectorAll('#chart-equity .main-svg').length")
        assert drawn > 0  # plotly drew the chart from the inline library, offline
        assert math.isfinite(pnl()[0])
    finally:
        driver.quit()
