"""The report page: one self-contained HTML document for a batch, backtest or live.

`render(report)` returns the page as a string; `Report.write_html` writes it as `report.html`
(`trader backtest`), and `liu.analysis.batch.batch_page(dsn, batch_id)` builds it for a stored
batch (the dashboard's batch view). What it shows, top to bottom:

1. the headline metrics (liu.analysis.metrics' conventions) and the report's notes;
2. equity and drawdown on a trading-time axis (liu.analysis.timeaxis: nights, weekends and data
   gaps collapsed to one bar step and marked with a dotted line; hover shows the calendar time);
3. P&L by strategy and by symbol (bars, tables, cumulative realised P&L per strategy);
4. each traded symbol's price with its fills (entries and exits) and each round trip as a line
   from entry to exit, green when it won;
5. returns by day (bars) and by month (a year × month table);
6. the round trips as a table sorted by clicking a column header.

Offline: plotly's JavaScript is embedded (about 4.8 MB) unless `plotly_js` names a same-origin
path to load it from; the page loads nothing else. Charts are plain plotly JSON in
`<script type="application/json" data-chart=…>` blocks, so tests (and curious users) can read the
very numbers that are drawn.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from liu.analysis import metrics as M
from liu.analysis.fmt import GROUP_COLUMNS, HEADLINE, PLOT_POINTS, decimate, fmt
from liu.analysis.timeaxis import TradingAxis, describe_gap, duration, trading_axis
from liu.analysis.trades import RoundTrip

MAX_SYMBOL_CHARTS = 12  # the symbols with the most round trips (then |P&L|) get a price chart
MAX_TRIP_ROWS = 5000  # rows of the round-trip table; all of them are in the JSON report
PRICE_POINTS = 2000  # points per symbol's price line
MARKED_GAPS = 150  # gaps drawn as dotted lines (the longest); every gap has a hover marker
GREEN, RED, BLUE, GREY = "#1a9850", "#d73027", "#3366cc", "#999999"


# ---------------------------------------------------------------- entry points


def render(report: Any, *, plotly_js: str = "inline") -> str:
    """The whole page for `report` (a liu.analysis.report.Report; see the module docstring)."""
    axis = trading_axis(report.equity_ts)
    sections = [
        _header(report),
        _metrics(report),
        _section(
            "Equity and drawdown", _equity_note(axis), _chart("equity", _equity_figure(report, axis), 620)
        ),
        _by_group(report, axis),
        _prices(report),
        _returns(report),
        _trips(report.trips),
    ]
    if report.open_positions:
        sections.append(_open_positions(report))
    script = (
        f"<script>{_plotly_source()}</script>"
        if plotly_js == "inline"
        else f'<script src="{html.escape(plotly_js)}"></script>'
    )
    title = html.escape(report.title or "liu report")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{CSS}</style>
{script}
</head><body>
{"".join(sections)}
<script>{JS}</script>
</body></html>
"""


# ---------------------------------------------------------------- sections


def _header(r: Any) -> str:
    m = r.metrics
    period = ""
    if "period_start_ns" in m:
        a, b = M.ny_times(np.array([m["period_start_ns"], m["period_end_ns"]]))
        period = f"{a:%Y-%m-%d %H:%M} → {b:%Y-%m-%d %H:%M} New York"
    facts = [
        ("batch", r.batch_id),
        ("environment", r.env),
        ("period", period),
        (
            "equity",
            {
                "given": "marked every minute by the run",
                "fills": "marked at fill prices (fill-marked)",
                "bar closes": "marked at stored bar closes",
            }.get(r.equity_source, r.equity_source),
        ),
        ("fills", f"{m.get('fills', len(r.fills)):,}"),
    ]
    items = "".join(f"<span><b>{k}</b> {html.escape(str(v))}</span>" for k, v in facts if v)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in r.notes)
    return (
        f'<header><h1>{html.escape(r.title or "liu report")}</h1><div class="facts">{items}</div>'
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
        + "</header>"
    )


def _metrics(r: Any) -> str:
    cells = "".join(
        f'<div class="metric" data-key="{key}"><span>{html.escape(label)}</span>'
        f"<b>{html.escape(fmt(r.metrics.get(key), kind))}</b></div>"
        for key, label, kind in HEADLINE
    )
    return f'<section id="metrics"><h2>Metrics</h2><div class="metrics">{cells}</div></section>'


def _equity_note(axis: TradingAxis) -> str:
    if not axis.gaps:
        return "Trading-time axis: no gaps in this run."
    longest = max(g.seconds for g in axis.gaps)
    return (
        f"Trading-time axis: {len(axis.gaps):,} gaps (nights, weekends, data gaps; the longest "
        f"{duration(longest)}) are collapsed to one bar step ({duration(axis.step_ns / 1e9)}) and marked "
        "with dotted lines; hover a point for its New York time."
    )


def _equity_figure(r: Any, axis: TradingAxis) -> dict:
    i = np.union1d(decimate(r.equity, PLOT_POINTS), decimate(r.drawdown, PLOT_POINTS))
    x = axis.x[i]
    when = _times(r.equity_ts[i])
    tickvals, ticktext = axis.ticks()
    traces = [
        _line(x, r.equity[i], "equity", BLUE, when, yaxis="y", fmt="%{y:,.2f}"),
        {
            **_line(x, r.drawdown[i] * 100, "drawdown %", RED, when, yaxis="y2", fmt="%{y:.2f} %"),
            "fill": "tozeroy",
        },
    ]
    shapes = []
    if axis.gaps:
        traces.append(_gap_markers(axis))
        for g in sorted(axis.gaps, key=lambda g: -g.seconds)[:MARKED_GAPS]:
            shapes.append(
                {
                    "type": "line",
                    "xref": "x",
                    "yref": "paper",
                    "x0": g.x,
                    "x1": g.x,
                    "y0": 0,
                    "y1": 1,
                    "line": {"color": "#cccccc", "width": 1, "dash": "dot"},
                }
            )
    layout = {
        **_layout(),
        "xaxis": {
            "tickvals": tickvals,
            "ticktext": ticktext,
            "title": {"text": "trading time (New York)"},
            "anchor": "y2",
            "showgrid": False,
            "zeroline": False,
        },
        "yaxis": {"domain": [0.34, 1], "title": {"text": "equity"}, "tickformat": ",.0f"},
        "yaxis2": {"domain": [0, 0.28], "title": {"text": "drawdown %"}, "rangemode": "tozero"},
        "shapes": shapes,
        "showlegend": False,
        "hovermode": "x unified",
    }
    return {"data": traces, "layout": layout}


def _gap_markers(axis: TradingAxis) -> dict:
    return {
        "type": "scatter",
        "mode": "markers",
        "name": "gap",
        "x": [g.x for g in axis.gaps],
        "y": [0.0] * len(axis.gaps),
        "yaxis": "y2",
        "marker": {"symbol": "line-ns-open", "color": GREY, "size": 10},
        "text": [describe_gap(g) for g in axis.gaps],
        "hovertemplate": "gap: %{text}<extra></extra>",
    }


def _by_group(r: Any, axis: TradingAxis) -> str:
    parts = []
    for rows, key in ((r.per_strategy, "strategy"), (r.per_symbol, "symbol")):
        if not rows:
            continue
        shown = rows[:40]
        fig = {
            "data": [
                {
                    "type": "bar",
                    "orientation": "h",
                    "y": [str(row[key]) for row in shown][::-1],
                    "x": [_num(row["pnl"]) for row in shown][::-1],
                    "marker": {"color": [GREEN if row["pnl"] >= 0 else RED for row in shown][::-1]},
                    "hovertemplate": "%{y}: %{x:,.2f}<extra></extra>",
                }
            ],
            "layout": {
                **_layout(),
                "xaxis": {"title": {"text": "realised P&L (net of fees)"}},
                "yaxis": {"automargin": True},
                "margin": {"l": 110, "r": 20, "t": 10, "b": 40},
            },
        }
        height = 80 + 22 * len(shown)
        more = (
            f'<p class="note">{len(rows) - len(shown)} more in the table.</p>'
            if len(rows) > len(shown)
            else ""
        )
        parts.append(
            f'<div class="group" id="by-{key}"><h3>By {key}</h3>{_chart(f"pnl-{key}", fig, height)}{more}'
            f"{_group_table(rows, key)}</div>"
        )
    if r.trips:
        parts.append(
            '<div class="group wide"><h3>Cumulative realised P&amp;L by strategy</h3>'
            f"{_chart('pnl-cumulative', _cumulative(r.trips, axis), 340)}</div>"
        )
    if not parts:
        return _section("P&L by strategy and symbol", "No round trips in this batch.", "")
    return _section("P&L by strategy and symbol", "", f'<div class="groups">{"".join(parts)}</div>')


def _group_table(rows: list[dict], key: str) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in GROUP_COLUMNS)
    body = "".join(
        f'<tr class="{"win" if row["pnl"] > 0 else "loss" if row["pnl"] < 0 else ""}">'
        f"<td>{html.escape(str(row[key]))}</td>"
        + "".join(f"<td>{html.escape(fmt(row.get(k), kind))}</td>" for k, _, kind in GROUP_COLUMNS)
        + "</tr>"
        for row in rows
    )
    return f'<table class="grid"><thead><tr><th>{key}</th>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cumulative(trips: Sequence[RoundTrip], axis: TradingAxis) -> dict:
    traces = []
    for k, name in enumerate(sorted({t.strategy for t in trips})):
        mine = sorted((t for t in trips if t.strategy == name), key=lambda t: t.exit_ts)
        exits = np.array([t.exit_ts for t in mine], dtype=np.int64)
        pnl = np.cumsum([t.gain_value for t in mine])
        i = decimate(pnl, PLOT_POINTS)
        traces.append(
            {
                **_line(
                    axis.x_of(exits[i]),
                    pnl[i],
                    name,
                    PALETTE[k % len(PALETTE)],
                    _times(exits[i]),
                    fmt="%{y:,.2f}",
                ),
                "line": {"shape": "hv", "color": PALETTE[k % len(PALETTE)]},
            }
        )
    tickvals, ticktext = axis.ticks()
    layout = {
        **_layout(),
        "xaxis": {"tickvals": tickvals, "ticktext": ticktext, "showgrid": False, "zeroline": False},
        "yaxis": {"title": {"text": "P&L"}, "tickformat": ",.0f"},
        "showlegend": True,
    }
    return {"data": traces, "layout": layout}


def _prices(r: Any) -> str:
    if not r.fills:
        return ""
    trips_by: dict[str, list[RoundTrip]] = {}
    for t in r.trips:
        trips_by.setdefault(t.symbol, []).append(t)
    pnl_by = {row["symbol"]: row["pnl"] for row in r.per_symbol}
    symbols = sorted(
        {f.symbol for f in r.fills},
        key=lambda s: (-len(trips_by.get(s, [])), -abs(pnl_by.get(s, 0.0)), s),
    )
    charts = "".join(
        f'<div class="symbol" data-symbol="{html.escape(s)}"><h3>{html.escape(s)}</h3>'
        f"{_chart(f'price-{k}', _price_figure(r, s, trips_by.get(s, [])), 300)}</div>"
        for k, s in enumerate(symbols[:MAX_SYMBOL_CHARTS])
    )
    more = len(symbols) - MAX_SYMBOL_CHARTS
    note = (
        "Each symbol's price with its fills (▲ buy, ▼ sell); a line joins each round trip's entry and exit."
    )
    if more > 0:
        note += f" The {MAX_SYMBOL_CHARTS} symbols with the most round trips are drawn; {more} more are in the tables."
    return _section("Prices, entries and exits", note, f'<div class="symbols">{charts}</div>')


def _price_figure(r: Any, symbol: str, trips: list[RoundTrip]) -> dict:
    fills = [f for f in r.fills if f.symbol == symbol]
    if symbol in r.prices and len(r.prices[symbol][0]):
        pts, px = (np.asarray(a) for a in r.prices[symbol])
        source = "bar close"
    else:
        pts = np.array([f.ts for f in fills], dtype=np.int64)
        px = np.array([f.price for f in fills], dtype=np.float64)
        source = "fill price (no bars stored for this batch)"
    pts = np.asarray(pts, dtype=np.int64)
    order = np.argsort(pts, kind="stable")
    pts, px = pts[order], np.asarray(px, dtype=np.float64)[order]
    axis = trading_axis(pts)
    i = decimate(px, PRICE_POINTS)
    traces = [
        {
            **_line(axis.x[i], px[i], source, "#555555", _times(pts[i]), fmt="%{y:,.4f}"),
            "line": {"width": 1, "color": "#555555"},
        }
    ]
    for side, symbol_, color in (("buy", "triangle-up", GREEN), ("sell", "triangle-down", RED)):
        mine = [f for f in fills if f.side == side]
        if not mine:
            continue
        t = np.array([f.ts for f in mine], dtype=np.int64)
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": side,
                "x": _round(axis.x_of(t)),
                "y": [f.price for f in mine],
                "marker": {  # many fills: smaller markers, so the price stays readable
                    "symbol": symbol_,
                    "color": color,
                    "size": 9 if len(fills) <= 300 else 5,
                    "line": {"width": 0.5 if len(fills) <= 300 else 0, "color": "#222"},
                },
                "text": [
                    f"{side} {f.qty:g} @ {f.price:,.4f} ({html.escape(f.strategy)}) {w}"
                    for f, w in zip(mine, _times(t), strict=True)
                ],
                "hovertemplate": "%{text}<extra></extra>",
            }
        )
    for won in (True, False):
        xs: list[Any] = []
        ys: list[Any] = []
        for t in trips:
            if (t.gain_value > 0) == won:
                a, b = axis.x_of([t.entry_ts, t.exit_ts])
                xs += [round(float(a), 3), round(float(b), 3), None]
                ys += [t.entry_price, t.exit_price, None]
        if xs:
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": "winning trip" if won else "losing trip",
                    "x": xs,
                    "y": ys,
                    "line": {"color": GREEN if won else RED, "width": 1.5, "dash": "dot"},
                    "hoverinfo": "skip",
                }
            )
    tickvals, ticktext = axis.ticks(6)
    layout = {
        **_layout(),
        "xaxis": {"tickvals": tickvals, "ticktext": ticktext, "showgrid": False, "zeroline": False},
        "yaxis": {"tickformat": ",.2f"},
        "showlegend": False,
        "margin": {"l": 60, "r": 10, "t": 10, "b": 40},
    }
    return {"data": traces, "layout": layout}


def _returns(r: Any) -> str:
    day_ts, day_eq = M.daily_equity(r.equity_ts, r.equity)
    if not day_ts.size:
        return ""
    rets = M.daily_returns(r.equity_ts, r.equity, r.start_cash)
    dates = list(M.ny_times(day_ts).strftime("%Y-%m-%d"))
    daily = {
        "data": [
            {
                "type": "bar",
                "x": dates,
                "y": _round(rets * 100, 4),
                "marker": {"color": [GREEN if v >= 0 else RED for v in rets]},
                "hovertemplate": "%{x}: %{y:.3f} %<extra></extra>",
            }
        ],
        "layout": {
            **_layout(),
            "xaxis": {"type": "category", "nticks": 12},
            "yaxis": {"title": {"text": "daily return %"}},
        },
    }
    return _section(
        "Returns by day and by month",
        "End-of-day equity on New York dates (the first day from the start cash); months and years compound the days.",
        _chart("returns-daily", daily, 300) + _monthly_table(dates, day_eq, r.start_cash),
    )


def monthly_returns(
    dates: Sequence[str], day_equity: np.ndarray, start: float
) -> dict[str, dict[int, float]]:
    """year -> {month 1..12 -> return, 0 -> the year's return}, from end-of-day equity."""
    out: dict[str, dict[int, float]] = {}
    prev_month = prev_year = float(start)
    last: dict[str, float] = {}
    for d, e in zip(dates, day_equity, strict=True):
        last[d[:7]] = float(e)
    for ym in sorted(last):
        year, month = ym[:4], int(ym[5:7])
        if year not in out and out:  # a new year: the previous year's last month-end is its base
            prev_year = prev_month
        row = out.setdefault(year, {})
        row[month] = last[ym] / prev_month - 1 if prev_month else math.nan
        row[0] = last[ym] / prev_year - 1 if prev_year else math.nan
        prev_month = last[ym]
    return out


def _monthly_table(dates: Sequence[str], day_eq: np.ndarray, start: float) -> str:
    table = monthly_returns(dates, day_eq, start)
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    head = "".join(f"<th>{m}</th>" for m in months) + "<th>Year</th>"
    rows = []
    for year, vals in table.items():
        cells = "".join(_ret_cell(vals.get(k)) for k in range(1, 13)) + _ret_cell(vals.get(0), "year")
        rows.append(f"<tr><th>{year}</th>{cells}</tr>")
    return f'<table class="grid months" id="monthly"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _ret_cell(v: float | None, cls: str = "") -> str:
    if v is None or not math.isfinite(v):
        return f'<td class="{cls}"></td>'
    alpha = min(0.85, 0.15 + abs(v) * 8)
    color = f"rgba(26,152,80,{alpha:.2f})" if v >= 0 else f"rgba(215,48,39,{alpha:.2f})"
    return f'<td class="{cls}" data-v="{v:.6g}" style="background:{color}">{v * 100:.2f} %</td>'


TRIP_COLUMNS = (
    ("#", "int"),
    ("strategy", "text"),
    ("symbol", "text"),
    ("side", "text"),
    ("qty", "num"),
    ("entry (New York)", "text"),
    ("exit (New York)", "text"),
    ("holding", "num"),
    ("entry price", "num"),
    ("exit price", "num"),
    ("P&L", "num"),
    ("P&L %", "num"),
    ("R", "num"),
    ("fees", "num"),
)


def _trips(trips: Sequence[RoundTrip]) -> str:
    if not trips:
        return _section("Round trips", "No round trips in this batch.", "")
    shown = trips[:MAX_TRIP_ROWS]
    entry = _times(np.array([t.entry_ts for t in shown], dtype=np.int64), "%Y-%m-%d %H:%M:%S")
    exit_ = _times(np.array([t.exit_ts for t in shown], dtype=np.int64), "%Y-%m-%d %H:%M:%S")
    rows = []
    for k, (t, a, b) in enumerate(zip(shown, entry, exit_, strict=True), 1):
        hold = t.holding_ns / 1e9
        cells = (
            _td(k, str(k)),
            _td(t.strategy),
            _td(t.symbol),
            _td(t.side),
            _td(t.qty, f"{t.qty:g}"),
            _td(a),
            _td(b),
            _td(hold, duration(hold)),
            _td(t.entry_price, f"{t.entry_price:,.4f}"),
            _td(t.exit_price, f"{t.exit_price:,.4f}"),
            _td(t.gain_value, f"{t.gain_value:,.2f}"),
            _td(
                t.gain_percentage,
                fmt(t.gain_percentage / 100, "pct") if math.isfinite(t.gain_percentage) else "—",
            ),
            _td(t.r_units, "—" if t.r_units is None else f"{t.r_units:.2f}"),
            _td(t.fees, f"{t.fees:,.2f}"),
        )
        cls = "win" if t.gain_value > 0 else "loss" if t.gain_value < 0 else ""
        rows.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    head = "".join(f'<th data-type="{kind}">{html.escape(name)}</th>' for name, kind in TRIP_COLUMNS)
    note = "Click a column header to sort (again to reverse)."
    if len(trips) > len(shown):
        note += (
            f" The first {len(shown):,} of {len(trips):,} round trips (by exit); all are in the JSON report."
        )
    return _section(
        "Round trips",
        note,
        f'<table class="grid sortable" id="trips"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>',
    )


def _open_positions(r: Any) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(p.strategy)}</td><td>{html.escape(p.symbol)}</td><td>{p.side}</td>"
        f"<td>{p.qty:g}</td><td>{t}</td><td>{p.entry_price:,.4f}</td></tr>"
        for p, t in zip(
            r.open_positions, _times(np.array([p.entry_ts for p in r.open_positions])), strict=True
        )
    )
    return _section(
        "Open at the end",
        "Positions still open after the last fill (not round trips).",
        '<table class="grid"><thead><tr><th>strategy</th><th>symbol</th><th>side</th><th>qty</th>'
        f"<th>since</th><th>entry price</th></tr></thead><tbody>{rows}</tbody></table>",
    )


# ---------------------------------------------------------------- pieces


PALETTE = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00"]


def _section(title: str, note: str, body: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f'<section id="{slug}"><h2>{html.escape(title)}</h2>{note_html}{body}</section>'


def _chart(name: str, figure: dict, height: int) -> str:
    data = json.dumps(figure, separators=(",", ":"), allow_nan=False, default=_json_default).replace(
        "</", "<\\/"
    )
    return (
        f'<div class="chart" id="chart-{name}" style="height:{height}px"></div>'
        f'<script type="application/json" data-chart="chart-{name}">{data}</script>'
    )


def _line(
    x: Iterable, y: Iterable, name: str, color: str, when: list[str], yaxis: str = "y", fmt: str = "%{y}"
) -> dict:
    return {
        "type": "scatter",
        "mode": "lines",
        "name": name,
        "x": _round(x),
        "y": _round(y, 6),
        "yaxis": yaxis,
        "customdata": when,
        "line": {"color": color, "width": 1.4},
        "hovertemplate": f"%{{customdata}}<br>{name}: {fmt}<extra></extra>",
    }


def _layout() -> dict:
    return {
        "template": "plotly_white",
        "margin": {"l": 70, "r": 20, "t": 10, "b": 50},
        "font": {"family": "system-ui, sans-serif", "size": 12},
    }


def _td(sort: Any, text: str | None = None) -> str:
    shown = html.escape(str(sort) if text is None else text)
    if isinstance(sort, int | float) and not isinstance(sort, bool) and math.isfinite(sort):
        return f'<td data-v="{sort:.10g}">{shown}</td>'
    return f"<td>{shown}</td>"


def _times(ts: np.ndarray, fmt: str = "%Y-%m-%d %H:%M") -> list[str]:
    if len(ts) == 0:
        return []
    return list(M.ny_times(np.asarray(ts, dtype=np.int64)).strftime(fmt))


def _round(values: Iterable, digits: int = 3) -> list:
    return [None if v is None or not math.isfinite(v) else round(float(v), digits) for v in values]


def _num(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON: {type(o).__name__}")


_PLOTLY: str | None = None


def _plotly_source() -> str:
    global _PLOTLY  # noqa: PLW0603 - the 4.8 MB library read once per process, not per page
    if _PLOTLY is None:
        from plotly.offline import get_plotlyjs

        _PLOTLY = get_plotlyjs().replace("</script", "<\\/script")
    return _PLOTLY


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;max-width:1400px;padding:16px 24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:4px 0 8px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:12px 0 4px}section{background:#fff;border:1px solid #e4e4e4;border-radius:6px;padding:4px 16px 14px;margin:14px 0}
.facts span{margin-right:18px;font-size:13px;color:#444}.notes{font-size:13px;color:#8a6d3b}
.metrics{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:6px}
.metric{display:flex;justify-content:space-between;border:1px solid #eee;border-radius:4px;padding:6px 10px;font-size:13px}
.metric b{font-variant-numeric:tabular-nums}.note{font-size:12px;color:#666;margin:4px 0 8px}
.groups{display:grid;grid-template-columns:1fr 1fr;gap:18px}.group.wide{grid-column:1/-1}
.symbols{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:12px}
table.grid{border-collapse:collapse;font-size:12px;width:100%;font-variant-numeric:tabular-nums}
table.grid th,table.grid td{border-bottom:1px solid #eee;padding:3px 6px;text-align:right;white-space:nowrap}
table.grid th:first-child,table.grid td:first-child{text-align:left}
table.sortable th{cursor:pointer;user-select:none;background:#f4f4f4;position:sticky;top:0}
table.sortable th.asc:after{content:" ▲"}table.sortable th.desc:after{content:" ▼"}
tr.win td{color:#1a7a40}tr.loss td{color:#b2261c}#trips{display:block;max-height:600px;overflow:auto}
table.months td{text-align:center;min-width:52px}table.months td.year{font-weight:600}
@media (max-width:900px){.groups{grid-template-columns:1fr}}
"""

JS = """
(function(){
  var config={responsive:true,displaylogo:false,topojsonURL:''};
  document.querySelectorAll('script[type="application/json"][data-chart]').forEach(function(s){
    var fig=JSON.parse(s.textContent);
    if(window.Plotly){Plotly.newPlot(s.dataset.chart,fig.data,fig.layout,config);}
  });
  document.querySelectorAll('table.sortable').forEach(function(table){
    var heads=table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads,function(th,col){
      th.addEventListener('click',function(){
        var asc=!th.classList.contains('asc');
        Array.prototype.forEach.call(heads,function(h){h.classList.remove('asc','desc');});
        th.classList.add(asc?'asc':'desc');
        var num=th.dataset.type!=='text', body=table.tBodies[0];
        var rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(a,b){
          var x=a.cells[col], y=b.cells[col], u, v;
          if(num){u=parseFloat(x.dataset.v); v=parseFloat(y.dataset.v);
            if(isNaN(u)) u=-Infinity; if(isNaN(v)) v=-Infinity;}
          else {u=x.textContent; v=y.textContent;}
          return (u<v?-1:u>v?1:0)*(asc?1:-1);
        });
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
})();
"""
