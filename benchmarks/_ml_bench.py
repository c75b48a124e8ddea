"""The model for the ML variant of benchmarks/live_path.py, trained and placed for a pinned plan entry.

The consumers must load it through liu's own path (tradeplan `models = [{spec, version = 1}]` →
`load_plan_models` → `build_runner` → `ModelScorer` bar hook), so the benchmark writes a copy of
models/sma_rsi.toml whose registry dir is a temp dir, trains the spec's own estimator (100-tree
GradientBoostingClassifier, the spec's 3-class label) on the spec's 12 features of synthetic minute
bars (no recorded data needed), exports it with liu.ml.export and puts the file where
`Registry(spec.registry_root, None).path(name, 1)` looks. No database: the version is pinned.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _synthetic import FIELDS, make_bars

from liu.ml.export import outputs_of, to_onnx
from liu.ml.pipeline import FeaturePipeline
from liu.ml.registry import Registry
from liu.ml.spec import load_spec
from liu.ml.train import build_dataset

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "models" / "sma_rsi.toml"
VERSION = 1


@dataclass(frozen=True)
class BenchModel:
    """What the plan entry needs (spec file, pinned version) and what the report says about the model."""

    spec_path: str
    name: str
    version: int
    estimator: str
    trees: int  # boosting stages (n_estimators_); a 3-class model has one tree per class per stage
    classes: list
    features: int
    lookback: int  # bars before the first scored bar of a symbol
    train_rows: int
    train_s: float
    onnx_bytes: int
    path: str

    def as_dict(self) -> dict:
        return asdict(self)


def spec_copy(work: Path) -> Path:
    """models/sma_rsi.toml with its registry dir in `work` (and its data source made absolute)."""
    text = SPEC.read_text()
    original = load_spec(SPEC)
    registry = work / "registry"
    text, n_dir = re.subn(r'(?m)^dir = ".*"$', f'dir = "{registry}"', text)
    text, n_src = re.subn(r'(?m)^source = ".*"$', f'source = "{original.path(original.data.source)}"', text)
    if n_dir != 1 or n_src != 1:
        raise RuntimeError(f"{SPEC}: expected one [registry] dir and one [data] source line to rewrite")
    path = work / SPEC.name
    path.write_text(text)
    if load_spec(path).registry_root != registry:
        raise RuntimeError(f"{path}: registry dir did not move to {registry}")
    return path


def train_and_place(spec, pipe: FeaturePipeline, bars: dict, version: int) -> tuple[Any, Path, int]:
    """Fit the spec's estimator on `bars` with the training code's own dataset, and write the ONNX file
    where the registry keeps `version` (no database: the plan pins it). (estimator, path, rows)."""
    ds = build_dataset(spec, bars, pipe)
    est = spec.estimator.build().fit(ds.X, ds.y)
    meta = {
        "liu.name": spec.name,
        "liu.version": str(version),
        "liu.feature_names": pipe.names,
        "liu.spec_hash": pipe.spec_hash,
    }
    path = Registry(spec.registry_root, None).path(spec.name, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_onnx(est, pipe.width, meta))
    return est, path, len(ds.y)


def prepare(work: Path, symbols: int = 4, bars: int = 2500, seed: int = 11) -> BenchModel:
    """Train the spec's estimator on synthetic bars; write the ONNX file as registry version 1."""
    t0 = time.monotonic()
    spec_path = spec_copy(work)
    spec = load_spec(spec_path)
    pipe = FeaturePipeline(spec)
    data = make_bars(symbols, bars, seed)
    series = {f"S{i}": {**{c: data[c][i] for c in FIELDS}, "ts": data["ts"]} for i in range(symbols)}
    est, path, rows = train_and_place(spec, pipe, series, VERSION)
    return BenchModel(
        spec_path=str(spec_path),
        name=spec.name,
        version=VERSION,
        estimator=type(est).__name__,
        trees=int(getattr(est, "n_estimators_", 0)),
        classes=list(outputs_of(est)),
        features=pipe.width,
        lookback=pipe.lookback,
        train_rows=rows,
        train_s=round(time.monotonic() - t0, 2),
        onnx_bytes=path.stat().st_size,
        path=str(path),
    )
