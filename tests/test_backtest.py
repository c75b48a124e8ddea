"""The backtester: parity with the daemon, an independent NumPy reference, no look-ahead, the fill model."""

from __future__ import annotations

import asyncio
import json
import math
import re
import tomllib
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from liu.analysis.trades import round_trips
from liu.backtest import run_backtest
from liu.events import QUOTE
from liu.plan import TradePlan, parse_plan
from liu.testing import make_bars, sample_data
from tests.helpers import SCRIPT, bar, fill_key, run_trader

REPO = Path(__file__).resolve().parent.parent
DAY = 86_400 * 10**9


def sma_plan(extra: str = "", config: str = "", broker: str = "", source: str = "") -> str:
    return f"""
[session]
duration = "10m"
speed = "max"
[source]
{source}
bars = "stream"
[broker]
cash = 100000
{broker}
{extra}
[[strategies]]
name = "sma_cross"
file = "{REPO}/strategies/sma_cross.py"
class = "SmaCross"
[strategies.config]
{config}
"""


def plan_of(text: str, base: Path) -> TradePlan:
    return parse_plan(tomllib.loads(text), "tradeplan.toml", base)


def trips(report: dict) -> list[dict]:
    """A JSON report's round trips without order ids (those are prefixed with the batch id)."""
    return [{k: v for k, v in t.items() if not k.endswith("order_id")} for t in report["round_trips"]]


@pytest.mark.slow
def test_daemon_replay_and_backtest_give_identical_fills(tmp_path, pg_dsn):
    """The same recorded minute bars and quotes through `trader` (replay) and the backtester.

    One consumer: with several, cash is one account shared across processes and
    SmaCross sizes each entry from it, so which consumer's order reserves cash
    first depends on process scheduling (see the backtest module's docs).
    """
    path = sample_data("us_equity_minute_lean.csv.gz")
    text = sma_plan(
        extra=f'[database]\ndsn = "{pg_dsn}"\n[consumers]\ncount = 1',
        config="fast_period = 5\nslow_period = 20\nallocation = 0.4\nallow_short = true",
        broker="fee_per_share = 0.005\nslippage_bps = 2\nfee_bps = 1",
        source=f'kind = "replay"\npath = "{path}"',
    )
    proc, summary = run_trader(tmp_path, text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["end_reason"] == "source ended"
    live = [fill_key(f) for f in summary["consumers"][0]["fills"]]

    result = run_backtest(plan_of(text, tmp_path), dsn=pg_dsn)
    back = [fill_key(f) for f in result.fills]
    assert len(live) > 100, "the strategy should trade a lot on this data"
    assert back == live  # same fills, same order: symbol, side, quantity, price, fee, timestamp
    c = summary["consumers"][0]
    assert (result.counts["orders"], result.counts["rejected"]) == (c["orders"], c["rejected"])
    assert result.counts["processed"] == c["processed"] == summary["source_events"]

    # Both batches were analysed by the same code: the same round trips, stored in trade_analysis.
    live_report, back_report = summary["report"], result.report.to_json()

    assert trips(live_report) == trips(back_report)
    trade_keys = ("round_trips", "win_rate", "profit_factor", "expectancy", "mean_r", "fees")
    assert {k: live_report["metrics"][k] for k in trade_keys} == {
        k: back_report["metrics"][k] for k in trade_keys
    }
    stored = [asyncio.run(_rows(pg_dsn, b))["trade_analysis"] for b in (summary["batch_id"], result.batch_id)]
    assert len(stored[0]) == len(stored[1]) == len(live_report["round_trips"]) > 50


BREAKOUT = f"""
[[strategies]]
name = "bracket"
file = "{REPO}/strategies/breakout.py"
class = "Breakout"
[[strategies]]
name = "trail"
file = "{REPO}/strategies/breakout.py"
class = "Breakout"
[strategies.config]
trail_percent = 0.5
"""


def _order_key(row: dict) -> tuple:
    """An order row without its batch-specific id prefix: the per-runner sequence number and its fields."""
    seq = row["client_order_id"].split("-", 2)[-1]  # "<batch8>-<consumer|bt>-<seq>[-sl|-tp]"
    reason = re.sub(r"[0-9a-f]{8}-(bt|\d+)-", "", row["reason"] or "")  # reasons name other orders' ids
    return (seq, row["symbol"], row["side"], row["qty"], row["order_type"], row["leg"], row["status"],
            row["filled_qty"], reason)  # fmt: skip


@pytest.mark.slow
def test_brackets_trailing_stops_and_cancels_give_identical_fills_live_and_backtest(tmp_path, pg_dsn):
    """Stop entries with brackets (OCO legs, stops moved by replace) and with trailing stops, entries
    cancelled after waiting: the same fills and the same order histories through `trader` and the backtester."""
    path = sample_data("us_equity_minute_lean.csv.gz")
    text = f"""
[session]
duration = "10m"
speed = "max"
[source]
kind = "replay"
path = "{path}"
bars = "stream"
[broker]
cash = 100000
fee_per_share = 0.005
slippage_bps = 2
persist = false  # like the backtest: the session's gtc orders end with it
[database]
dsn = "{pg_dsn}"
[consumers]
count = 1
{BREAKOUT}"""
    proc, summary = run_trader(tmp_path, text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    live = [fill_key(f) for f in summary["consumers"][0]["fills"]]
    result = run_backtest(plan_of(text, tmp_path), dsn=pg_dsn)
    assert [fill_key(f) for f in result.fills] == live
    stored = [asyncio.run(_rows(pg_dsn, b))["orders"] for b in (summary["batch_id"], result.batch_id)]
    live_orders, back_orders = (sorted(_order_key(r) for r in rows) for rows in stored)
    assert live_orders == back_orders
    # What the run exercised, so the parity above covers it.
    kinds = {(r["order_type"], r["leg"], r["status"]) for r in stored[0]}
    assert {
        ("stop", None, "filled"),  # stop entries
        ("stop", "stop_loss", "filled"),
        ("limit", "take_profit", "filled"),
        ("stop", "stop_loss", "replaced"),  # stops moved up by ctx.replace
        ("trailing_stop", None, "filled"),
        ("stop", None, "cancelled"),  # entries cancelled by the strategy
    } <= kinds
    assert any(r["reason"].startswith("OCO: ") for r in stored[0])
    c = summary["consumers"][0]
    assert (result.counts["orders"], result.counts["cancelled"]) == (c["orders"], c["cancelled"])


def _sma(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    c = np.cumsum(np.insert(x, 0, 0.0))
    out[n - 1 :] = (c[n:] - c[:-n]) / n
    return out


def _reference(
    bars: list[tuple], fast: int, slow: int, cash: float, stop_pct: float = 0.02
) -> tuple[list[tuple], float]:
    """SMA cross, long only, all-in at the next bar's open, with a bracket stop-loss `stop_pct` below the
    signal close: vectorised signals, then a small loop for cash, fills and the stop.

    The stop works from the entry's own bar on: a bar opening at or below it exits at the open, one whose
    low reaches it exits at the stop. The strategy's own exit at a bar's open comes first (and cancels the
    stop). A buy that gaps above the cash it was sized on is cut to what the cash pays.
    """
    o = np.array([b[3] for b in bars])
    lo = np.array([b[5] for b in bars])
    c = np.array([b[6] for b in bars])
    ts = np.array([b[2] for b in bars])
    diff = _sma(c, fast) - _sma(c, slow)
    prev = np.roll(diff, 1)
    valid = ~np.isnan(diff) & ~np.isnan(prev)
    valid[:slow] = False  # the first bar with both SMAs has no previous difference
    up = valid & (prev <= 0) & (diff > 0)
    down = valid & (prev >= 0) & (diff < 0)
    trades, held, stop, pending = [], 0, 0.0, None
    for j in range(len(bars)):
        if pending is not None:
            side, qty = pending
            pending = None
            if side == "sell":
                cash += held * o[j]
                trades.append((int(ts[j]), "sell", held, o[j]))
                held = 0
            else:
                qty = min(qty, math.floor(cash / o[j]))
                cash -= qty * o[j]
                held = qty
                stop = c[j - 1] * (1 - stop_pct) if stop_pct else 0.0  # 0: no stop-loss
                trades.append((int(ts[j]), "buy", qty, o[j]))
        if held and (o[j] <= stop or lo[j] <= stop):
            price = o[j] if o[j] <= stop else stop
            cash += held * price
            trades.append((int(ts[j]), "sell", held, price))
            held = 0
        if up[j] and held == 0:
            qty = math.floor(cash / c[j])
            if qty > 0:
                pending = ("buy", qty)
        elif down[j] and held > 0:
            pending = ("sell", held)
    return trades, cash + held * c[-1]


@pytest.mark.parametrize("stop_pct", [0.02, 0.0])
def test_sma_cross_matches_a_vectorised_numpy_reference(tmp_path, stop_pct):
    bars = make_bars("SIM", 20_000, seed=11)
    text = sma_plan(config=f"fast_period = 10\nslow_period = 30\nallocation = 1.0\nstop_pct = {stop_pct}")
    result = run_backtest(plan_of(text, tmp_path), events=[bars])
    got = [(f.ts, f.side, f.qty, f.price) for f in result.fills]
    expected, final = _reference(bars, 10, 30, 100_000.0, stop_pct)
    assert len(expected) > 200
    assert got == expected
    assert result.final_equity == pytest.approx(final, abs=1e-6)


def test_decisions_before_t_do_not_depend_on_data_after_t(tmp_path):
    bars = make_bars("A", 3000, seed=3) + make_bars("B", 3000, seed=4, price=50.0)
    bars.sort(key=lambda b: (b[2], b[1]))
    cut = bars[len(bars) // 2][2]
    rng = np.random.default_rng(0)
    changed = [
        b if b[2] < cut else (*b[:3], *(np.array(b[3:7]) * rng.uniform(0.5, 1.5)).tolist(), *b[7:])
        for b in bars
    ]
    text = sma_plan(config="fast_period = 5\nslow_period = 20\nallocation = 0.3\nallow_short = true")
    plan = plan_of(text, tmp_path)
    a = run_backtest(plan, events=[bars])
    b = run_backtest(plan, events=[changed])

    def before(result):
        fills = [fill_key(f) for f in result.fills if f.ts < cut]
        # An order placed before T (a bracket leg) may end after T: only what happened before T must match.
        orders = [
            (o.submitted_ts, o.symbol, o.side, o.qty, o.status if o.updated_ts < cut else "open at T")
            for o in result.orders
            if o.submitted_ts < cut
        ]
        return fills, orders

    assert before(a)[0] and before(a) == before(b)
    assert a.equity[a.equity_ts <= cut].tolist() == b.equity[b.equity_ts <= cut].tolist()
    assert [fill_key(f) for f in a.fills] != [fill_key(f) for f in b.fills]  # the change did matter after T


def scripted(tmp_path: Path, orders: list, broker: str = "", cash: float = 10_000.0):
    (tmp_path / "script.py").write_text(SCRIPT)
    text = f"""
[source]
bars = "stream"
[broker]
cash = {cash}
{broker}
[[strategies]]
name = "script"
file = "script.py"
class = "Script"
[strategies.config]
orders = {json.dumps(orders)}
"""
    return plan_of(text, tmp_path)


def test_market_order_fills_at_the_gapped_next_open_with_slippage_and_fees(tmp_path):
    plan = scripted(
        tmp_path,
        [[0, "buy", 10, 0], [2, "sell", 10, 0]],
        "fee_per_share = 0.01\nfee_bps = 10\nslippage_bps = 50",
    )
    bars = [
        bar(0, 100, 101, 99, 100),
        bar(1, 110, 112, 109, 111),
        bar(2, 111, 111, 100, 101),
        bar(3, 90, 91, 89, 90),
    ]
    r = run_backtest(plan, events=[bars])
    buy_px, sell_px = 110 * 1.005, 90 * 0.995  # next opens (a gap each way), moved 50 bps against us
    fee_buy = 0.01 * 10 + buy_px * 10 * 10 / 1e4
    fee_sell = 0.01 * 10 + sell_px * 10 * 10 / 1e4
    assert [(f.side, f.price, f.ts) for f in r.fills] == [
        ("buy", buy_px, bars[1][2]),
        ("sell", sell_px, bars[3][2]),
    ]
    assert [f.fee for f in r.fills] == pytest.approx([fee_buy, fee_sell])
    assert r.final_equity == pytest.approx(10_000 - 10 * buy_px - fee_buy + 10 * sell_px - fee_sell)


def test_limit_orders_fill_at_the_limit_or_at_a_better_gapped_open(tmp_path):
    plan = scripted(tmp_path, [[0, "buy", 5, 98.0], [0, "buy", 5, 95.0], [2, "sell", 5, 104.0]])
    bars = [
        bar(0, 100, 101, 99, 100),
        bar(1, 100, 100, 97, 99),  # low reaches 98: the 98 limit fills at 98; 95 waits
        bar(2, 94, 96, 93, 95),  # opens through 95: fills at the open, 94
        bar(3, 106, 107, 105, 106),  # opens above the 104 sell limit: fills at 106
    ]
    r = run_backtest(plan, events=[bars])
    assert [(f.side, f.qty, f.price, f.ts) for f in r.fills] == [
        ("buy", 5, 98.0, bars[1][2]),
        ("buy", 5, 94.0, bars[2][2]),
        ("sell", 5, 106.0, bars[3][2]),
    ]


def test_orders_beyond_available_cash_are_rejected_and_the_rest_fill(tmp_path):
    # 60 + 50 shares at ~100 against 10,000 cash: the second order finds only ~4,000 available.
    plan = scripted(
        tmp_path,
        [[0, "buy", 60, 0], [0, "buy", 50, 0], [1, "buy", 39, 0]],
    )
    bars = [bar(0, 100, 100, 100, 100), bar(1, 100, 100, 100, 100), bar(2, 100, 100, 100, 100)]
    r = run_backtest(plan, events=[bars])
    assert [(o.qty, o.status) for o in r.orders] == [(60, "filled"), (50, "rejected"), (39, "filled")]
    assert "insufficient cash" in r.orders[1].reason
    assert sum(f.qty for f in r.fills) == 99
    assert r.final_equity == pytest.approx(10_000)


def test_short_sale_profits_when_the_price_falls_and_needs_a_shortable_symbol(tmp_path):
    plan = scripted(tmp_path, [[0, "sell", 10, 0], [1, "buy", 10, 0]])
    bars = [bar(0, 100, 100, 100, 100), bar(1, 100, 100, 80, 80), bar(2, 80, 80, 80, 80)]
    r = run_backtest(plan, events=[bars])
    assert [(f.side, f.price) for f in r.fills] == [("sell", 100), ("buy", 80)]
    assert r.final_equity == pytest.approx(10_200)
    assert r.equity[1] == pytest.approx(10_000 + 10 * 20)  # marked to market while short

    blocked = scripted(tmp_path, [[0, "sell", 10, 0]], 'not_shortable = ["X"]')
    r = run_backtest(blocked, events=[bars])
    assert r.fills == [] and r.orders[0].reason == "X is not shortable"


def test_quotes_fill_market_orders_at_the_ask_and_bid(tmp_path):
    plan = scripted(tmp_path, [[0, "buy", 1, 0]])
    t1 = bar(1, 0, 0, 0, 0)[2]
    events = [
        bar(0, 100, 100, 100, 100),
        (QUOTE, "X", t1, 100.5, 3.0, 101.0, 2.0, 0),
        bar(1, 102, 102, 102, 102),
    ]
    r = run_backtest(plan, events=[events])
    assert [(f.price, f.ts) for f in r.fills] == [(101.0, t1)]


async def _rows(dsn: str, batch_id: str) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            t: await conn.fetch(f"select * from {t} where batch_id = $1", batch_id)
            for t in ("algo_run", "orders", "trades", "trade_analysis")
        }
    finally:
        await conn.close()


def test_backtest_batch_is_stored_with_env_backtest_and_analysed(tmp_path, pg_dsn):
    bars = make_bars("A", 2000, seed=5)
    plan = plan_of(sma_plan(config="fast_period = 5\nslow_period = 20\nallocation = 0.5"), tmp_path)
    r = run_backtest(plan, events=[bars], dsn=pg_dsn)
    rows = asyncio.run(_rows(pg_dsn, r.batch_id))
    [run] = rows["algo_run"]
    assert (run["env"], run["end_reason"]) == ("BACKTEST", "backtest complete") and run["end_time"]
    assert len(rows["orders"]) == len(r.orders) and len(rows["trades"]) == len(r.fills) > 10
    assert sorted((t["symbol"], t["side"], t["qty"], t["price"]) for t in rows["trades"]) == sorted(
        (f.symbol, f.side, f.qty, f.price) for f in r.fills
    )
    assert len(rows["trade_analysis"]) == len(round_trips(r.fills)) > 5


SCANNER = '''
from liu.scanner import Scanner, ScannerConfig


class Hourly(Scanner):
    """Picks A in even hours and B in odd hours (of data time)."""

    Config = ScannerConfig

    def scan(self, ctx):
        return ["A"] if (ctx.now // 3_600_000_000_000) % 2 == 0 else ["B"]
'''

FIRST_BAR = '''
from liu.strategy import Strategy, StrategyConfig


class FirstBar(Strategy):
    """Buys one share the first time it sees each symbol: the order time shows when it was routed."""

    Config = StrategyConfig

    def on_bar(self, bar, ctx):
        if bar.symbol not in ctx.keystore:
            ctx.keystore[bar.symbol] = bar.ts
            return ctx.buy(bar.symbol, 1)
'''


def test_scanners_run_on_their_recurrence_in_data_time(tmp_path):
    (tmp_path / "hourly.py").write_text(SCANNER)
    (tmp_path / "first_bar.py").write_text(FIRST_BAR)
    plan = plan_of(
        """
[source]
bars = "stream"
[[scanners]]
name = "hourly"
file = "hourly.py"
class = "Hourly"
recurrence = "60m"
target_strategies = ["first"]
[[strategies]]
name = "first"
file = "first_bar.py"
class = "FirstBar"
""",
        tmp_path,
    )
    start = 1_700_000_000 * 10**9 // (3600 * 10**9) * 3600 * 10**9  # on the hour: an even hour
    if (start // (3600 * 10**9)) % 2:
        start += 3600 * 10**9
    bars = sorted(
        make_bars("A", 180, start) + make_bars("B", 180, start) + make_bars("C", 180, start),
        key=lambda b: (b[2], b[1]),
    )
    r = run_backtest(plan, events=[bars])
    # A is picked at the first event, B at the next run an hour later; C never.
    assert [(o.symbol, o.submitted_ts) for o in r.orders] == [("A", start), ("B", start + 3600 * 10**9)]


def test_trader_backtest_command_writes_the_report(tmp_path, pg_dsn):
    from liu.cli import main

    path = sample_data("spy_minute_2011_pyalgotrade.csv.gz")
    text = sma_plan(
        extra=f'[database]\ndsn = "{pg_dsn}"',
        config="fast_period = 10\nslow_period = 30\nallocation = 0.5",
        source=f'kind = "replay"\npath = "{path}"',
    )
    (tmp_path / "tradeplan.toml").write_text(text)
    out = tmp_path / "reports"
    args = [
        "--plan",
        str(tmp_path / "tradeplan.toml"),
        "backtest",
        "--start",
        "2011-03-01",
        "--end",
        "2011-03-15",
    ]
    assert main([*args, "--json", str(tmp_path / "r.json"), "--out", str(out)]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    [folder] = out.iterdir()
    assert (folder / "report.html").stat().st_size > 10_000 and (folder / "equity.png").read_bytes()[
        :4
    ] == b"\x89PNG"
    assert report["metrics"]["round_trips"] == len(report["round_trips"]) > 10
    days = {d["date"] for d in report["equity_daily"]}
    assert min(days) == "2011-03-01" and max(days) == "2011-03-15"  # the --start/--end range, inclusive

    # The same bars imported into PostgreSQL give the same backtest.
    assert main(["--plan", str(tmp_path / "tradeplan.toml"), "db", "import", str(path)]) == 0
    assert main([*args, "--from-db", "--json", str(tmp_path / "db.json"), "--out", str(out)]) == 0
    assert trips(json.loads((tmp_path / "db.json").read_text())) == trips(report)


def test_backtest_of_a_missing_file_is_one_clear_error(tmp_path, capsys):
    from liu.cli import main

    (tmp_path / "tradeplan.toml").write_text(
        sma_plan(extra='[database]\ndsn = "postgresql://x@127.0.0.1:1/x"')
    )
    code = main(
        ["--plan", str(tmp_path / "tradeplan.toml"), "backtest", "--data", str(tmp_path / "nope.csv")]
    )
    out = capsys.readouterr().out
    assert code == 2 and "nope.csv: file not found" in out and "Traceback" not in out


def test_backtest_scores_the_registrys_serving_model_and_stores_predictions(tmp_path, pg_dsn):
    """A strategy naming a model: the backtest loads the serving version, as a consumer does."""
    from liu.ml.registry import Registry
    from liu.ml.spec import load_spec
    from tests.ml.helpers import minute_bars, ml_plan, train, wire, write_spec

    bars = minute_bars(("SPY", "IBM"), n=200)
    spec_path = write_spec(tmp_path)
    spec = load_spec(spec_path)
    _, onnx = train(spec_path, bars)
    reg = Registry(spec.registry_root, pg_dsn)
    for metric in (0.6, 0.7):  # version 2 is the best, so it serves
        asyncio.run(reg.register(spec, onnx, {}, metric))
    r = run_backtest(ml_plan(tmp_path, spec_path, version=None), events=[wire(bars)], dsn=pg_dsn)

    async def rows():
        conn = await asyncpg.connect(pg_dsn)
        try:
            return await conn.fetch("select * from predictions where batch_id = $1", r.batch_id)
        finally:
            await conn.close()

    stored = asyncio.run(rows())
    assert {row["version"] for row in stored} == {2}
    assert len({(row["symbol"], row["bar_ts"]) for row in stored}) == len(stored) > 300  # each bar once
    assert r.counts["processed"] == 400
