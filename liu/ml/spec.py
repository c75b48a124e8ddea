"""The model spec: one TOML file that drives features, labels, training, the registry and live scoring.

Everything that must be the same in training and live trading (feature definitions, their order, the
label, the estimator) lives here, validated once. Bad specs raise `ConfigError` naming the file and key.

Example (see models/sma_rsi.toml)::

    name = "sma_rsi"

    [[features]]                      # a TA-Lib function (talib.get_functions())
    name = "rsi_14"
    function = "RSI"
    params = { timeperiod = 14 }      # TA-Lib defaults fill the rest
    # inputs = ["close"]              # OHLCV columns or earlier features; default: TA-Lib's own
    # output = "macdhist"             # which output of a multi-output function (MACD, BBANDS, ...)

    [[features]]                      # derived: an array operation on earlier features / columns
    name = "close_vs_sma"
    kind = "ratio"                    # diff | ratio | change | pct_change | lag
    of = ["close", "sma_20"]          # two names for diff/ratio, one for change/pct_change/lag
    # n = 1                           # bars, for change/pct_change/lag

    [label]
    kind = "forward_return"           # or "cross"
    horizon = 5
    up = 0.0005
    down = -0.0005
    classes = 3                       # 3: down/flat/up (-1/0/1); 2: up or not (1/0); 0: the return (regression)

    [estimator]
    class = "sklearn.ensemble.GradientBoostingClassifier"
    params = { n_estimators = 100 }

    [data]
    symbols = ["SPY"]
    start = "2013-10-07"
    end = "2013-10-11"
    bar_size = "1min"                 # 1min, 5min, 15min, 1h, 1d ...
    source = "data/bars.csv.gz"       # CSV/Parquet relative to this file, or "db" (stock_ohlc)

    [validation]
    folds = 4
    purge = 5                         # bars; both must be >= label horizon
    embargo = 5

    [registry]
    dir = "../.liu/models"
    keep = 5
    metric = "roc_auc"                # direction from the metric unless given
"""

from __future__ import annotations

import importlib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from liu.errors import ConfigError

COLUMNS = ("open", "high", "low", "close", "volume")
DERIVED_KINDS = ("diff", "ratio", "change", "pct_change", "lag")
METRICS = {  # name -> direction: "max" means bigger is better
    "roc_auc": "max",
    "accuracy": "max",
    "log_loss": "min",
    "r2": "max",
    "mae": "min",
    "rmse": "min",
}
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _talib_info(function: str) -> dict:
    from talib import abstract

    return abstract.Function(function).info


class TaFeature(_Table):
    """One TA-Lib function: the batch path calls it on arrays, the stream path builds talib.stream from it."""

    name: str = Field(pattern=_NAME)
    function: str
    params: dict[str, int | float] = {}
    inputs: list[str] | None = None
    output: str | None = None

    @field_validator("function")
    @classmethod
    def _known_function(cls, v: str) -> str:
        import talib
        import talib.stream

        up = v.upper()
        if up not in talib.get_functions():
            raise ValueError(f"{v!r} is not a TA-Lib function (see talib.get_functions())")
        if not hasattr(talib.stream, up):
            raise ValueError(f"TA-Lib function {up} has no streaming version, so it cannot run live")
        return up

    @model_validator(mode="after")
    def _resolve(self) -> TaFeature:
        info = _talib_info(self.function)
        defaults = dict(info["parameters"])
        unknown = sorted(set(self.params) - set(defaults))
        if unknown:
            raise ValueError(
                f"{self.function} has no parameter(s) {unknown}; it takes {sorted(defaults)} "
                f"(feature {self.name!r}, key params)"
            )
        params = dict(defaults)
        for k, v in self.params.items():  # canonical types, so the spec hash ignores 2 vs 2.0
            if isinstance(defaults[k], int) and float(v) != int(v):
                raise ValueError(
                    f"{self.function} param {k}: given {v!r}, expected an integer (feature {self.name!r})"
                )
            params[k] = int(v) if isinstance(defaults[k], int) else float(v)
        try:
            from talib import abstract

            abstract.Function(self.function, **params).lookback  # noqa: B018 - validates the values
        except Exception as e:  # TA-Lib raises plain Exceptions for bad values
            raise ValueError(
                f"{self.function} params {self.params}: invalid ({e}) (feature {self.name!r})"
            ) from None
        default_inputs = _default_inputs(info)
        inputs = self.inputs if self.inputs is not None else default_inputs
        if len(inputs) != len(default_inputs):
            raise ValueError(
                f"{self.function} takes {len(default_inputs)} input(s) like {default_inputs}, "
                f"given inputs={inputs} (feature {self.name!r}, key inputs)"
            )
        outputs = list(info["output_names"])
        if self.output is None and len(outputs) > 1:
            raise ValueError(
                f"{self.function} has several outputs {outputs}: pick one with output = ... (feature {self.name!r})"
            )
        if self.output is not None and self.output not in outputs:
            raise ValueError(
                f"{self.function} has no output {self.output!r}; it has {outputs} (feature {self.name!r}, key output)"
            )
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "inputs", list(inputs))
        object.__setattr__(self, "output", self.output or outputs[0])
        return self

    @property
    def refs(self) -> list[str]:
        return list(self.inputs or [])

    @property
    def output_index(self) -> int:
        return list(_talib_info(self.function)["output_names"]).index(self.output)

    def canonical(self) -> dict:
        return {
            "name": self.name,
            "function": self.function,
            "params": self.params,
            "inputs": self.inputs,
            "output": self.output,
        }


def _default_inputs(info: dict) -> list[str]:
    out: list[str] = []
    for value in info["input_names"].values():
        out.extend(value if isinstance(value, list) else [value])
    return out


class DerivedFeature(_Table):
    """An array operation on earlier features or columns (defined once in liu.ml.pipeline.DERIVED)."""

    name: str = Field(pattern=_NAME)
    kind: Literal["diff", "ratio", "change", "pct_change", "lag"]
    of: list[str]
    n: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _arity(self) -> DerivedFeature:
        want = 2 if self.kind in ("diff", "ratio") else 1
        if len(self.of) != want:
            raise ValueError(
                f"kind={self.kind!r} takes {want} name(s) in `of`, given {self.of} (feature {self.name!r}, key of)"
            )
        return self

    @property
    def refs(self) -> list[str]:
        return list(self.of)

    def canonical(self) -> dict:
        n = self.n if self.kind in ("change", "pct_change", "lag") else None
        return {"name": self.name, "kind": self.kind, "of": self.of, "n": n}


def _feature_tag(v: Any) -> str:
    if isinstance(v, dict):
        return "ta" if "function" in v else "derived"
    return "ta" if isinstance(v, TaFeature) else "derived"


Feature = Annotated[
    Annotated[TaFeature, Tag("ta")] | Annotated[DerivedFeature, Tag("derived")],
    Discriminator(_feature_tag),
]


class LabelSpec(_Table):
    """What the model predicts; labels only ever look at bars after the row's own bar."""

    kind: Literal["forward_return", "cross"] = "forward_return"
    horizon: int = Field(ge=1)
    column: str = "close"
    up: float = 0.0
    down: float = 0.0
    classes: Literal[0, 2, 3] = 3
    fast: str | None = None
    slow: str | None = None
    direction: Literal["above", "below"] = "above"

    @model_validator(mode="after")
    def _consistent(self) -> LabelSpec:
        if self.kind == "forward_return":
            if self.column not in COLUMNS:
                raise ValueError(f"[label] column: given {self.column!r}, expected one of {list(COLUMNS)}")
            if self.down > self.up:
                raise ValueError(f"[label] down={self.down} must be <= up={self.up}")
        else:
            if not self.fast or not self.slow:
                raise ValueError("[label] kind='cross' needs fast = and slow = (feature or column names)")
            if self.classes == 0:
                raise ValueError("[label] kind='cross' is a classification label: classes must be 2")
        return self

    @property
    def task(self) -> Literal["classification", "regression"]:
        return "regression" if self.classes == 0 else "classification"


class EstimatorSpec(_Table):
    """A scikit-learn estimator by dotted class name, with its constructor parameters."""

    class_: str = Field(alias="class")
    params: dict[str, Any] = {}

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sklearn_class(self, info: ValidationInfo) -> EstimatorSpec:
        if _check_estimator(info):
            self.resolve()
        return self

    def resolve(self) -> type:
        """The estimator class; ValueError if it is not an importable scikit-learn estimator."""
        from sklearn.base import BaseEstimator

        module, _, cls_name = self.class_.rpartition(".")
        if not module.startswith("sklearn.") or not cls_name:
            raise ValueError(
                f"[estimator] class: given {self.class_!r}, expected a scikit-learn class like "
                "'sklearn.ensemble.GradientBoostingClassifier'"
            )
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError):
            raise ValueError(f"[estimator] class: {self.class_!r} cannot be imported") from None
        if not (isinstance(cls, type) and issubclass(cls, BaseEstimator)):
            raise ValueError(f"[estimator] class: {self.class_!r} is not a scikit-learn estimator class")
        unknown = sorted(set(self.params) - set(cls().get_params()))
        if unknown:
            raise ValueError(f"[estimator] params: {cls_name} has no parameter(s) {unknown}")
        return cls

    def build(self):
        return self.resolve()(**self.params)


def _check_estimator(info: ValidationInfo) -> bool:
    """False when the caller only needs the features (a consumer): then scikit-learn is never imported."""
    return not (info.context or {}).get("features_only", False)


_BAR_SIZE = re.compile(r"^(\d+)(min|h|d)$")


class DataSpec(_Table):
    """Training bars: which symbols and dates, at what bar size, from a file or the stock_ohlc table."""

    symbols: list[str] = Field(min_length=1)
    start: str | None = None
    end: str | None = None
    bar_size: str = "1min"
    source: str
    hours: Literal["all", "regular"] = "all"

    @field_validator("bar_size")
    @classmethod
    def _bar_size(cls, v: str) -> str:
        m = _BAR_SIZE.match(v)
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"bar_size: given {v!r}, expected like '1min', '5min', '1h' or '1d'")
        return v


class ValidationSpec(_Table):
    """Walk-forward folds; purge and embargo (in bars) keep training rows away from each test fold."""

    folds: int = Field(default=4, ge=1)
    purge: int = Field(ge=0)
    embargo: int = Field(ge=0)


class RegistrySpec(_Table):
    """Where versions go, how many to keep, and the metric that ranks them."""

    dir: str = ".liu/models"
    keep: int = Field(default=5, ge=1)
    metric: str = "roc_auc"
    direction: Literal["max", "min"] | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"metric: given {v!r}, expected one of {sorted(METRICS)}")
        return v

    @property
    def higher_is_better(self) -> bool:
        return (self.direction or METRICS[self.metric]) == "max"


class BacktestSettings(_Table):
    """The `[backtest]` table of a model spec: how `trader train` trades each fold's signal
    (`liu.ml.signal_backtest`)."""

    enabled: bool = True
    threshold: float | None = None
    """Classifier: long when P(up) >= threshold (default 0.5). Regressor: long when prediction > threshold
    (default 0.0)."""
    allocation: float = Field(default=1.0, gt=0, le=1)
    """Fraction of the starting cash in play, split evenly across the fold's symbols."""

    def rule(self, regression: bool) -> tuple[float, bool]:
        """(threshold, strict): strict means `value > threshold`, else `value >= threshold`."""
        if regression:
            return (0.0 if self.threshold is None else self.threshold), True
        return (0.5 if self.threshold is None else self.threshold), False

    def describe(self, regression: bool) -> str:
        thr, strict = self.rule(regression)
        what = "predicted return >" if strict else "P(up) ≥"
        return f"long when {what} {thr:g}, allocation {self.allocation:g}"


class ModelSpec(_Table):
    """The whole spec. `base_dir` resolves relative paths; `file` is the TOML it came from (if any)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    features: list[Feature] = Field(min_length=1)
    label: LabelSpec
    estimator: EstimatorSpec
    data: DataSpec
    validation: ValidationSpec
    registry: RegistrySpec = RegistrySpec()
    backtest: BacktestSettings = BacktestSettings()
    base_dir: Path = Path(".")
    file: Path | None = None

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> ModelSpec:
        known = set(COLUMNS)
        for i, f in enumerate(self.features):
            if f.name in known:
                raise ValueError(f"features[{i}] name {f.name!r} is already defined (or is a bar column)")
            key = "inputs" if isinstance(f, TaFeature) else "of"
            for ref in f.refs:
                if ref not in known:
                    raise ValueError(
                        f"features[{i}] ({f.name!r}) {key}: {ref!r} is not a column or an earlier feature "
                        f"(defined so far: {sorted(known)})"
                    )
            known.add(f.name)
        lab = self.label
        if lab.kind == "cross":
            for key in ("fast", "slow"):
                ref = getattr(lab, key)
                if ref not in known:
                    raise ValueError(f"[label] {key}: {ref!r} is not a column or a feature")
        for key in ("purge", "embargo"):
            value = getattr(self.validation, key)
            if value < lab.horizon:
                raise ValueError(
                    f"[validation] {key}: given {value}, expected >= the label horizon ({lab.horizon} bars)"
                )
        if _check_estimator(info):
            self._estimator_fits_label()
        if self.registry.metric in ("roc_auc", "accuracy", "log_loss") and lab.task == "regression":
            raise ValueError(
                f"[registry] metric: {self.registry.metric!r} needs a classifier; use r2, mae or rmse"
            )
        if self.registry.metric in ("r2", "mae", "rmse") and lab.task == "classification":
            raise ValueError(
                f"[registry] metric: {self.registry.metric!r} is for regressors; use roc_auc or log_loss"
            )
        return self

    def _estimator_fits_label(self) -> None:
        lab = self.label
        proto = self.estimator.resolve()()
        from sklearn.base import is_classifier, is_regressor

        if lab.task == "classification" and not is_classifier(proto):
            raise ValueError(
                f"[estimator] class: {self.estimator.class_} is not a classifier, but the label has classes"
            )
        if lab.task == "regression" and not is_regressor(proto):
            raise ValueError(
                f"[estimator] class: {self.estimator.class_} is not a regressor, but [label] classes = 0"
            )

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(self.base_dir / p))

    @property
    def registry_root(self) -> Path:
        return self.path(self.registry.dir)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


_TAGS = {"ta", "derived", "int", "float", "str", "bool", "dict", "list"}


def _describe(err: dict) -> str:
    loc = [str(x) for x in err["loc"] if str(x) not in _TAGS and "[" not in str(x)]
    parts: list[str] = []
    for x in loc:
        if x.isdigit() and parts:
            parts[-1] = f"{parts[-1]}[{x}]"
        else:
            parts.append(x)
    key = ".".join(parts)
    msg = err["msg"].removeprefix("Value error, ")
    given = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r} (given {given!r})"
    if err["type"] == "missing":
        return f"missing key {key!r}"
    if err["type"] == "value_error":
        return f"{key}: {msg}" if key else msg
    return f"{key}: given {given!r}, expected {re.sub(r'^(Input should be |expected )', '', msg)}"


def parse_spec(
    raw: dict,
    source: str = "model spec",
    base_dir: Path = Path("."),
    file: Path | None = None,
    features_only: bool = False,
) -> ModelSpec:
    """Validate a spec dict; raise ConfigError with one line naming `source` and the key.

    `features_only` skips the estimator checks (they import scikit-learn: seconds and ~90 MB), for
    processes that only compute features and score ONNX files.
    """
    try:
        return ModelSpec.model_validate(
            {**raw, "base_dir": base_dir, "file": file}, context={"features_only": features_only}
        )
    except ValidationError as e:
        errors = e.errors()
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {_describe(errors[0])}{more}") from None


def load_spec(path: str | Path, features_only: bool = False) -> ModelSpec:
    """Read and validate a model spec TOML file (see `parse_spec` for `features_only`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model spec {path}: file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"model spec {path}: not valid TOML ({e})") from None
    for key in ("base_dir", "file"):
        if key in raw:
            raise ConfigError(f"model spec {path}: unknown key {key!r}")
    return parse_spec(
        raw,
        source=str(path),
        base_dir=path.resolve().parent,
        file=path.resolve(),
        features_only=features_only,
    )
