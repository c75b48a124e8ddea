"""Server-side HTML of the dashboard: the page shell and each live section, from one snapshot.

Every section is a function of the `Hub` snapshot alone, so the first page load and every live update
(the server-sent `state` event carries the sections' HTML) render the same way; the page's script only
swaps sections in and draws the chart. Every value from outside (symbols, strategy names, log lines,
reasons) goes through `html.escape`; the page has no inline script, and its Content-Security-Policy
forbids any.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from liu.stats import RUNNER_COUNTERS

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
LEVELS = (("DEBUG", 10), ("INFO", 20), ("WARNING", 30), ("ERROR", 40))

e = html.escape


def money(v: float | None) -> str:
    return "–" if v is None else f"{v:,.2f}"


def signed(v: float | None) -> str:
    if v is None:
        return "–"
    v = round(v, 2) + 0.0  # no "-0.00"
    cls = "pos" if v > 0 else "neg" if v < 0 else ""
    return f'<span class="{cls}">{v:+,.2f}</span>' if v else "0.00"


def qty(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.4g}"


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    empty: str,
    attrs: Callable[[int], str] | None = None,
) -> str:
    body = "".join(
        f"<tr{attrs(k) if attrs else ''}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
        for k, row in enumerate(rows)
    )
    if not body:
        body = f'<tr class="empty"><td colspan="{len(headers)}">{e(empty)}</td></tr>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- sections ----------------------------------------------------------------------------------------
def status(s: dict) -> str:
    sess, prod = s["session"], s["producer"]
    phase = sess["phase"]
    label = {"starting": "starting", "running": "running", "ending": "ending", "ended": "ended"}[phase]
    reason = f": {e(sess['reason'])}" if sess["reason"] and phase in ("ending", "ended") else ""
    link = "connected" if prod["connected"] else "disconnected"
    market = f' · market <b id="fig-market-time">{e(sess["market_time"] or "–")}</b>'
    return (
        f'<span class="pill {phase}" id="fig-phase">{label}{reason}</span>'
        f"{market} · {sess['elapsed_s']:,.0f}/{sess['duration_s']:,.0f} s"
        f' · <b id="fig-rate">{prod["events_per_s"]:,.0f}</b> events/s'
        f' · <b id="fig-events">{prod["events"]:,}</b> events'
        f' · source {e(sess["source"])} <span class="pill {link}" id="fig-link">{link}</span>'
        f' · reconnects <b id="fig-reconnects">{prod["reconnects"]:,}</b>'
    )


def account(s: dict) -> str:
    a = s["account"]
    state = f"halted ({e(a['halt_reason'])})" if a["halted"] else "trading"
    cards = [
        ("equity", money(a["equity"])),
        ("cash", money(a["cash"])),
        ("buying power", money(a["buying_power"])),
        ("exposure", f"{money(a['gross_exposure'])} <small>{a['exposure_pct']:.1f} %</small>"),
        ("day P&amp;L", signed(a["day_pnl"])),
        ("open orders", f"{a['open_orders']:,}"),
        ("risk state", f'<span class="pill {"halted" if a["halted"] else "trading"}">{state}</span>'),
    ]
    ids = ["equity", "cash", "buying-power", "exposure", "day-pnl", "open-orders", "risk-state"]
    return "".join(
        f'<div class="card"><div class="label">{label}</div><div class="value" id="fig-{i}">{value}</div></div>'
        for (label, value), i in zip(cards, ids, strict=True)
    )


def risk(s: dict) -> str:
    r = s["risk"]
    limits = ", ".join(f"{e(k)} {v:,g}" for k, v in r["limits"].items()) or "no limits set"
    refused = ", ".join(f"{e(k)} {n:,}" for k, n in sorted(r["refused"].items()))
    flattens = s["account"]["flatten_generation"]
    text = f"limits: {limits}; on breach: {e(r['on_breach'])}; flattens: {flattens}"
    rejected = sum(c["rejected"] for c in s["consumers"])
    text += f"; orders rejected: {rejected:,}"
    if refused:
        text += f" (risk refusals: {refused})"
    return text


def positions(s: dict) -> str:
    rows = [
        (
            e(p["strategy"]),
            f"<b>{e(p['symbol'])}</b>",
            qty(p["qty"]),
            money(p["avg_price"]),
            money(p["mark"]),
            signed(p["unrealized"]),
            signed(p["realized"]),
        )
        for p in s["positions"]
    ]
    head = ("strategy", "symbol", "qty", "avg price", "mark (last fill)", "unrealised", "realised")
    return _table(head, rows, "no positions yet")


def orders(s: dict) -> str:
    live = s["session"]["phase"] in ("running", "starting")
    rows = []
    for o in s["orders"]:
        oid = e(o["client_order_id"])
        button = (
            f'<button class="small" data-cmd="cancel" data-order="{oid}" '
            f'data-confirm="Cancel order {oid} ({e(o["side"])} {qty(o["qty"])} {e(o["symbol"])})?">cancel</button>'
            if live
            else ""
        )
        rows.append(
            (
                oid,
                e(o["strategy"]),
                f"<b>{e(o['symbol'])}</b>",
                e(o["side"]),
                f"{qty(o['filled_qty'])}/{qty(o['qty'])}",
                e(o["type"] + (f" ({o['leg']})" if o["leg"] else "")),
                money(o["price"]) if o["price"] is not None else "",
                e(o["status"]),
                e(o["tif"]),
                e(o["submitted"]),
                button,
            )
        )
    more = s["open_orders_total"] - len(s["orders"])
    table = _table(
        ("order", "strategy", "symbol", "side", "filled", "type", "price", "status", "tif", "submitted", ""),
        rows,
        "no open orders",
    )
    return table + (f'<p class="note">and {more:,} more</p>' if more > 0 else "")


def fills(s: dict) -> str:
    rows = [
        (
            e(f["time"]),
            e(f["strategy"]),
            f"<b>{e(f['symbol'])}</b>",
            f'<span class="{e(f["side"])}">{e(f["side"])}</span>',
            qty(f["qty"]),
            money(f["price"]),
            money(f["fee"]),
            e(f["client_order_id"]),
        )
        for f in s["fills"]
    ]
    head = ("time", "strategy", "symbol", "side", "qty", "price", "fee", "order")
    return f'<p class="note">{s["fill_count"]:,} fills in this batch</p>' + _table(head, rows, "no fills yet")


_CONSUMER_COLUMNS = tuple(c for c in RUNNER_COUNTERS if c not in ("received",))


def consumers(s: dict) -> str:
    rows = []
    for c in s["consumers"]:
        stale = ' class="warn"' if c["stale"] or c["malformed"] or c["strategy_errors"] else ""
        lost = ' class="warn"' if c["lost"] else ""
        rows.append(
            (
                str(c["index"]),
                f"{c['events_per_s']:,.0f}",
                f"{c['lag_ms']:,.1f}",
                f"{c['queue']:,}",
                f"{c['backlog_kb']:,.0f}",
                f"{c['received']:,}",
                *(f"<span{stale}>{c[name]:,}</span>" for name in _CONSUMER_COLUMNS),
                f"<span{lost}>{c['lost']:,}</span>",
            )
        )
    head = ("consumer", "events/s", "lag ms", "queue", "backlog KB", "received", *_CONSUMER_COLUMNS, "lost")
    p = s["producer"]
    line = (
        f'<p class="note">producer: {"connected" if p["connected"] else "disconnected"}, '
        f"{p['reconnects']:,} reconnects, {p['events']:,} events in {p['frames']:,} frames, "
        f"{p['unroutable']:,} unroutable</p>"
    )
    return line + _table([h.replace("_", " ") for h in head], rows, "no consumers")


def picks(s: dict) -> str:
    rows = [(e(p["at"]), e(p["scanner"]), e(", ".join(p["symbols"]))) for p in s["picks"]]
    return _table(("at", "scanner", "symbols"), rows, "no scanner picks yet")


def models(s: dict) -> str:
    rows = [
        (e(m["model"]), str(m["version"]), f"{m['per_minute']:,}", f"{m['scores']:,}", e(m["last"]))
        for m in s["models"]
    ]
    empty = "no model in this plan" if not s["models_planned"] else "no scores yet"
    return _table(("model", "serving version", "scores / min", "scores", "last score"), rows, empty)


def log_rows(s: dict) -> str:
    rows = [
        (e(r["t"]), e(r["level"]), e(r["process"]), e(r["name"]), f"<pre>{e(r['message'])}</pre>")
        for r in s["log"]
    ]
    rows.reverse()
    levels = [r["levelno"] for r in s["log"]][::-1]
    return _table(
        ("time", "level", "process", "logger", "message"),
        rows,
        "no log lines yet",
        attrs=lambda k: f' data-level="{levels[k]}"',
    )


def db_error(s: dict) -> str:
    return e(s["db_error"]) if s["db_error"] else ""


SECTIONS: dict[str, Callable[[dict], str]] = {
    "status": status,
    "account": account,
    "risk": risk,
    "positions": positions,
    "orders": orders,
    "fills": fills,
    "consumers": consumers,
    "picks": picks,
    "models": models,
    "log-rows": log_rows,
    "db-error": db_error,
}


def sections(snapshot: dict) -> dict[str, str]:
    """Each live section's HTML, by element id."""
    return {key: render(snapshot) for key, render in SECTIONS.items()}


# -- pages --------------------------------------------------------------------------------------------
def _shell(title: str, body: str, scripts: Sequence[str] = ()) -> str:
    tags = "".join(f'<script src="{e(src)}" defer></script>' for src in scripts)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{e(title)}</title><link rel="icon" href="data:,"><link rel="stylesheet" href="/static/dashboard.css">'
        f"{tags}</head>"
        f"<body>{body}</body></html>"
    )


def live_page(snapshot: dict) -> str:
    """The live page of a running session, with every section filled from `snapshot`."""
    sec = sections(snapshot)
    batch = e(snapshot["session"]["batch_id"])
    options = "".join(
        f'<option value="{n}"{" selected" if n == 20 else ""}>{name} and above</option>' for name, n in LEVELS
    )

    def box(key: str, title: str, extra: str = "") -> str:
        return f'<section><h2>{title}{extra}</h2><div id="{key}">{sec[key]}</div></section>'

    body = (
        '<header><h1>liu</h1><span class="batch">batch '
        f'<a href="/batches/{batch}" id="batch-id">{batch}</a></span>'
        '<nav><a href="/batches">past batches</a> <span class="pill" id="link-state">connecting</span></nav>'
        '<div class="actions">'
        '<button data-cmd="halt" data-confirm="Halt trading? Orders that open or grow a position are refused; '
        'reducing orders pass.">Halt</button>'
        '<button data-cmd="resume" data-confirm="Resume trading? Strategies may open positions again.">'
        "Resume</button>"
        '<button class="danger" data-cmd="flatten" data-confirm="Flatten? This halts, cancels every open order '
        'and closes every position at market.">Flatten</button></div></header>'
        f'<div id="status" class="status">{sec["status"]}</div>'
        '<div id="result" class="result" role="status" hidden></div>'
        f'<div id="db-error" class="error">{sec["db-error"]}</div>'
        f'<div id="account" class="cards">{sec["account"]}</div>'
        f'<p id="risk" class="note">{sec["risk"]}</p>'
        '<section><h2>Equity and drawdown</h2><div id="equity-chart" class="chart"></div></section>'
        '<div class="grid">'
        + box("positions", "Positions")
        + box("orders", "Open orders")
        + "</div>"
        + box("fills", "Latest fills")
        + box("consumers", "Consumers")
        + '<div class="grid">'
        + box("picks", "Scanner picks")
        + box("models", "Models")
        + "</div>"
        + '<section><h2>Log <select id="log-level" aria-label="lowest level shown">'
        + options
        + f'</select></h2><div id="log-rows" class="log">{sec["log-rows"]}</div></section>'
        '<dialog id="confirm"><form method="dialog"><p id="confirm-text"></p>'
        '<menu><button value="cancel" id="confirm-no">No</button>'
        '<button value="ok" id="confirm-yes" class="danger">Yes</button></menu></form></dialog>'
    )
    return _shell(
        f"liu · {snapshot['session']['batch_id'][:8]}",
        body,
        ["/static/plotly.min.js", "/static/dashboard.js"],
    )


def batches_page(rows: list[dict], live_batch: str | None) -> str:
    """The list of every batch in the database, newest first, each linking to its report."""
    table = _table(
        ("batch", "env", "start", "end", "strategies", "fills"),
        (
            (
                f'<a href="/batches/{e(r["batch_id"])}">{e(r["batch_id"])}</a>'
                + (' <span class="pill running">this session</span>' if r["batch_id"] == live_batch else ""),
                e(r["env"] or ""),
                e(_when(r["start"])),
                e(_when(r["end"])),
                e(", ".join(r["strategies"])),
                f"{r['fills']:,}",
            )
            for r in rows
        ),
        "no batch in the database yet: run trader or trader backtest",
    )
    back = '<a href="/">live session</a>' if live_batch else ""
    body = f'<header><h1>liu</h1><span class="batch">batches</span><nav>{back}</nav></header><section>{table}</section>'
    return _shell("liu · batches", body)


def _when(ts: Any) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S %Z") if ts is not None else ""
