"""Training: bars -> features + labels -> purged walk-forward folds -> metrics -> final model on all rows.

Walk-forward: the labelled rows, in time order, are cut into `folds + 1` blocks; fold i tests on block i
and trains only on rows before it. Around each test block, per symbol, `purge` bars before its first bar
and `embargo` bars after its last bar are never trained on (purge >= horizon means no training label
looks into the test block). The model is trained on the float32-rounded features the ONNX model will see.

Each fold model's signal is also traded on its test bars by the real backtester (liu.ml.signal_backtest),
so the table shows money next to the scores; those figures never choose the registry's best model unless
the spec's metric names them.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from liu.errors import ConfigError
from liu.ml.labels import make_labels
from liu.ml.pipeline import FeaturePipeline
from liu.ml.signal_backtest import SignalBacktest, signal_backtest
from liu.ml.spec import BacktestSettings, ModelSpec

if TYPE_CHECKING:
    from liu.plan import BrokerPlan

NY = "America/New_York"
Bars = dict[str, np.ndarray]  # ts (int64 ns, bar start UTC), open, high, low, close, volume


# --------------------------------------------------------------------------- data


def _bar_ns(bar_size: str) -> int | None:
    """Bar width in ns; None for daily bars (grouped by New York date)."""
    m = re.match(r"^(\d+)(min|h|d)$", bar_size)
    assert m is not None  # validated by DataSpec
    n, unit = int(m.group(1)), m.group(2)
    if unit == "d":
        if n != 1:
            raise ConfigError(f"[data] bar_size: given {bar_size!r}, only '1d' is supported for days")
        return None
    return n * (60 if unit == "min" else 3600) * 10**9


def _read_file(path: Path, spec: ModelSpec) -> pd.DataFrame:
    """Recorded bars as a long frame (symbol, ts, open..volume), parsed like the replay server does."""
    from liu.sources.replay import _read, bar_times, bounds, detect_format

    if not path.exists():
        raise ConfigError(f"{spec.file or 'model spec'}: [data] source: file {path} not found")
    df = _read(path)
    try:
        fmt = detect_format(df.columns)
    except ValueError as e:
        raise ConfigError(f"{spec.file or 'model spec'}: [data] source: {path}: {e}") from None
    if fmt not in ("lean_minute", "minute_end", "daily"):
        raise ConfigError(f"{spec.file or 'model spec'}: [data] source: {path} holds {fmt}, expected bars")
    df = df[df["symbol"].isin(spec.data.symbols)]
    ts = bar_times(df, fmt)
    out = pd.DataFrame(
        {
            "symbol": df["symbol"].astype(str).to_numpy(),
            "ts": ts,
            **{c: df[c].to_numpy(dtype="float64", na_value=np.nan) for c in ("open", "high", "low", "close")},
            "volume": df["volume"].to_numpy(dtype="float64", na_value=np.nan)
            if "volume" in df
            else np.zeros(len(df)),
        }
    )
    out = out[~np.isnan(out["close"].to_numpy())]
    lo, hi = bounds(spec.data.start, spec.data.end)
    if lo is not None:
        out = out[out["ts"] >= lo]
    if hi is not None:
        out = out[out["ts"] < hi]
    return out


async def _read_db(dsn: str, spec: ModelSpec) -> pd.DataFrame:
    from liu.store import connection
    from liu.store.bars import US, filter_sql

    sql, args = filter_sql(list(spec.data.symbols), spec.data.start, spec.data.end)
    async with connection(dsn) as conn:
        rows = await conn.fetch(
            f"SELECT symbol, {US} AS us, open, high, low, close, volume FROM stock_ohlc{sql}"
            " ORDER BY symbol, symbol_date",
            *args,
        )
    cols = ["symbol", "us", "open", "high", "low", "close", "volume"]
    df = pd.DataFrame([tuple(r) for r in rows], columns=cols)
    df["ts"] = df.pop("us").astype("int64") * 1000
    return df


def _resample(df: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    width = _bar_ns(spec.data.bar_size)
    if spec.data.hours == "regular" and width is not None:
        local = pd.DatetimeIndex(df["ts"].to_numpy().view("datetime64[ns]"), tz="UTC").tz_convert(NY)
        minutes = local.hour * 60 + local.minute
        df = df[(minutes >= 570) & (minutes < 960)]
    if width is None:
        local = pd.DatetimeIndex(df["ts"].to_numpy().view("datetime64[ns]"), tz="UTC").tz_convert(NY)
        day = local.tz_localize(None).normalize().tz_localize(NY).tz_convert("UTC")
        key = day.as_unit("ns").asi8
    else:
        key = df["ts"].to_numpy() // width * width
    df = df.assign(key=key).sort_values(["symbol", "ts"], kind="stable")
    if (df.groupby(["symbol", "key"]).size() == 1).all():
        return df.drop(columns="ts").rename(columns={"key": "ts"})
    agg = df.groupby(["symbol", "key"], sort=True).agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
    )
    return agg.reset_index().rename(columns={"key": "ts"})


def load_bars(spec: ModelSpec, dsn: str | None = None) -> dict[str, Bars]:
    """Training bars per symbol (sorted by time) from the spec's file or from stock_ohlc."""
    if spec.data.source == "db":
        if dsn is None:
            raise ConfigError(
                f"{spec.file or 'model spec'}: [data] source = 'db' needs a database (trader train --plan)"
            )
        df = asyncio.run(_read_db(dsn, spec))
    else:
        df = _read_file(spec.path(spec.data.source), spec)
    df = _resample(df, spec)
    out: dict[str, Bars] = {}
    for sym in spec.data.symbols:
        part = df[df["symbol"] == sym]
        if len(part):
            out[sym] = {"ts": part["ts"].to_numpy(dtype=np.int64)} | {
                c: part[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "volume")
            }
    if not out:
        raise ConfigError(
            f"{spec.file or 'model spec'}: [data] no bars for symbols {spec.data.symbols} "
            f"between {spec.data.start} and {spec.data.end}"
        )
    return out


# ------------------------------------------------------------------------ dataset


@dataclass
class Dataset:
    """Labelled rows of every symbol, sorted by time. `pos` is the row's bar index within its symbol."""

    X: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    sym: np.ndarray
    pos: np.ndarray
    symbols: list[str]
    bar_ts: list[np.ndarray]  # every bar time per symbol (labelled or not), for purge/embargo in bars


def build_dataset(spec: ModelSpec, bars: dict[str, Bars], pipeline: FeaturePipeline | None = None) -> Dataset:
    pipeline = pipeline or FeaturePipeline(spec)
    parts = []
    symbols = list(bars)
    for k, sym in enumerate(symbols):
        b = bars[sym]
        values = pipeline.batch_named(b)
        X = np.column_stack([values[n] for n in pipeline.names])
        y = make_labels(spec.label, values)
        ok = np.isfinite(X).all(axis=1) & ~np.isnan(y)
        idx = np.flatnonzero(ok)
        parts.append((X[idx], y[idx], b["ts"][idx], np.full(len(idx), k), idx))
    X = np.concatenate([p[0] for p in parts])
    order = np.lexsort((np.concatenate([p[3] for p in parts]), np.concatenate([p[2] for p in parts])))
    return Dataset(
        X=X[order].astype(np.float32).astype(np.float64),
        y=np.concatenate([p[1] for p in parts])[order],
        ts=np.concatenate([p[2] for p in parts])[order],
        sym=np.concatenate([p[3] for p in parts])[order],
        pos=np.concatenate([p[4] for p in parts])[order],
        symbols=symbols,
        bar_ts=[bars[s]["ts"] for s in symbols],
    )


def walk_forward(ds: Dataset, folds: int, purge: int, embargo: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) per fold: expanding window, purged and embargoed per symbol in bars."""
    n = len(ds.ts)
    if n < folds + 1:
        raise ConfigError(f"only {n} labelled rows: too few for {folds} folds")
    cuts = [ds.ts[(n * k) // (folds + 1)] for k in range(1, folds + 1)] + [ds.ts[-1] + 1]
    out = []
    for i in range(folds):
        lo, hi = cuts[i], cuts[i + 1]
        test = np.flatnonzero((ds.ts >= lo) & (ds.ts < hi))
        if not len(test):
            continue
        banned = np.zeros(n, dtype=bool)
        for k, bts in enumerate(ds.bar_ts):
            first = int(np.searchsorted(bts, lo, "left"))  # first bar of this symbol in the test block
            last = int(np.searchsorted(bts, hi, "left")) - 1  # last one
            mine = ds.sym == k
            banned |= mine & (ds.pos >= first - purge) & (ds.pos <= last + embargo)
        train = np.flatnonzero((ds.ts < lo) & ~banned)
        out.append((train, test))
    return out


# ------------------------------------------------------------------------ metrics


def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: list) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support, roc_auc_score

    pred = np.asarray(classes)[np.argmax(proba, axis=1)]
    prec, rec, _, support = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": {str(c): float(p) for c, p in zip(classes, prec, strict=True)},
        "recall": {str(c): float(r) for c, r in zip(classes, rec, strict=True)},
        "support": {str(c): int(s) for c, s in zip(classes, support, strict=True)},
    }
    try:
        if len(classes) == 2:
            out["roc_auc"] = float(roc_auc_score(y, proba[:, 1]))
        else:
            out["roc_auc"] = float(roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    except ValueError:  # a class absent from this test fold
        out["roc_auc"] = math.nan
    p = np.clip(proba, 1e-15, 1.0)
    out["log_loss"] = float(log_loss(y, p / p.sum(axis=1, keepdims=True), labels=classes))
    return out


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {
        "r2": float(r2_score(y, pred)),
        "mae": float(mean_absolute_error(y, pred)),
        "rmse": float(math.sqrt(mean_squared_error(y, pred))),
    }


def _full_proba(est, X: np.ndarray, classes: list) -> np.ndarray:
    """predict_proba with a column for every class (a fold's model may not have seen them all)."""
    p = est.predict_proba(X)
    full = np.zeros((len(X), len(classes)))
    for j, c in enumerate(est.classes_):
        full[:, classes.index(c)] = p[:, j]
    return full


# -------------------------------------------------------------------------- train


@dataclass
class FoldResult:
    fold: int
    train_rows: int
    test_rows: int
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    metrics: dict[str, Any]
    backtest: SignalBacktest | None = None


@dataclass
class TrainResult:
    spec: ModelSpec
    pipeline: FeaturePipeline
    estimator: Any
    folds: list[FoldResult]
    metric_name: str
    metric_value: float
    classes: list | None
    rows: int
    train_window: dict[str, str]
    label_counts: dict[str, int] = field(default_factory=dict)
    backtest: BacktestSettings | None = None  # how each fold's signal was traded; None = not traded

    def summary_metrics(self) -> dict[str, Any]:
        """Mean of each scalar metric over the folds that have it, plus the per-fold metrics."""
        keys: list[str] = []
        for f in self.folds:
            for k, v in f.metrics.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in keys:
                    keys.append(k)
        mean = {
            k: float(np.nanmean(vals))
            if (vals := [f.metrics[k] for f in self.folds if k in f.metrics])
            else math.nan
            for k in keys
        }
        return {
            "mean": mean,
            "folds": [
                {"fold": f.fold, "train_rows": f.train_rows, "test_rows": f.test_rows, **f.metrics}
                for f in self.folds
            ],
            "rows": self.rows,
            "label_counts": self.label_counts,
        }

    def onnx_metadata(self) -> dict[str, Any]:
        return {
            "liu.name": self.spec.name,
            "liu.feature_names": self.pipeline.names,
            "liu.spec_hash": self.pipeline.spec_hash,
            "liu.train_window": self.train_window,
            "liu.metrics": self.summary_metrics()["mean"],
        }


def _iso(ns: int) -> pd.Timestamp:
    return pd.Timestamp(int(ns), unit="ns", tz="UTC")


def fold_bars(ds: Dataset, bars: dict[str, Bars], rows: np.ndarray) -> list[tuple]:
    """The bars of dataset rows `rows` as BAR wire tuples (2, symbol, ts, o, h, l, c, v, 0), in row order."""
    out = []
    for r in rows:
        sym = ds.symbols[int(ds.sym[r])]
        b, p = bars[sym], int(ds.pos[r])
        out.append(
            (2, sym, int(b["ts"][p]), float(b["open"][p]), float(b["high"][p]), float(b["low"][p]),
             float(b["close"][p]), float(b["volume"][p]), 0)
        )  # fmt: skip
    return out


def backtest_settings(spec: ModelSpec, given: BacktestSettings | None = None) -> BacktestSettings:
    """`given` (the CLI's flags), else the spec's `[backtest]` table."""
    return given if given is not None else spec.backtest


def train_model(
    spec: ModelSpec,
    *,
    dsn: str | None = None,
    console=None,
    broker: BrokerPlan | None = None,
    backtest: BacktestSettings | None = None,
) -> TrainResult:
    """Walk-forward evaluation (with each fold's signal backtest), then the final model on all rows.

    `broker` (the tradeplan's [broker]: cash, fees, slippage) is the paper broker the signal backtests
    use; `backtest` overrides the spec's `[backtest]` settings.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    pipeline = FeaturePipeline(spec)
    bars = load_bars(spec, dsn)
    ds = build_dataset(spec, bars, pipeline)
    v = spec.validation
    splits = walk_forward(ds, v.folds, v.purge, v.embargo)
    classify = spec.label.task == "classification"
    y = ds.y.astype(np.int64) if classify else ds.y
    classes = sorted({int(c) for c in y}) if classify else None
    settings = backtest_settings(spec, backtest)
    threshold, strict = settings.rule(not classify)
    folds: list[FoldResult] = []
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
        console=console, disable=console is None, transient=False,
    )  # fmt: skip
    with progress:
        task = progress.add_task(f"{spec.name}: {len(ds.ts)} rows", total=len(splits) + 1)
        for i, (tr, te) in enumerate(splits, 1):
            progress.update(task, description=f"{spec.name}: fold {i}/{len(splits)} ({len(tr)} train rows)")
            if len(tr) == 0 or (classify and len(set(y[tr])) < 2):
                metrics: dict[str, Any] = {"skipped": "too few training rows or a single class"}
            else:
                est = spec.estimator.build().fit(ds.X[tr], y[tr])
                if classify:
                    proba = _full_proba(est, ds.X[te], classes)
                    metrics = classification_metrics(y[te], proba, classes)
                    signal = proba[:, classes.index(max(classes))]  # P(up): the highest class is "up"
                else:
                    signal = est.predict(ds.X[te])
                    metrics = regression_metrics(y[te], signal)
            bt = None
            if settings.enabled and "skipped" not in metrics:
                progress.update(task, description=f"{spec.name}: fold {i}/{len(splits)} signal backtest")
                bt = signal_backtest(
                    fold_bars(ds, bars, te),
                    signal,
                    threshold=threshold,
                    strict=strict,
                    allocation=settings.allocation,
                    broker=broker,
                )
                metrics |= bt.metrics()
            folds.append(
                FoldResult(i, len(tr), len(te), _iso(ds.ts[te[0]]), _iso(ds.ts[te[-1]]), metrics, bt)
            )
            progress.advance(task)
        progress.update(task, description=f"{spec.name}: final fit on {len(ds.ts)} rows")
        final = spec.estimator.build().fit(ds.X, y)
        progress.advance(task)
    name = spec.registry.metric
    values = [f.metrics[name] for f in folds if name in f.metrics]
    metric_value = (
        float(np.nanmean(values)) if values and not all(math.isnan(x) for x in values) else math.nan
    )
    counts = {str(c): int((y == c).sum()) for c in classes} if classify else {}
    return TrainResult(
        spec=spec,
        pipeline=pipeline,
        estimator=final,
        folds=folds,
        metric_name=name,
        metric_value=metric_value,
        classes=classes,
        rows=len(ds.ts),
        train_window={
            "start": _iso(ds.ts[0]).isoformat(),
            "end": _iso(ds.ts[-1]).isoformat(),
            "symbols": ",".join(ds.symbols),
            "bar_size": spec.data.bar_size,
        },
        label_counts=counts,
        backtest=settings if settings.enabled else None,
    )
