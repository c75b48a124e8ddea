"""ML helpers shared by test modules: a small model spec, real minute bars, training a model to ONNX,
placing it in a registry, and a plan with a strategy that records what `ctx.prediction` says.

`write_spec` and `synthetic_bars` need no recorded data (the spec's `[data]` file is a small synthetic
one); `minute_bars` reads ../shared/data and skips the test without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from liu.events import BAR
from liu.testing import make_bars, sample_data
from tests.ml.conftest import write_bars_csv

SPEC = """
name = "{name}"
[[features]]
name = "sma_5"
function = "SMA"
params = {{ timeperiod = 5 }}
[[features]]
name = "rsi_7"
function = "RSI"
params = {{ timeperiod = 7 }}
[[features]]
name = "close_vs_sma"
kind = "ratio"
of = ["close", "sma_5"]
[[features]]
name = "ret_3"
kind = "pct_change"
of = ["close"]
n = 3
[label]
horizon = 3
up = 0.0
classes = 2
[estimator]
class = "sklearn.ensemble.GradientBoostingClassifier"
params = {{ n_estimators = 20, max_depth = 2, random_state = 0 }}
[data]
symbols = ["SPY"]
source = "{data}"
[validation]
folds = 2
purge = 3
embargo = 3
[registry]
dir = "registry"
metric = "roc_auc"
"""

COLUMNS = ("open", "high", "low", "close", "volume")

RECORDER = '''
from liu.strategy import Strategy

class Recorder(Strategy):
    """Records what ctx.prediction says at each bar close (the outputs for that very bar)."""
    seen = []

    def on_bar(self, bar, ctx):
        for name in ctx.models:
            p = ctx.prediction(name, bar.symbol)
            Recorder.seen.append((name, ctx.model_version(name), bar.symbol, bar.ts, None if p is None else p.copy()))
        return None
'''


def minute_bars(symbols=("SPY",), n: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Real minute bars (trade columns present) per symbol, oldest first."""
    df = pd.read_csv(sample_data("us_equity_minute_lean.csv.gz"))
    df = df[df["symbol"].isin(symbols) & df["close"].notna()].copy()
    df["ts"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601").dt.as_unit("ns").astype("int64")
    out = {}
    for sym, g in df.sort_values("ts").groupby("symbol"):
        g = g.iloc[:n] if n else g
        out[sym] = {c: g[c].to_numpy(np.float64) for c in COLUMNS}
        out[sym]["ts"] = g["ts"].to_numpy(np.int64)
    return out


def synthetic_bars(symbols=("SPY",), n: int = 200, seed: int = 5) -> dict[str, dict[str, np.ndarray]]:
    """Seeded random-walk minute bars (liu.testing.make_bars) in `minute_bars`' shape: for tests that
    need bars but not recorded market data."""
    out = {}
    for k, sym in enumerate(symbols):
        rows = make_bars(sym, n, seed=seed + k, price=100.0 + 50 * k)
        out[sym] = {c: np.array([r[3 + j] for r in rows]) for j, c in enumerate(COLUMNS)}
        out[sym]["ts"] = np.array([r[2] for r in rows], dtype=np.int64)
    return out


def wire(bars: dict[str, dict[str, np.ndarray]]) -> list[tuple]:
    """Bar wire tuples of every symbol, in time order."""
    rows = [
        (BAR, sym, int(b["ts"][i]), b["open"][i], b["high"][i], b["low"][i], b["close"][i], b["volume"][i], 0)
        for sym, b in bars.items()
        for i in range(len(b["ts"]))
    ]
    return sorted(rows, key=lambda r: (r[2], r[1]))


def write_spec(dir: Path, name: str = "tiny") -> Path:
    """The spec `dir/name.toml`; its `[data]` source is 60 synthetic SPY bars beside it (never read by
    the tests that place models by hand, but a spec names one)."""
    data = write_bars_csv(dir / f"{name}_bars.csv", ["SPY"], 60)
    path = dir / f"{name}.toml"
    path.write_text(SPEC.format(name=name, data=data))
    return path


def train(spec_path: Path, bars: dict, estimator=None, drop_feature: bool = False):
    """(fitted estimator, ONNX bytes with liu metadata) on the spec's features of `bars`."""
    from sklearn.ensemble import GradientBoostingClassifier

    from liu.ml.export import to_onnx
    from liu.ml.labels import make_labels
    from liu.ml.pipeline import FeaturePipeline
    from liu.ml.spec import load_spec

    spec = load_spec(spec_path)
    pipe = FeaturePipeline(spec)
    xs, ys = [], []
    for b in bars.values():
        values = pipe.batch_named(b)
        x = pipe.batch(b)
        y = make_labels(spec.label, values)
        ok = ~np.isnan(x).any(axis=1) & ~np.isnan(y)
        xs.append(x[ok])
        ys.append(y[ok])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if drop_feature:
        x = x[:, :-1]
    est = (
        estimator
        if estimator is not None
        else GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0)
    )
    est.fit(x, y)
    meta = {"liu.name": spec.name, "liu.feature_names": pipe.names, "liu.spec_hash": pipe.spec_hash}
    return est, to_onnx(est, x.shape[1], meta)


def place(spec_path: Path, version: int, data: bytes) -> Path:
    """Put a model file where the registry keeps `version` (no database: for pinned versions)."""
    from liu.ml.registry import Registry
    from liu.ml.spec import load_spec

    spec = load_spec(spec_path)
    path = Registry(spec.registry_root, None).path(spec.name, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def ml_plan(tmp_path: Path, spec_path: Path, version: int | None = 1, symbols=None):
    """A plan with one `Recorder` strategy (recorder.py in tmp_path) using the spec's model."""
    from liu.plan import parse_plan

    (tmp_path / "recorder.py").write_text(RECORDER)
    model = {"spec": str(spec_path)} | ({"version": version} if version else {})
    return parse_plan(
        {"strategies": [{"name": "rec", "file": "recorder.py", "class": "Recorder", "models": [model]}]},
        base_dir=tmp_path,
    )


def recorder_seen(runner) -> list:
    """The (model, version, symbol, bar ts, outputs) rows the plan's Recorder saw."""
    return type(runner.slots["rec"].strategy).seen
