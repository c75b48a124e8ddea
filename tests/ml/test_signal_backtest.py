"""The per-fold signal backtest: hand-written trades at the next bar's open, and only the fold's test bars."""

from __future__ import annotations

import math

import numpy as np
import pytest

from liu.events import BAR
from liu.ml.signal_backtest import BacktestSettings, buy_and_hold, signal_backtest
from liu.ml.spec import load_spec
from liu.ml.train import build_dataset, load_bars, train_model, walk_forward
from liu.plan import BrokerPlan

T0 = 1_700_000_000 * 10**9
MIN = 60 * 10**9


def bar(i: int, o: float, h: float, lo: float, c: float, sym: str = "X") -> tuple:
    return (BAR, sym, T0 + i * MIN, float(o), float(h), float(lo), float(c), 1000.0, 0)


BARS = [
    bar(0, 100, 101, 99, 100),
    bar(1, 100, 101, 99, 100),
    bar(2, 102, 104, 101, 103),
    bar(3, 103, 106, 103, 105),
    bar(4, 107, 108, 105, 106),
    bar(5, 106, 106, 99, 100),
    bar(6, 98, 100, 97, 99),
]
P_UP = [0.40, 0.60, 0.70, 0.50, 0.30, 0.55, 0.90]


def test_hand_made_probabilities_trade_at_the_next_bars_open_with_the_plans_costs() -> None:
    broker = BrokerPlan(cash=10_000, fee_per_share=0.5, slippage_bps=100)
    bt = signal_backtest(BARS, P_UP, threshold=0.55, allocation=0.5, broker=broker)
    # Budget 5,000. Bar 1 closes at 100 with P=0.60 >= 0.55: the broker reserves 100 * 1.01 + 0.5 fee
    # = 101.5 a share, so 49 shares, bought at bar 2's open 102 plus 1% slippage. Bar 2 (0.70) holds.
    # Bar 3 (0.50 < 0.55) exits at bar 4's open 107 less 1%. Bar 4 (0.30) stays flat. Bar 5 (0.55, the
    # threshold itself) enters again: 49 shares at bar 6's open 98 plus 1%. Bar 6 (0.90) holds; the
    # position is marked at bar 6's close, 99.
    assert [(f.side, f.qty, f.price, f.ts, f.fee) for f in bt.result.fills] == [
        ("buy", 49, pytest.approx(102 * 1.01), BARS[2][2], 24.5),
        ("sell", 49, pytest.approx(107 * 0.99), BARS[4][2], 24.5),
        ("buy", 49, pytest.approx(98 * 1.01), BARS[6][2], 24.5),
    ]
    final = 10_000 + 49 * (107 * 0.99 - 102 * 1.01) - 49 * 98 * 1.01 + 49 * 99 - 3 * 24.5
    assert bt.result.final_equity == pytest.approx(final)
    assert bt.signal_return == pytest.approx(final / 10_000 - 1)
    assert bt.round_trips == 1 and bt.bars == 7
    assert bt.buy_hold_return == pytest.approx(99 / 100 - 1)
    m = bt.metrics()
    assert m["signal_return_pct"] == pytest.approx(100 * (final / 10_000 - 1))
    assert (m["round_trips"], m["signal_fills"], m["signal_rejected"]) == (1, 3, 0)


def test_regressor_rule_is_strict_and_nan_means_no_change() -> None:
    # Long when the predicted return > 0: exactly 0 is not long. NaN (no prediction) keeps the position.
    values = [0.0, 0.002, math.nan, -0.001, 0.0, 0.001, -0.5]
    threshold, strict = BacktestSettings().rule(regression=True)
    assert (threshold, strict) == (0.0, True)
    bt = signal_backtest(BARS, values, threshold=threshold, strict=strict)
    # bar 1 enters (fills at bar 2's open), bar 2 NaN holds, bar 3 exits (bar 4's open), bar 4 (0.0)
    # stays flat, bar 5 enters (bar 6's open), bar 6's exit order is never filled: no bar after it.
    assert [(f.side, f.price, f.ts) for f in bt.result.fills] == [
        ("buy", 102, BARS[2][2]),
        ("sell", 107, BARS[4][2]),
        ("buy", 98, BARS[6][2]),
    ]
    # The whole default cash, sized on bar 1's close 100 (1000 shares); bar 2 opened at 102, so the fill is
    # cut to what the cash pays, floor(100_000 / 102) = 980 shares, and the rest is cancelled.
    assert bt.result.fills[0].qty == math.floor(100_000 / 102)
    first = bt.result.orders[0]
    assert (first.status, first.filled_qty) == ("cancelled", 980)
    assert first.reason.startswith("insufficient cash at fill price 102")
    assert [o.status for o in bt.result.orders][-1] != "filled"


def test_symbols_share_the_cash_evenly_and_bars_are_replayed_in_time_order() -> None:
    a = [bar(i, 100, 100, 100, 100, "A") for i in range(3)]
    b = [bar(i, 50, 50, 50, 50, "B") for i in range(3)]
    # Given symbol by symbol (not in time order): the backtest must still run them by time.
    bt = signal_backtest(a + b, [0.9, 0.9, 0.9, 0.1, 0.9, 0.9], threshold=0.5, broker=BrokerPlan(cash=10_000))
    assert [(f.symbol, f.qty, f.ts) for f in bt.result.fills] == [("A", 50, a[1][2]), ("B", 100, b[2][2])]
    assert bt.result.counts["processed"] == 6 and bt.result.counts["rejected"] == 0
    assert buy_and_hold(a + [bar(3, 100, 100, 100, 110, "A")] + b) == pytest.approx((0.10 + 0.0) / 2)


def test_fold_backtests_trade_only_on_their_test_bars_on_the_fold_models_signal(synthetic_spec) -> None:
    """Every fill is at a bar of its fold's test rows; entries and exits follow the fold model's P(up)."""
    spec = load_spec(synthetic_spec(n=400))
    result = train_model(spec, broker=BrokerPlan(cash=50_000, fee_bps=1, slippage_bps=2))
    bars = load_bars(spec)
    ds = build_dataset(spec, bars)
    v = spec.validation
    splits = walk_forward(ds, v.folds, v.purge, v.embargo)
    assert len(splits) == len(result.folds) == 3
    y = ds.y.astype(np.int64)
    total_fills = 0
    for (train, test), fold in zip(splits, result.folds, strict=True):
        bt = fold.backtest
        assert bt is not None and bt.bars == len(test) == bt.result.counts["processed"]
        test_bars = {(ds.symbols[ds.sym[r]], int(ds.ts[r])) for r in test}
        for f in bt.result.fills:
            assert (f.symbol, f.ts) in test_bars
            assert fold.test_start.value <= f.ts <= fold.test_end.value
        total_fills += len(bt.result.fills)

        # Independently: refit the fold model, take P(up) on the test rows, and walk each symbol's bars.
        est = spec.estimator.build().fit(ds.X[train], y[train])
        p_up = est.predict_proba(ds.X[test])[:, list(est.classes_).index(1)]
        expected = []
        for k, sym in enumerate(ds.symbols):
            mine = np.flatnonzero(ds.sym[test] == k)
            held = False
            for j, nxt in zip(mine[:-1], mine[1:], strict=True):
                if p_up[j] >= 0.5 and not held:
                    expected.append((sym, "buy", int(ds.ts[test[nxt]])))
                    held = True
                elif p_up[j] < 0.5 and held:
                    expected.append((sym, "sell", int(ds.ts[test[nxt]])))
                    held = False
        got = sorted((f.symbol, f.side, f.ts) for f in bt.result.fills)
        assert got == sorted(expected)
        m = fold.metrics
        assert m["round_trips"] == sum(1 for e in expected if e[1] == "sell")
        assert m["signal_return_pct"] == pytest.approx(100 * (bt.result.final_equity / 50_000 - 1))
        held_from = []  # buy and hold: each symbol's first test bar's open to its last test bar's close
        for k, sym in enumerate(ds.symbols):
            pos = ds.pos[test[ds.sym[test] == k]]
            held_from.append(bars[sym]["close"][pos.max()] / bars[sym]["open"][pos.min()] - 1)
        assert m["buy_hold_return_pct"] == pytest.approx(100 * np.mean(held_from))
    assert total_fills > 5  # not vacuous
    assert "signal_return_pct" in result.summary_metrics()["mean"]


def test_disabled_backtest_adds_no_columns(synthetic_spec) -> None:
    result = train_model(load_spec(synthetic_spec(n=300)), backtest=BacktestSettings(enabled=False))
    assert result.backtest is None
    assert all(f.backtest is None and "signal_return_pct" not in f.metrics for f in result.folds)
