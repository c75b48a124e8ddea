"""Live scoring: ONNX in the runner equals scikit-learn, bad model files are refused, predictions are stored.

On synthetic bars: none of this needs recorded market data.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import asyncpg
import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from liu.brokers.account import Account
from liu.engine import build_runner
from liu.ml.inference import (
    ModelFileError,
    ModelScorer,
    ModelWatcher,
    attach_models,
    load_model,
    load_plan_models,
    scorer_of,
)
from liu.ml.pipeline import FeaturePipeline
from liu.ml.predictions import PredictionWriter
from liu.ml.registry import CHANNEL, Registry
from liu.ml.spec import load_spec
from tests.ml.helpers import (
    minute_bars,
    ml_plan,
    place,
    recorder_seen,
    synthetic_bars,
    train,
    wire,
    write_spec,
)


@pytest.mark.parametrize(
    "make_estimator",
    [
        lambda: GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0),
        lambda: LogisticRegression(max_iter=500),
    ],
    ids=["gradient_boosting", "logistic_regression"],
)
async def test_runner_scores_like_sklearn_predict_proba(tmp_path, make_estimator):
    """Through plan → build_runner → bar hook → ctx.prediction: the estimator's own probabilities, to 1e-5."""
    bars = synthetic_bars(("SPY", "IBM"), n=400)
    spec_path = write_spec(tmp_path)
    est, onnx_bytes = train(spec_path, bars, make_estimator())
    place(spec_path, 1, onnx_bytes)
    plan = ml_plan(tmp_path, spec_path, version=1)
    runner = build_runner(plan, Account(1e6), {}, order_prefix="t")
    recorder_seen(runner).clear()
    runner.assign(bars)
    await runner.process(wire(bars))

    pipe = FeaturePipeline(load_spec(spec_path))
    seen = recorder_seen(runner)
    assert len(seen) == sum(len(b["ts"]) for b in bars.values())
    for sym, b in bars.items():
        x = pipe.batch(b)
        got = [s for s in seen if s[2] == sym]
        assert [s[3] for s in got] == list(b["ts"])
        valid = ~np.isnan(x).any(axis=1)
        assert [s[4] is not None for s in got] == list(valid)  # None exactly while warming up
        expected = est.predict_proba(x[valid])
        scored = np.array([s[4] for s in got if s[4] is not None])
        assert scored.shape == expected.shape
        np.testing.assert_allclose(scored, expected, atol=1e-5, rtol=0)
    stats = scorer_of(runner).stats()["tiny"]
    assert stats["scored"] == {"1": sum(s[4] is not None for s in seen)}
    assert stats["bars"] == stats["warming"] + stats["scored"]["1"] == len(seen)
    assert scorer_of(runner).classes("tiny") == (0.0, 1.0)


def _bad_file(kind: str, spec_path: Path, tmp_path: Path, bars: dict) -> bytes:
    if kind == "corrupt":
        return b"\x08\x07 this is not an onnx model" * 10
    if kind == "wrong_width":
        return train(spec_path, bars, drop_feature=True)[1]
    # spec-hash mismatch: a model trained on another spec's features (same names and width)
    (tmp_path / "other").mkdir(exist_ok=True)
    other = write_spec(tmp_path / "other")
    other.write_text(other.read_text().replace("timeperiod = 7", "timeperiod = 9"))
    return train(other, bars)[1]


BAD = {
    "corrupt": "onnxruntime cannot load it",
    "wrong_width": "input width 3, but the feature pipeline built from",
    "spec_hash": "differs from",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_model_file_is_refused_with_one_clear_error(tmp_path, kind):
    bars = synthetic_bars(n=200)
    spec_path = write_spec(tmp_path)
    path = place(spec_path, 2, _bad_file(kind, spec_path, tmp_path, bars))
    pipe = FeaturePipeline(load_spec(spec_path))
    with pytest.raises(ModelFileError) as err:
        load_model(path, pipe, name="tiny", version=2, spec_file=spec_path)
    msg = str(err.value)
    assert msg.startswith(f"model tiny version 2 ({path}): ")
    assert BAD[kind] in msg
    assert "\n" not in msg


@pytest.mark.parametrize("kind", list(BAD))
async def test_consumer_keeps_its_version_when_a_bad_one_is_promoted(tmp_path, pg_dsn, caplog, kind):
    """Serving v1; v2 (bad) promoted: refused, logged once, v1 keeps scoring; v3 (good) promoted: swapped in."""
    bars = synthetic_bars(("SPY",), n=300)
    first = {s: {k: v[:150] for k, v in b.items()} for s, b in bars.items()}
    rest = {s: {k: v[150:] for k, v in b.items()} for s, b in bars.items()}
    spec_path = write_spec(tmp_path)
    spec = load_spec(spec_path)
    reg = Registry(spec.registry_root, pg_dsn)
    _, good = train(spec_path, bars)
    assert await reg.register(spec, good, {}, 0.6) == 1
    plan = ml_plan(tmp_path, spec_path, version=None)
    models = await load_plan_models(plan, pg_dsn)
    runner = build_runner(plan, Account(1e6), {}, order_prefix="t", models=models)
    scorer = scorer_of(runner)
    watcher = ModelWatcher(scorer, models, pg_dsn)
    await watcher.start()
    try:
        runner.assign(bars)
        await runner.process(wire(first))
        bad = _bad_file(kind, spec_path, tmp_path, bars)
        if kind == "corrupt":  # the registry itself only stores valid ONNX: break the file afterwards
            v2 = await reg.register(spec, good, {}, 0.5)
            reg.path("tiny", v2).write_bytes(bad)
        else:
            v2 = await reg.register(spec, bad, {}, 0.5)
        await reg.promote("tiny", v2)
        with caplog.at_level(logging.ERROR, logger="liu.ml.inference"):
            for _ in range(3):
                watcher._next_all = 0  # force a recheck each time, as if seconds had passed
                await watcher.poll()
        refusals = [r for r in caplog.records if "keeping version 1 of model tiny" in r.getMessage()]
        assert len(refusals) == 1, caplog.text
        assert BAD[kind] in refusals[0].getMessage()
        assert scorer.models["tiny"].version == 1
        await runner.process(wire(rest))
        stats = scorer.stats()["tiny"]
        assert set(stats["scored"]) == {"1"} and stats["refused"].keys() == {str(v2)}
        assert stats["scored"]["1"] + stats["warming"] == 300

        v3 = await reg.register(spec, good, {}, 0.4)
        # The event the consumer waits for: the promotion's NOTIFY on the watcher's own LISTEN connection.
        # This listener is added after the watcher's, so when it fires the watcher has seen it too.
        promoted = asyncio.Event()

        def on_notify(conn, pid, channel, payload) -> None:
            if json.loads(payload) == {"name": "tiny", "serving": v3}:
                promoted.set()

        await watcher._conn.add_listener(CHANNEL, on_notify)
        await reg.promote("tiny", v3)
        try:
            await asyncio.wait_for(promoted.wait(), 30)
        except TimeoutError:
            raise AssertionError("the promotion of version 3 was not NOTIFYed within 30s") from None
        watcher._next_all = float("inf")  # no periodic recheck: the notification alone must do it
        await watcher.poll()
        assert scorer.models["tiny"].version == v3
    finally:
        await watcher.close()


async def test_predictions_are_written_in_batches_and_kept_while_the_database_is_down(tmp_path, pg_dsn):
    bars = synthetic_bars(("SPY", "BAC"), n=120)
    spec_path = write_spec(tmp_path)
    _, onnx_bytes = train(spec_path, bars)
    place(spec_path, 1, onnx_bytes)
    plan = ml_plan(tmp_path, spec_path, version=1)
    writer = PredictionWriter("postgresql://nobody@/nodb?host=/nonexistent-socket-dir", "batch-1")
    runner = build_runner(plan, Account(1e6), {}, order_prefix="t", predictions=writer)
    runner.assign(bars)
    await runner.process(wire(bars))
    seen = [s for s in recorder_seen(runner) if s[4] is not None]
    assert writer.pending == len(seen) > 100
    assert not await writer.flush()  # unreachable: rows kept
    assert writer.pending == len(seen)
    writer.dsn = pg_dsn  # the database is back
    assert await writer.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT * FROM predictions ORDER BY id")
    finally:
        await conn.close()
    assert len(rows) == len(seen)
    for row, (name, version, sym, ts, p) in zip(rows, seen, strict=True):
        assert (row["batch_id"], row["model"], row["version"], row["symbol"]) == (
            "batch-1",
            name,
            version,
            sym,
        )
        assert int(row["bar_ts"].timestamp() * 1e6) == ts // 1000
        np.testing.assert_allclose(row["outputs"], p, rtol=0, atol=1e-7)


async def test_scorer_runs_only_for_strategies_that_trade_the_symbol(tmp_path):
    bars = synthetic_bars(("SPY", "AIG"), n=60)
    spec_path = write_spec(tmp_path)
    _, onnx_bytes = train(spec_path, bars)
    place(spec_path, 1, onnx_bytes)
    plan = ml_plan(tmp_path, spec_path)
    runner = build_runner(plan, Account(1e6), {}, order_prefix="t")
    runner.assign(["SPY"])

    await runner.process(wire(bars))
    m = scorer_of(runner).models["tiny"]
    assert m.bars == 60 and set(m.latest) == {"SPY"}
    # AIG's features were kept warm anyway: assigning it scores from its very next bar
    assert scorer_of(runner)._groups[0].streams["AIG"].bars == 60


def test_unpinned_model_without_a_database_names_the_fix(tmp_path):
    spec_path = write_spec(tmp_path)
    plan = ml_plan(tmp_path, spec_path, version=None)
    with pytest.raises(Exception, match="has no pinned version and there is no database"):
        build_runner(plan, Account(1e6), {}, order_prefix="t")


def test_scorer_alone_with_a_list_sink(tmp_path):
    """ModelScorer without a runner (routes=None scores every bar) — the benchmark's set-up."""
    bars = synthetic_bars(n=80)
    spec_path = write_spec(tmp_path)
    est, onnx_bytes = train(spec_path, bars)
    pipe = FeaturePipeline(load_spec(spec_path))
    loaded = load_model(place(spec_path, 1, onnx_bytes), pipe, name="tiny", version=1)

    class Sink(list):
        def add(self, *row):
            self.append(row)

    sink = Sink()
    scorer = ModelScorer(None, sink)
    scorer.add(loaded, pipe, strategies=["x"])
    from liu.events import Bar

    b = bars["SPY"]
    for i in range(80):
        scorer(
            Bar(
                "SPY", int(b["ts"][i]), b["open"][i], b["high"][i], b["low"][i], b["close"][i], b["volume"][i]
            )
        )
    x = pipe.batch(b)
    valid = ~np.isnan(x).any(axis=1)
    assert len(sink) == valid.sum()
    np.testing.assert_allclose(np.array([r[4] for r in sink]), est.predict_proba(x[valid]), atol=1e-5)


# Older imports of these helpers from this module (they live in tests/ml/helpers.py now).
__all__ = ["attach_models", "minute_bars", "ml_plan", "place", "train", "wire", "write_spec"]


def test_a_nan_bar_restarts_the_symbols_features_instead_of_stopping_the_consumer(tmp_path, caplog):
    bars = synthetic_bars(n=120)
    spec_path = write_spec(tmp_path)
    _, onnx_bytes = train(spec_path, bars)
    pipe = FeaturePipeline(load_spec(spec_path))
    scorer = ModelScorer(None, None)
    scorer.add(
        load_model(place(spec_path, 1, onnx_bytes), pipe, name="tiny", version=1), pipe, strategies=["x"]
    )
    from liu.events import Bar

    b = bars["SPY"]
    with caplog.at_level(logging.ERROR, logger="liu.ml.inference"):
        for i in range(120):
            close = float("nan") if i == 60 else b["close"][i]
            scorer(
                Bar("SPY", int(b["ts"][i]), b["open"][i], b["high"][i], b["low"][i], close, b["volume"][i])
            )
    stats = scorer.stats()["tiny"]
    assert "warming up again" in caplog.text
    assert stats["bars"] == 120 and stats["scored"]["1"] > 0
    assert stats["warming"] > pipe.lookback  # warmed up twice: at the start and after the NaN bar
