"""Walk-forward folds never train inside a test fold's purge/embargo window; train + `trader train` end to end."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import asyncpg
import numpy as np
import onnx
import pytest

from liu.cli import main
from liu.ml.spec import load_spec
from liu.ml.train import FoldResult, build_dataset, load_bars, train_model, walk_forward


def _check_folds(ds, splits, purge: int, embargo: int, horizon: int) -> None:
    seen_test = np.zeros(len(ds.ts), dtype=bool)
    for train, test in splits:
        assert len(train) and len(test)
        assert not seen_test[test].any()  # test blocks are disjoint ...
        seen_test[test] = True
        assert ds.ts[train].max() < ds.ts[test].min()  # ... and walk forward: train strictly before test
        for k, bts in enumerate(ds.bar_ts):
            t_rows = test[ds.sym[test] == k]
            if not len(t_rows):
                continue
            # The window in this symbol's own bars, computed from the test rows' bar times
            first = int(np.searchsorted(bts, ds.ts[t_rows].min()))
            last = int(np.searchsorted(bts, ds.ts[t_rows].max()))
            tr_pos = ds.pos[train[ds.sym[train] == k]]
            assert not ((tr_pos >= first - purge) & (tr_pos <= last + embargo)).any()
            # hence no training label (bars pos+1 .. pos+horizon) reaches a test bar
            assert (tr_pos + horizon < first).all()


@pytest.mark.parametrize(("purge", "embargo"), [(3, 3), (10, 4), (25, 30)])
def test_folds_never_train_inside_purge_or_embargo(synthetic_spec, purge: int, embargo: int) -> None:
    spec = load_spec(synthetic_spec(n=500, purge=purge, embargo=embargo, folds=4))
    ds = build_dataset(spec, load_bars(spec))
    assert len(set(ds.sym)) == 2
    splits = walk_forward(ds, 4, purge, embargo)
    assert len(splits) == 4
    _check_folds(ds, splits, purge, embargo, spec.label.horizon)
    # the purge really removed rows next to each test block (not vacuous)
    no_purge = walk_forward(ds, 4, 0, 0)
    assert all(len(a[0]) > len(b[0]) for a, b in zip(no_purge, splits, strict=True))


def test_folds_with_real_bars_and_gaps() -> None:
    """Real minute bars (missing minutes, overnight gaps, 4 symbols): the same guarantees."""
    from liu.testing import sample_data

    sample_data("us_equity_minute_lean.csv.gz")
    spec = load_spec(Path(__file__).resolve().parents[2] / "models" / "sma_rsi.toml")
    ds = build_dataset(spec, load_bars(spec))
    v = spec.validation
    splits = walk_forward(ds, v.folds, v.purge, v.embargo)
    assert len(splits) == v.folds
    _check_folds(ds, splits, v.purge, v.embargo, spec.label.horizon)


def test_train_model_classifier_metrics(synthetic_spec) -> None:
    spec = load_spec(synthetic_spec(n=400))
    result = train_model(spec)
    assert len(result.folds) == 3 and result.classes == [0, 1]
    for f in result.folds:
        m = f.metrics
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["roc_auc"] <= 1 and m["log_loss"] > 0
        assert set(m["precision"]) == set(m["recall"]) == {"0", "1"}
        assert f.test_start <= f.test_end
    assert result.metric_value == pytest.approx(np.mean([f.metrics["roc_auc"] for f in result.folds]))
    assert result.rows == sum(result.label_counts.values())
    assert result.estimator.n_features_in_ == result.pipeline.width


def test_train_model_regressor(synthetic_spec) -> None:
    spec = load_spec(
        synthetic_spec(
            n=300,
            estimator="sklearn.ensemble.RandomForestRegressor",
            params="{ n_estimators = 10, random_state = 0 }",
            label='kind = "forward_return"\nhorizon = 3\nclasses = 0',
            registry='dir = "registry"\nmetric = "rmse"',
        )
    )
    result = train_model(spec)
    assert result.classes is None and result.metric_name == "rmse"
    assert all(f.metrics["rmse"] > 0 and f.metrics["mae"] > 0 for f in result.folds)
    assert not spec.registry.higher_is_better
    # the regressor's signal (long while the predicted return > 0) is traded on every fold too
    assert result.backtest is not None and result.backtest.rule(regression=True) == (0.0, True)
    for f in result.folds:
        assert f.backtest is not None and f.backtest.bars == f.test_rows
        assert math.isfinite(f.metrics["signal_return_pct"])
        # Long only, each exit sells the whole position: one round trip per sell; entries still open
        # at the fold's end (at most one per symbol) are not round trips.
        fills = f.backtest.result.fills
        sells = sum(x.side == "sell" for x in fills)
        buys = sum(x.side == "buy" for x in fills)
        assert f.metrics["round_trips"] == sells > 0
        assert f.metrics["signal_fills"] == buys + sells == len(fills) and 0 <= buys - sells <= 2


def test_mean_metrics_skip_folds_without_them(synthetic_spec) -> None:
    """A skipped fold (no model, no backtest) neither breaks nor dilutes the means."""
    result = train_model(load_spec(synthetic_spec(n=300)))
    skipped = FoldResult(0, 0, 5, result.folds[0].test_start, result.folds[0].test_end, {"skipped": "x"})
    result.folds.insert(0, skipped)
    mean = result.summary_metrics()["mean"]
    real = result.folds[1:]
    assert mean["roc_auc"] == pytest.approx(np.nanmean([f.metrics["roc_auc"] for f in real]))
    assert mean["signal_return_pct"] == pytest.approx(np.mean([f.metrics["signal_return_pct"] for f in real]))
    assert mean["round_trips"] == pytest.approx(np.mean([f.metrics["round_trips"] for f in real]))


async def _models(dsn: str) -> list:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT * FROM models ORDER BY version")
    finally:
        await conn.close()


def test_trader_train_end_to_end(synthetic_spec, tmp_path: Path, pg_dsn: str, capsys) -> None:
    spec_path = synthetic_spec(n=300)
    plan = tmp_path / "tradeplan.toml"
    plan.write_text(f'[database]\ndsn = "{pg_dsn}"\n')
    assert main(["train", str(spec_path), "--plan", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "walk-forward folds" in out and "roc_auc" in out and "registered syn v1" in out and "best" in out
    rows = asyncio.run(_models(pg_dsn))
    assert [r["version"] for r in rows] == [1] and rows[0]["is_best"]
    path = Path(rows[0]["path"])
    assert path == (tmp_path / "registry" / "syn" / "v1" / "model.onnx").resolve()
    assert (path.parent / "spec.toml").read_text() == spec_path.read_text()
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["liu.version"] == "1" and meta["liu.spec_hash"] == rows[0]["spec_hash"]
    assert rows[0]["input_width"] == 4 and not math.isnan(rows[0]["metric_value"])

    # --plan before the subcommand works too; a second version, then list and promote
    assert main(["--plan", str(plan), "train", str(spec_path)]) == 0
    capsys.readouterr()
    assert main(["--plan", str(plan), "model", "list"]) == 0
    listing = capsys.readouterr().out
    assert "syn" in listing and "roc_auc" in listing
    assert main(["--plan", str(plan), "model", "promote", "syn", "1"]) == 0
    assert "promoted syn v1" in capsys.readouterr().out
    rows = asyncio.run(_models(pg_dsn))
    assert [r["promoted_at"] is not None for r in rows] == [True, False]
    assert main(["--plan", str(plan), "model", "promote", "syn", "9"]) == 2
    err = capsys.readouterr().out
    assert "no version 9" in err and len(err.strip().splitlines()) == 1


async def _fold_metrics(dsn: str) -> list[dict]:
    conn = await asyncpg.connect(dsn)
    try:
        raw = await conn.fetchval("SELECT metrics FROM models ORDER BY version DESC LIMIT 1")
    finally:
        await conn.close()
    return (json.loads(raw) if isinstance(raw, str) else raw)["folds"]


def test_trader_train_shows_each_folds_signal_backtest(
    synthetic_spec, tmp_path: Path, pg_dsn: str, capsys
) -> None:
    spec_path = synthetic_spec(n=300)
    plan = tmp_path / "tradeplan.toml"
    plan.write_text(f'[database]\ndsn = "{pg_dsn}"\n[broker]\ncash = 20000\nfee_per_share = 0.005\n')
    assert (
        main(["--plan", str(plan), "train", str(spec_path), "--threshold", "0.6", "--allocation", "0.5"]) == 0
    )
    out = capsys.readouterr().out
    assert "signal %" in out and "trips" in out and "B&H %" in out
    assert "long when P(up) ≥ 0.6, allocation 0.5" in out
    folds = asyncio.run(_fold_metrics(pg_dsn))  # stored with the model, per fold
    assert len(folds) == 3
    for row in folds:
        assert {"signal_return_pct", "buy_hold_return_pct", "round_trips"} <= set(row)
        # the row of the table shows this fold's figures
        line = next(ln for ln in out.splitlines() if ln.startswith(f"│    {row['fold']} │"))
        assert f"{row['signal_return_pct']:+.2f}" in line and f"{row['buy_hold_return_pct']:+.2f}" in line

    assert main(["--plan", str(plan), "train", str(spec_path), "--no-backtest"]) == 0
    out = capsys.readouterr().out
    assert "walk-forward folds" in out and "B&H %" not in out and "signal %" not in out

    assert main(["--plan", str(plan), "train", str(spec_path), "--allocation", "2"]) == 2
    err = capsys.readouterr().out
    assert "--allocation" in err and "given 2.0" in err and len(err.strip().splitlines()) == 1
