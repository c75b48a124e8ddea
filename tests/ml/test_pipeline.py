"""FeaturePipeline: streaming rows equal batch rows exactly, warm-up is exact, and features never see the future."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from liu.ml.pipeline import FeaturePipeline
from liu.ml.spec import parse_spec
from liu.testing import make_bars, sample_data

COLS = ("open", "high", "low", "close", "volume")

# Every feature kind: single-output TA-Lib, multi-output (MACD, BBANDS), multi-input (ATR, STOCH),
# integer candlestick, volume input, TA-Lib on a feature, and each derived kind (also chained).
ALL_KINDS = [
    {"name": "sma_10", "function": "SMA", "params": {"timeperiod": 10}},
    {"name": "ema_20", "function": "EMA", "params": {"timeperiod": 20}},
    {"name": "rsi_14", "function": "RSI"},
    {"name": "macd_hist", "function": "MACD", "output": "macdhist"},
    {"name": "macd_signal", "function": "MACD", "output": "macdsignal", "params": {"fastperiod": 5}},
    {"name": "bb_upper", "function": "BBANDS", "output": "upperband", "params": {"nbdevup": 1.5}},
    {"name": "atr_14", "function": "ATR"},
    {"name": "stoch_k", "function": "STOCH", "output": "slowk"},
    {"name": "doji", "function": "CDLDOJI"},
    {"name": "obv", "function": "OBV"},
    {"name": "rsi_ema", "function": "EMA", "inputs": ["rsi_14"], "params": {"timeperiod": 5}},
    {"name": "close_vs_sma", "kind": "ratio", "of": ["close", "sma_10"]},
    {"name": "ema_minus_bb", "kind": "diff", "of": ["ema_20", "bb_upper"]},
    {"name": "ret_5", "kind": "pct_change", "of": ["close"], "n": 5},
    {"name": "rsi_change_3", "kind": "change", "of": ["rsi_14"], "n": 3},
    {"name": "vol_change", "kind": "change", "of": ["volume"], "n": 2},
    {"name": "gap_lag_2", "kind": "lag", "of": ["close_vs_sma"], "n": 2},
    {"name": "gap_lag_chg", "kind": "pct_change", "of": ["gap_lag_2"], "n": 1},
]


def _spec(features: list[dict]):
    return parse_spec(
        {
            "name": "p",
            "features": features,
            "label": {"horizon": 2},
            "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
            "data": {"symbols": ["X"], "source": "x.csv"},
            "validation": {"purge": 2, "embargo": 2},
        }
    )


def _stream_rows(pipe: FeaturePipeline, bars: dict[str, np.ndarray]) -> tuple[np.ndarray, list[int]]:
    update = pipe.stream().update  # bound once, as a consumer would: must stay right after warm-up
    rows = np.full((len(bars["close"]), pipe.width), np.nan)
    nones = []
    for i in range(len(bars["close"])):
        row = update(*(bars[c][i] for c in COLS))
        if row is None:
            nones.append(i)
        else:
            assert row.dtype == np.float64 and row.shape == (pipe.width,)
            rows[i] = row
    return rows, nones


def _real_bars(symbol: str) -> dict[str, np.ndarray]:
    df = pd.read_csv(sample_data("us_equity_minute_lean.csv.gz"), usecols=["symbol", *COLS])
    df = df[(df["symbol"] == symbol) & df["close"].notna()]
    return {c: df[c].to_numpy(dtype=np.float64) for c in COLS}


@pytest.mark.parametrize("symbol", ["SPY", "AAPL"])  # AAPL: its 7:1 split is inside the file (a price jump)
def test_stream_equals_batch_on_real_bars(symbol: str) -> None:
    bars = _real_bars(symbol)
    assert len(bars["close"]) > 1000
    pipe = FeaturePipeline(_spec(ALL_KINDS))
    batch = pipe.batch(bars)
    stream, nones = _stream_rows(pipe, bars)
    assert nones == list(range(pipe.lookback))
    # Bit-identical, NaN positions included, for every feature after warm-up ...
    assert np.array_equal(batch[pipe.lookback :], stream[pipe.lookback :], equal_nan=True)
    # ... and each single feature is defined from its own first-valid row on, in both paths.
    for j, name in enumerate(pipe.names):
        first = pipe.first_valid[name]
        assert np.isnan(batch[:first, j]).all(), name
        assert not np.isnan(batch[first:, j]).any(), name


def test_stream_equals_batch_on_synthetic_bars_per_feature() -> None:
    raw = make_bars("S", 600, seed=11)
    bars = {c: np.array([b[3 + k] for b in raw]) for k, c in enumerate(COLS)}
    for feature in ALL_KINDS[:11]:  # each TA-Lib feature alone: its own lookback, its own stream
        pipe = FeaturePipeline(_spec([feature] if "inputs" not in feature else ALL_KINDS[2:3] + [feature]))
        batch = pipe.batch(bars)
        stream, nones = _stream_rows(pipe, bars)
        assert len(nones) == pipe.lookback
        assert np.array_equal(batch[pipe.lookback :], stream[pipe.lookback :], equal_nan=True), feature
        assert not np.isnan(batch[pipe.lookback]).any()
        if pipe.lookback:
            assert np.isnan(batch[pipe.lookback - 1]).any()


def test_features_do_not_see_the_future() -> None:
    bars = _real_bars("IBM")
    pipe = FeaturePipeline(_spec(ALL_KINDS))
    before = pipe.batch(bars)
    rng = np.random.default_rng(5)
    for t in (pipe.lookback + 1, 500, len(bars["close"]) - 50):
        future = {c: v.copy() for c, v in bars.items()}
        for c in COLS:
            future[c][t + 1 :] *= 1 + rng.normal(0, 0.05, len(future[c]) - t - 1)
        after = pipe.batch(future)
        assert np.array_equal(before[: t + 1], after[: t + 1], equal_nan=True)
        assert not np.array_equal(before[t + 1 :], after[t + 1 :], equal_nan=True)  # the perturbation bites


def test_streams_are_independent_per_symbol() -> None:
    pipe = FeaturePipeline(_spec(ALL_KINDS[:3]))
    a = make_bars("A", 200, seed=1)
    b = make_bars("B", 200, seed=2)
    sa, sb, solo = pipe.stream(), pipe.stream(), pipe.stream()
    for x, y in zip(a, b, strict=True):
        ra = sa.update(*x[3:8])
        sb.update(*y[3:8])
        rs = solo.update(*x[3:8])
        assert (ra is None and rs is None) or np.array_equal(ra, rs)


def test_stream_equals_batch_through_zero_division() -> None:
    """Zero volumes make inf and NaN mid-stream (x/0, 0/0): both paths still give the same bits."""
    raw = make_bars("Z", 300, seed=4)
    bars = {c: np.array([b[3 + k] for b in raw]) for k, c in enumerate(COLS)}
    bars["volume"][::7] = 0.0
    bars["volume"][::11] = 0.0
    feats = [
        {"name": "vol_lag", "kind": "lag", "of": ["volume"], "n": 1},
        {"name": "vol_ratio", "kind": "ratio", "of": ["volume", "vol_lag"]},
        {"name": "vol_pct", "kind": "pct_change", "of": ["volume"], "n": 1},
        {"name": "ratio_diff", "kind": "diff", "of": ["vol_ratio", "vol_pct"]},
    ]
    pipe = FeaturePipeline(_spec(feats))
    batch = pipe.batch(bars)
    stream, _ = _stream_rows(pipe, bars)
    assert np.isinf(batch).any() and np.isnan(batch[pipe.lookback :]).any()
    assert np.array_equal(batch[pipe.lookback :], stream[pipe.lookback :], equal_nan=True)


SPECIAL = [0.0, -0.0, 1.5, -2.0, np.nan, np.inf, -np.inf, 1e308, -1e-308, 5e-324]


def test_each_derived_kind_matches_numpy_on_zero_nan_inf_and_extremes() -> None:
    """Python floats raise on x/0 where numpy gives inf/NaN; overflow, underflow, NaN and signed zeros too."""
    pairs = [(a, b) for a in SPECIAL for b in SPECIAL]
    close = np.array([x for pair in pairs for x in pair])  # every ordered pair (a, b) is consecutive ...
    opens = np.array([x for a, b in pairs for x in (b, a)])  # ... and is (close, open) on one bar
    bars = {"open": opens, "high": close, "low": close, "close": close, "volume": np.ones(len(close))}
    feats = [
        {"name": "d", "kind": "diff", "of": ["close", "open"]},
        {"name": "r", "kind": "ratio", "of": ["close", "open"]},
        {"name": "ch1", "kind": "change", "of": ["close"], "n": 1},
        {"name": "pc1", "kind": "pct_change", "of": ["close"], "n": 1},
        {"name": "pc2", "kind": "pct_change", "of": ["close"], "n": 2},
        {"name": "lag1", "kind": "lag", "of": ["close"], "n": 1},
        {"name": "r_of_r", "kind": "ratio", "of": ["r", "pc1"]},
    ]
    pipe = FeaturePipeline(_spec(feats))
    batch = pipe.batch(bars)
    stream, nones = _stream_rows(pipe, bars)
    assert nones == list(range(pipe.lookback))
    b, s = batch[pipe.lookback :], stream[pipe.lookback :]
    for j, name in enumerate(pipe.names):  # special results do occur in every column: the comparison bites
        assert np.isnan(b[:, j]).any() and np.isinf(b[:, j]).any(), name
    assert np.isposinf(b).any() and np.isneginf(b).any() and (b == 0).any()
    assert np.array_equal(b, s, equal_nan=True)
    both = ~np.isnan(b)
    assert np.array_equal(np.signbit(b[both]), np.signbit(s[both]))  # -0.0 stays -0.0


def test_outputs_of_one_talib_call_are_computed_once_and_match_batch() -> None:
    macd = {"function": "MACD", "params": {"fastperiod": 6}}
    feats = [
        {"name": "m", **macd, "output": "macd"},
        {"name": "bb_up", "function": "BBANDS", "output": "upperband"},
        {"name": "m_hist", **macd, "output": "macdhist"},
        {"name": "m_chg", "kind": "change", "of": ["m_hist"], "n": 2},
        {"name": "m_sig", **macd, "output": "macdsignal"},
        {"name": "bb_low", "function": "BBANDS", "output": "lowerband"},
        {"name": "m_other", "function": "MACD", "output": "macdhist"},  # other params: its own call
    ]
    pipe = FeaturePipeline(_spec(feats))
    assert pipe.stream_source.count(" = ta") == 3
    raw = make_bars("M", 400, seed=3)
    bars = {c: np.array([b[3 + k] for b in raw]) for k, c in enumerate(COLS)}
    batch = pipe.batch(bars)
    stream, _ = _stream_rows(pipe, bars)
    assert not np.isnan(batch[pipe.lookback :]).any()
    assert np.array_equal(batch[pipe.lookback :], stream[pipe.lookback :])


def test_talib_input_that_starts_late_keeps_warming_after_the_lookback() -> None:
    """TA-Lib skips leading NaNs: a node whose input is NaN well past the pipeline's lookback stays NaN
    until its own lookback is over, in both paths, and mixed ints/np.float64 inputs change nothing."""
    raw = make_bars("L", 200, seed=8)
    bars = {c: np.array([b[3 + k] for b in raw]) for k, c in enumerate(COLS)}
    bars["open"][:60] = np.nan
    feats = [
        {"name": "gap", "kind": "ratio", "of": ["close", "open"]},
        {"name": "gap_sma", "function": "SMA", "inputs": ["gap"], "params": {"timeperiod": 5}},
        {"name": "sma", "function": "SMA", "params": {"timeperiod": 5}},
        {"name": "gap_sma_lag", "kind": "lag", "of": ["gap_sma"], "n": 1},
    ]
    pipe = FeaturePipeline(_spec(feats))
    assert pipe.lookback < 60
    batch = pipe.batch(bars)
    st = pipe.stream()
    for i in range(len(raw)):
        row = st.update(float(bars["open"][i]), raw[i][4], raw[i][5], np.float64(raw[i][6]), int(raw[i][7]))
        if i >= pipe.lookback:
            assert np.array_equal(row, batch[i], equal_nan=True), i
    assert np.isnan(batch[60 + 3, 1]) and not np.isnan(batch[60 + 5 :]).any()
    assert st.bars == len(raw)


def test_rows_are_fresh_arrays() -> None:
    """A row a consumer keeps (e.g. as ctx.prediction's input) is not overwritten by later updates."""
    pipe = FeaturePipeline(_spec(ALL_KINDS[:3]))
    st = pipe.stream()
    rows, copies = [], []
    for b in make_bars("F", 60, seed=2):
        row = st.update(*b[3:8])
        rows.append(row)
        copies.append(None if row is None else row.copy())  # its values when it was returned
    kept = [(row, copy) for row, copy in zip(rows, copies, strict=True) if row is not None]
    assert len(kept) == 60 - pipe.lookback
    arrays = [row for row, _ in kept]
    assert len({id(a) for a in arrays}) == len(arrays)  # a new array each time, with new values
    assert not any(np.array_equal(a, b) for a, b in zip(arrays[:-1], arrays[1:], strict=True))
    for i, (row, copy) in enumerate(kept):
        assert np.array_equal(row, copy), f"row {i} changed after later updates"
