"""Model specs: the shipped example loads; bad specs give one ConfigError naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from liu.cli import main
from liu.errors import ConfigError
from liu.ml.pipeline import FeaturePipeline, spec_hash
from liu.ml.spec import load_spec, parse_spec

from .conftest import spec_text

REPO = Path(__file__).resolve().parents[2]


def test_example_spec_loads() -> None:
    spec = load_spec(REPO / "models" / "sma_rsi.toml")
    assert spec.name == "sma_rsi"
    assert spec.label.horizon <= min(spec.validation.purge, spec.validation.embargo)
    assert spec.path(spec.data.source).name == "us_equity_minute_lean.csv.gz"
    assert FeaturePipeline(spec).width == len(spec.features)


def _bad(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_unknown_talib_function(tmp_path: Path) -> None:
    text = spec_text("x.csv").replace('function = "RSI"', 'function = "RSX"')
    msg = _bad(tmp_path, text)
    assert "features[1].function" in msg and "'RSX'" in msg and "TA-Lib" in msg


def test_reference_to_undefined_feature(tmp_path: Path) -> None:
    text = spec_text("x.csv").replace('of = ["close", "sma_5"]', 'of = ["close", "sma_50"]')
    msg = _bad(tmp_path, text)
    assert "features[2]" in msg and "'sma_50'" in msg and " of:" in msg


def test_reference_to_later_feature_is_undefined(tmp_path: Path) -> None:
    extra = '[[features]]\nname = "early"\nkind = "lag"\nof = ["gap"]\n'
    text = spec_text("x.csv").replace("[[features]]", extra + "\n[[features]]", 1)
    msg = _bad(tmp_path, text)
    assert "features[0]" in msg and "'gap'" in msg


@pytest.mark.parametrize(
    "estimator",
    [
        "xgboost.XGBClassifier",
        "sklearn.ensemble.NoSuchForest",
        "sklearn.metrics.accuracy_score",
        "os.path.join",
    ],
)
def test_estimator_not_sklearn_class(tmp_path: Path, estimator: str) -> None:
    msg = _bad(tmp_path, spec_text("x.csv", estimator=estimator, params="{}"))
    assert "estimator" in msg and "class" in msg and estimator in msg


def test_regressor_with_class_label(tmp_path: Path) -> None:
    msg = _bad(tmp_path, spec_text("x.csv", estimator="sklearn.linear_model.Ridge", params="{}"))
    assert "[estimator] class" in msg and "not a classifier" in msg


def test_unknown_estimator_param(tmp_path: Path) -> None:
    msg = _bad(tmp_path, spec_text("x.csv", params="{ max_iterations = 5 }"))
    assert "[estimator] params" in msg and "max_iterations" in msg


@pytest.mark.parametrize("key", ["purge", "embargo"])
def test_purge_or_embargo_below_horizon(tmp_path: Path, key: str) -> None:
    kw = {"purge": 3, "embargo": 3, key: 2}
    msg = _bad(tmp_path, spec_text("x.csv", **kw))
    assert f"[validation] {key}" in msg and "given 2" in msg and "horizon (3" in msg


def test_multi_output_needs_output(tmp_path: Path) -> None:
    feats = '[[features]]\nname = "m"\nfunction = "MACD"\n'
    msg = _bad(tmp_path, spec_text("x.csv", features=feats))
    assert "features[0]" in msg and "macdhist" in msg


def test_bad_talib_param_and_unknown_key(tmp_path: Path) -> None:
    msg = _bad(tmp_path, spec_text("x.csv").replace("timeperiod = 5", "period = 5"))
    assert "features[0]" in msg and "period" in msg
    msg = _bad(tmp_path, spec_text("x.csv").replace("folds = 3", "folds = 3\nshuffle = true"))
    assert "unknown key 'validation.shuffle'" in msg


def test_spec_hash_is_canonical() -> None:
    base = parse_spec(_raw())
    explicit = _raw()
    explicit["features"][1]["params"] = {"timeperiod": 14.0}  # RSI's default, spelled as a float
    explicit["features"][1]["inputs"] = ["close"]
    assert spec_hash(parse_spec(explicit)) == spec_hash(base)
    changed = _raw()
    changed["features"][0]["params"] = {"timeperiod": 6}
    assert spec_hash(parse_spec(changed)) != spec_hash(base)
    swapped = _raw()
    swapped["features"] = [swapped["features"][1], swapped["features"][0]]
    assert spec_hash(parse_spec(swapped)) != spec_hash(base)
    # the hash covers only features: another estimator keeps it
    other = _raw()
    other["estimator"] = {"class": "sklearn.ensemble.RandomForestClassifier"}
    assert spec_hash(parse_spec(other)) == spec_hash(base)


def _raw() -> dict:
    return {
        "name": "h",
        "features": [
            {"name": "sma", "function": "SMA", "params": {"timeperiod": 5}},
            {"name": "rsi", "function": "RSI"},
        ],
        "label": {"horizon": 2},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
        "data": {"symbols": ["A"], "source": "x.csv"},
        "validation": {"purge": 2, "embargo": 2},
    }


def test_cli_bad_spec_is_one_red_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(spec_text("x.csv").replace('function = "RSI"', 'function = "RSX"'))
    assert main(["--plan", str(tmp_path / "none.toml"), "train", str(path)]) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error: ") and "RSX" in out and len(out.splitlines()) == 1


def test_backtest_table_sets_the_fold_backtest_and_rejects_unknown_keys(tmp_path: Path) -> None:
    from liu.ml.train import backtest_settings

    path = tmp_path / "s.toml"
    path.write_text(spec_text("bars.csv") + "\n[backtest]\nthreshold = 0.7\nallocation = 0.5\n")
    settings = backtest_settings(load_spec(path))
    assert (settings.threshold, settings.allocation, settings.enabled) == (0.7, 0.5, True)
    msg = _bad(tmp_path, spec_text("bars.csv") + "\n[backtest]\nthreshhold = 0.7\n")
    assert "backtest" in msg and "threshhold" in msg


def test_features_only_load_checks_features_but_never_imports_sklearn(tmp_path: Path) -> None:
    """What a consumer loads: the features are still validated; the estimator is the daemon's to check."""
    import subprocess
    import sys

    code = (
        "import sys; from liu.ml.spec import load_spec; "
        "s = load_spec('models/sma_rsi.toml', features_only=True); "
        "print(len(s.features), 'sklearn' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    out = run.stdout
    assert out.split() == ["12", "False"]
    with pytest.raises(ConfigError, match="RSX"):
        path = tmp_path / "bad.toml"
        path.write_text(spec_text("bars.csv").replace('function = "SMA"', 'function = "RSX"'))
        load_spec(path, features_only=True)
