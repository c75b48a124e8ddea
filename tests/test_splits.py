"""Backtests and the daemon across AAPL's 7-for-1 split (2014-06-09) and Time Warner's spin-off of
Time Inc. (the same day, a cash dividend in Lean's factors), in the recorded minute bars.

By default prices are adjusted: nothing jumps. Replayed raw on purpose (`adjustment = "raw"`), the
runner splits positions, orders and bar history at the ex-date as a broker does, and pays the
dividend: nothing jumps either, and an AAPL position makes exactly the adjusted replay's P&L.
"""

from __future__ import annotations

import asyncio
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from liu.analysis.trades import round_trips
from liu.backtest import run_backtest
from liu.plan import TradePlan, load_plan, parse_plan
from liu.plugins import load_class
from liu.store.bars import import_bars
from liu.strategy import Strategy
from liu.testing import sample_data
from tests.helpers import fill_key, run_trader

pytestmark = pytest.mark.data

REPO = Path(__file__).resolve().parent.parent
EX_DATE = int(datetime(2014, 6, 9, 4, 0, tzinfo=UTC).timestamp()) * 10**9  # 00:00 New York
HOLD = '''
from liu.strategy import Strategy, StrategyConfig


class HoldConfig(StrategyConfig):
    qty: dict[str, float] = {}  # symbol -> shares (negative: short)


class Hold(Strategy):
    """Opens one position per symbol on its first bar and holds it; records SMA(30) at every bar."""

    Config = HoldConfig
    seen = []  # (symbol, bar ts, SMA(30), close, position)

    def __init__(self, name, config):
        super().__init__(name, config)
        self.opened = set()

    def on_bar(self, bar, ctx):
        sma = ctx.indicator(bar.symbol, "SMA", timeperiod=30).value
        Hold.seen.append((bar.symbol, bar.ts, sma, bar.close, ctx.position(bar.symbol)))
        qty = self.config.qty.get(bar.symbol)
        if qty and bar.symbol not in self.opened:
            self.opened.add(bar.symbol)
            return [ctx.buy(bar.symbol, qty) if qty > 0 else ctx.sell(bar.symbol, -qty)]
        return None
'''


def _plan(tmp_path: Path, adjustment: str, qty: dict[str, float], extra: str = "") -> TradePlan:
    (tmp_path / "hold.py").write_text(HOLD)
    text = f"""
[session]
duration = "10m"
speed = "max"
[source]
kind = "replay"
path = "{sample_data("us_equity_minute_lean.csv.gz")}"
symbols = {sorted(qty)!r}
start = "2014-06-05"
end = "2014-06-09"
bars = "stream"
adjustment = "{adjustment}"
[broker]
cash = 100000
{extra}
[[strategies]]
name = "hold"
file = "{tmp_path / "hold.py"}"
class = "Hold"
[strategies.config]
qty = {{ {", ".join(f"{s} = {q}" for s, q in qty.items())} }}
"""
    return parse_plan(tomllib.loads(text), "tradeplan.toml", tmp_path)


def _hold(tmp_path: Path, adjustment: str, qty: dict[str, float]):
    """Backtest the holding strategy; (result, the bars it saw per symbol as arrays)."""
    tmp_path.mkdir(exist_ok=True)
    plan = _plan(tmp_path, adjustment, qty)
    seen = load_class(tmp_path / "hold.py", "Hold", Strategy).seen  # type: ignore[attr-defined]
    seen.clear()
    result = run_backtest(plan)
    rows = {}
    for sym in qty:
        mine = [r for r in seen if r[0] == sym]
        rows[sym] = {
            "ts": np.array([r[1] for r in mine]),
            "sma": np.array([np.nan if r[2] is None else r[2] for r in mine]),
            "close": np.array([r[3] for r in mine]),
            "position": np.array([r[4] for r in mine]),
        }
    return result, rows


def _around(ts: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """The last value before the ex-date and the first on it."""
    i = int(np.searchsorted(ts, EX_DATE))
    return float(values[i - 1]), float(values[i])


def _equity_jump(result) -> tuple[float, float]:
    return _around(result.equity_ts, result.equity)


@pytest.mark.parametrize("adjustment", ["all", "raw"])
def test_a_short_held_across_the_split_has_no_pnl_or_indicator_jump(tmp_path, adjustment):
    # The trip: short AAPL from 2014-06-05, through the split. Adjusted, 700 shares at ~$92; raw,
    # 100 shares at ~$645 that become 700 at the ex-date.
    qty = -700 if adjustment == "all" else -100
    result, rows = _hold(tmp_path, adjustment, {"AAPL": qty})
    aapl = rows["AAPL"]
    before, after = _equity_jump(result)
    value = 700 * 92.3
    assert abs(after - before) < 0.005 * value, (before, after)  # 92.22 → 92.42 overnight: ~$140
    # The strategy saw the old basis before the ex-date (raw: $645); from it on, the new one, and the
    # indicator continues from the history moved to the new basis.
    basis = 1 if adjustment == "all" else 7
    sma_before, sma_after = _around(aapl["ts"], aapl["sma"])
    assert sma_after == pytest.approx(sma_before / basis, rel=0.01)
    close_before, close_after = _around(aapl["ts"], aapl["close"])
    assert close_after == pytest.approx(close_before / basis, rel=0.01)
    assert _around(aapl["ts"], aapl["position"]) == (qty, -700)
    # No fill at the other basis: the short's one fill is the entry.
    (fill,) = result.fills
    assert fill.qty == abs(qty)


def test_raw_replay_with_the_broker_side_split_makes_the_adjusted_replays_pnl(tmp_path):
    adjusted, _ = _hold(tmp_path / "a", "all", {"AAPL": -700})
    raw, _ = _hold(tmp_path / "r", "raw", {"AAPL": -100})
    assert raw.equity_ts.tolist() == adjusted.equity_ts.tolist()
    np.testing.assert_allclose(raw.equity, adjusted.equity, rtol=0, atol=1e-6)
    assert raw.strategies["hold"]["positions"] == adjusted.strategies["hold"]["positions"] == {"AAPL": -700}
    assert raw.strategies["hold"]["unrealized"] == pytest.approx(adjusted.strategies["hold"]["unrealized"])


def test_a_raw_replay_pays_the_dividend_so_equity_does_not_drop(tmp_path):
    """TWX opens 2014-06-09 about $2.95 lower (the Time Inc. spin-off); a holder is paid that much."""
    result, rows = _hold(tmp_path, "raw", {"TWX": 1000})
    twx = rows["TWX"]
    close_before, close_after = _around(twx["ts"], twx["close"])
    assert close_before - close_after > 2.0  # the raw price drops at the ex-date
    before, after = _equity_jump(result)
    assert abs(after - before) < 0.01 * 1000 * close_before, (before, after)
    assert result.strategies["hold"]["realized"] == pytest.approx(1000 * 2.95, abs=20)  # the dividend


def test_shipped_plan_backtest_books_no_trip_across_the_split(tmp_path):
    """The issue's report: `trader backtest --data us_equity_minute_lean.csv.gz` with the shipped plan
    booked +$2,210 on a 4-share AAPL short opened at $645 and covered at $93."""
    plan = load_plan(REPO / "tradeplan.toml")
    result = run_backtest(plan, data=sample_data("us_equity_minute_lean.csv.gz"))
    aapl = [f for f in result.fills if f.symbol == "AAPL"]
    assert len(aapl) > 50
    prices = np.array([f.price for f in aapl])
    assert prices.max() / prices.min() < 1.1  # one basis: ~$92, before and after the split
    across = [
        t for t in round_trips(result.fills) if t.symbol == "AAPL" and t.entry_ts < EX_DATE <= t.exit_ts
    ]
    assert across, "the strategy holds an AAPL position over the split"
    assert all(abs(t.gain_value) < 100 for t in across), [
        (t.qty, t.entry_price, t.exit_price) for t in across
    ]
    # The bad print in the split day's first bar (open 645.57, close 92.42) was cut, not traded on.
    assert result.bad_ticks["AAPL"]["bars"] == 1


@pytest.mark.parametrize(("adjustment", "ratio"), [("all", 1.0), ("raw", 7.0)])
def test_bars_imported_into_stock_ohlc_are_adjusted_like_the_replay(pg_dsn, adjustment, ratio):
    """`trader db import` (and so `backtest --from-db` and training on stored bars) adjusts as the replay does."""
    n = asyncio.run(import_bars(pg_dsn, sample_data("us_equity_minute_lean.csv.gz"), adjustment))
    assert n > 10_000

    async def closes() -> list:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return await conn.fetch(
                "SELECT close FROM stock_ohlc WHERE symbol = 'AAPL' AND symbol_date BETWEEN $1 AND $2"
                " ORDER BY symbol_date",
                datetime(2014, 6, 6, 19, 0, tzinfo=UTC),
                datetime(2014, 6, 9, 14, 0, tzinfo=UTC),
            )
        finally:
            await conn.close()

    rows = [r["close"] for r in asyncio.run(closes())]
    jumps = [a / b for a, b in zip(rows, rows[1:], strict=False)]
    assert max(jumps) == pytest.approx(ratio, rel=0.01)  # the split day's first bar


# -- the daemon ------------------------------------------------------------------------------


def _sma_text(tmp_path: Path, adjustment: str, dsn: str) -> str:
    return f"""
[session]
duration = "10m"
speed = "max"
[source]
kind = "replay"
path = "{sample_data("us_equity_minute_lean.csv.gz")}"
symbols = ["AAPL", "TWX"]
start = "2014-06-05"
end = "2014-06-09"
bars = "stream"
adjustment = "{adjustment}"
[broker]
cash = 100000
fee_per_share = 0.005
slippage_bps = 2
[database]
dsn = "{dsn}"
[consumers]
count = 1
[[strategies]]
name = "sma_cross"
file = "{REPO}/strategies/sma_cross.py"
class = "SmaCross"
[strategies.config]
fast_period = 5
slow_period = 20
allocation = 0.3
allow_short = true
"""


@pytest.mark.slow
@pytest.mark.parametrize("adjustment", ["all", "raw"])
def test_daemon_gives_the_backtests_fills_across_the_split(tmp_path, pg_dsn, adjustment):
    text = _sma_text(tmp_path, adjustment, pg_dsn)
    proc, summary = run_trader(tmp_path, text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["end_reason"] == "source ended"
    live = [fill_key(f) for f in summary["consumers"][0]["fills"]]
    result = run_backtest(parse_plan(tomllib.loads(text), "tradeplan.toml", tmp_path))
    assert len(live) > 20
    assert [fill_key(f) for f in result.fills] == live
    ex = [f for f in result.fills if f.symbol == "AAPL" and f.ts >= EX_DATE]
    assert ex and all(f.price < 100 for f in ex)
    if adjustment == "all":
        assert all(f.price < 100 for f in result.fills if f.symbol == "AAPL")
    else:
        assert any(f.price > 600 for f in result.fills if f.symbol == "AAPL")  # raw prices before it
    # The same P&L in both, per strategy, and the same bad-tick counts.
    live_row, back_row = summary["strategies"]["sma_cross"], result.strategies["sma_cross"]
    assert live_row["realized"] == pytest.approx(back_row["realized"])
    assert (
        summary["bad_ticks"]
        == result.bad_ticks
        == {"AAPL": {"band": 0, "conditions": 0, "bars": 1, "moved": 0}}
    )
