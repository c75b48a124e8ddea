"""ONNX export: onnxruntime (one intra-op thread) agrees with scikit-learn on held-out rows; metadata embedded."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from liu.ml.export import META_KEYS, read_metadata, to_onnx
from liu.ml.spec import load_spec
from liu.ml.train import build_dataset, load_bars, train_model


def _session(data: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def feature_rows(tmp_path_factory):
    """Real pipeline features and 3-class labels on synthetic bars: first 70% to fit, the rest held out."""
    from .conftest import spec_text, write_bars_csv

    d = tmp_path_factory.mktemp("onnx")
    write_bars_csv(d / "bars.csv", ["AAA", "BBB"], 700)
    label = 'kind = "forward_return"\nhorizon = 3\nup = 0.001\ndown = -0.001\nclasses = 3'
    (d / "spec.toml").write_text(spec_text("bars.csv", label=label))
    spec = load_spec(d / "spec.toml")
    ds = build_dataset(spec, load_bars(spec))
    cut = int(len(ds.y) * 0.7)
    y = ds.y.astype(int)
    assert set(y[:cut]) == {-1, 0, 1}
    return ds.X[:cut], y[:cut], ds.X[cut:]


@pytest.mark.parametrize(
    "make",
    [
        lambda: __import__("sklearn.ensemble", fromlist=["x"]).GradientBoostingClassifier(
            n_estimators=100, random_state=0
        ),
        lambda: __import__("sklearn.ensemble", fromlist=["x"]).RandomForestClassifier(
            n_estimators=50, random_state=0
        ),
        lambda: __import__("sklearn.pipeline", fromlist=["x"]).make_pipeline(
            __import__("sklearn.preprocessing", fromlist=["x"]).StandardScaler(),
            __import__("sklearn.linear_model", fromlist=["x"]).LogisticRegression(max_iter=1000),
        ),
        lambda: __import__("sklearn.linear_model", fromlist=["x"]).LogisticRegression(max_iter=2000),
    ],
    ids=["gradient_boosting", "random_forest", "scaled_logistic", "logistic"],
)
def test_onnx_matches_sklearn_on_held_out_rows(feature_rows, make) -> None:
    X, y, held = feature_rows
    est = make().fit(X, y)
    width = X.shape[1]
    sess = _session(to_onnx(est, width, {"liu.name": "t"}))
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and inp.type == "tensor(float)" and inp.shape[1] == width
    labels, proba = sess.run(None, {"input": held.astype(np.float32)})
    want = est.predict_proba(held)
    assert proba.shape == want.shape == (len(held), 3)
    np.testing.assert_allclose(proba, want, atol=1e-5, rtol=0)
    assert np.array_equal(labels, est.predict(held))
    for i in range(0, len(held), 37):  # single rows, as a consumer scores them
        _, p1 = sess.run(None, {"input": held[i : i + 1].astype(np.float32)})
        np.testing.assert_allclose(p1[0], want[i], atol=1e-5, rtol=0)


def test_metadata_of_trained_model(synthetic_spec) -> None:
    spec = load_spec(synthetic_spec(n=300))
    result = train_model(spec)
    data = to_onnx(result.estimator, result.pipeline.width, result.onnx_metadata())
    meta = read_metadata(data)
    assert set(META_KEYS) - {"liu.version"} <= set(meta)  # the registry stamps the version
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["liu.feature_names"]) == ["sma_5", "rsi_7", "gap", "ret_3"]
    assert meta["liu.spec_hash"] == result.pipeline.spec_hash
    assert json.loads(meta["liu.outputs"]) == [0, 1]
    assert json.loads(meta["liu.input_width"]) == 4
    assert set(json.loads(meta["liu.versions"])) == {"sklearn", "skl2onnx", "onnxruntime", "talib", "numpy"}
    assert json.loads(meta["liu.metrics"])["roc_auc"] == pytest.approx(result.metric_value)
    assert json.loads(meta["liu.train_window"])["start"] < json.loads(meta["liu.train_window"])["end"]
    # the same metadata through onnxruntime, as a consumer reads it
    assert _session(data).get_modelmeta().custom_metadata_map["liu.spec_hash"] == result.pipeline.spec_hash


def test_regressor_outputs_value() -> None:
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = X[:, 0] * 0.3 - X[:, 1] ** 2
    est = GradientBoostingRegressor(n_estimators=50, random_state=0).fit(X[:200], y[:200])
    data = to_onnx(est, 5, {})
    assert read_metadata(data)["liu.outputs"] == "value"  # a plain string, not JSON
    (out,) = _session(data).run(None, {"input": X[200:].astype(np.float32)})
    np.testing.assert_allclose(out[:, 0], est.predict(X[200:].astype(np.float32)), atol=1e-5, rtol=1e-5)
