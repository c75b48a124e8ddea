"""Registry on real PostgreSQL: best K kept (rows and files), version numbers never reused, serving/promote."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import asyncpg
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from liu.errors import ConfigError
from liu.ml.export import read_metadata, to_onnx
from liu.ml.pipeline import FeaturePipeline
from liu.ml.registry import CHANNEL, Registry
from liu.ml.spec import parse_spec


def _spec(tmp_path: Path, name: str = "m", keep: int = 2, metric: str = "roc_auc"):
    return parse_spec(
        {
            "name": name,
            "features": [{"name": "sma", "function": "SMA"}, {"name": "rsi", "function": "RSI"}],
            "label": {"horizon": 2, "classes": 2},
            "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
            "data": {"symbols": ["A"], "source": "x.csv"},
            "validation": {"purge": 2, "embargo": 2},
            "registry": {"dir": "reg", "keep": keep, "metric": metric},
        },
        base_dir=tmp_path,
    )


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2))
    return to_onnx(LogisticRegression().fit(X, X[:, 0] > 0), 2, {"liu.name": "m"})


async def _rows(dsn: str, name: str) -> dict[int, asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["version"]: r for r in await conn.fetch("SELECT * FROM models WHERE name = $1", name)}
    finally:
        await conn.close()


async def test_keeps_best_k_and_never_reuses_numbers(tmp_path: Path, pg_dsn: str, onnx_bytes: bytes) -> None:
    spec = _spec(tmp_path)
    reg = Registry(spec.registry_root, pg_dsn)
    versions = [await reg.register(spec, onnx_bytes, {"m": v}, v) for v in (0.6, 0.7, 0.55, 0.8)]
    assert versions == [1, 2, 3, 4]
    rows = await _rows(pg_dsn, "m")
    assert set(rows) == {2, 4}
    assert [v for v, r in rows.items() if r["is_best"]] == [4]
    for v in (1, 3):
        assert not reg.path("m", v).parent.exists()
    for v in (2, 4):
        path = reg.path("m", v)
        assert Path(rows[v]["path"]) == path.resolve() and path.exists()
        assert read_metadata(path.read_bytes())["liu.version"] == str(v)
        assert rows[v]["spec_hash"] == FeaturePipeline(spec).spec_hash and rows[v]["input_width"] == 2
    assert await reg.serving("m") == 4
    # a worse one is numbered, then dropped at once; numbers keep growing
    assert await reg.register(spec, onnx_bytes, {}, 0.5) == 5
    assert set(await _rows(pg_dsn, "m")) == {2, 4}
    assert await reg.register(spec, onnx_bytes, {}, 0.9) == 6
    rows = await _rows(pg_dsn, "m")
    assert set(rows) == {4, 6} and rows[6]["is_best"] and not rows[4]["is_best"]
    assert json.loads(json.dumps(rows[6]["metric_value"])) == 0.9
    listed = await reg.list("m")
    assert [r["version"] for r in listed] == [4, 6] and [r["serving"] for r in listed] == [False, True]


async def test_lower_is_better_metric_and_nan_ranks_last(
    tmp_path: Path, pg_dsn: str, onnx_bytes: bytes
) -> None:
    spec = _spec(tmp_path, name="ll", keep=2, metric="log_loss")
    reg = Registry(spec.registry_root, pg_dsn)
    for v in (0.9, math.nan, 0.7, 1.1):
        await reg.register(spec, onnx_bytes, {}, v)
    rows = await _rows(pg_dsn, "ll")
    assert set(rows) == {1, 3} and rows[3]["is_best"]


async def test_promote_and_serving(tmp_path: Path, pg_dsn: str, onnx_bytes: bytes) -> None:
    spec = _spec(tmp_path, keep=2)
    reg = Registry(spec.registry_root, pg_dsn)
    assert await reg.serving("m") is None
    for v in (0.6, 0.7):
        await reg.register(spec, onnx_bytes, {}, v)
    assert await reg.serving("m") == 2  # no promotion: the best
    await reg.promote("m", 1)
    assert await reg.serving("m") == 1  # promoted beats best
    # better models arrive: v1 is neither best nor in the best 2, but it is serving, so it stays
    await reg.register(spec, onnx_bytes, {}, 0.8)
    await reg.register(spec, onnx_bytes, {}, 0.9)
    rows = await _rows(pg_dsn, "m")
    assert set(rows) == {1, 3, 4} and rows[4]["is_best"] and reg.path("m", 1).exists()
    assert await reg.serving("m") == 1
    await reg.promote("m", 3)
    assert await reg.serving("m") == 3  # the most recent promotion wins
    await reg.promote("m", 1)
    assert await reg.serving("m") == 1
    with pytest.raises(ConfigError, match=r"'m' has no version 2 \(kept versions: \[1, 3, 4\]\)"):
        await reg.promote("m", 2)  # pruned
    with pytest.raises(ConfigError, match=r"model 'nope' is not in the registry"):
        await reg.promote("nope", 1)
    assert await reg.serving("m") == 1  # failed promotions changed nothing


async def test_promote_notifies_listeners(tmp_path: Path, pg_dsn: str, onnx_bytes: bytes) -> None:
    spec = _spec(tmp_path)
    reg = Registry(spec.registry_root, pg_dsn)
    await reg.register(spec, onnx_bytes, {}, 0.6)
    await reg.register(spec, onnx_bytes, {}, 0.7)
    got: asyncio.Queue = asyncio.Queue()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.add_listener(CHANNEL, lambda *args: got.put_nowait(json.loads(args[3])))
        await reg.promote("m", 1)
        assert await asyncio.wait_for(got.get(), 10) == {"name": "m", "serving": 1}
    finally:
        await conn.close()
