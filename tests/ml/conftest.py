"""ML test helpers: synthetic bar files (liu.testing.make_bars) and small model specs written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from liu.testing import make_bars

FEATURES = """
[[features]]
name = "sma_5"
function = "SMA"
params = { timeperiod = 5 }

[[features]]
name = "rsi_7"
function = "RSI"
params = { timeperiod = 7 }

[[features]]
name = "gap"
kind = "ratio"
of = ["close", "sma_5"]

[[features]]
name = "ret_3"
kind = "pct_change"
of = ["close"]
n = 3
"""


def write_bars_csv(path: Path, symbols: list[str], n: int, seed: int = 3) -> Path:
    """Seeded random-walk minute bars as a recorded-bars CSV (lean columns, timestamps = bar start)."""
    rows = []
    for k, sym in enumerate(symbols):
        for _, s, ts, o, h, lo, c, v, _ in make_bars(sym, n, seed=seed + k, price=50.0 + 10 * k):
            rows.append((s, ts, o, h, lo, c, v))
    df = pd.DataFrame(rows, columns=["symbol", "ts", "open", "high", "low", "close", "volume"])
    df.insert(
        1,
        "timestamp",
        pd.to_datetime(df.pop("ts"), unit="ns", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    )
    df["bid_close"] = np.nan  # marks the lean minute format (bars are bar starts)
    df.to_csv(path, index=False)
    return path


def spec_text(
    source: str,
    *,
    symbols: tuple[str, ...] = ("AAA", "BBB"),
    estimator: str = "sklearn.linear_model.LogisticRegression",
    params: str = "{ max_iter = 500 }",
    label: str = 'kind = "forward_return"\nhorizon = 3\nup = 0.0\ndown = 0.0\nclasses = 2',
    folds: int = 3,
    purge: int = 3,
    embargo: int = 3,
    registry: str = 'dir = "registry"\nkeep = 2\nmetric = "roc_auc"',
    name: str = "syn",
    features: str = FEATURES,
) -> str:
    syms = ", ".join(f'"{s}"' for s in symbols)
    return f"""name = "{name}"
{features}
[label]
{label}

[estimator]
class = "{estimator}"
params = {params}

[data]
symbols = [{syms}]
bar_size = "1min"
source = "{source}"

[validation]
folds = {folds}
purge = {purge}
embargo = {embargo}

[registry]
{registry}
"""


@pytest.fixture
def synthetic_spec(tmp_path: Path):
    """Factory: write bars + a spec into tmp_path and return the spec path."""

    def make(n: int = 400, **kw) -> Path:
        write_bars_csv(tmp_path / "bars.csv", list(kw.get("symbols", ("AAA", "BBB"))), n)
        path = tmp_path / "spec.toml"
        path.write_text(spec_text("bars.csv", **kw))
        return path

    return make
