"""The tradeplan: one validated model of `tradeplan.toml`.

Every table rejects unknown keys, so a typo stops the start with a message
naming the table, the key, what was given and what was expected.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from liu.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like '90s', '5m', '1h', '250ms'."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s', '5m' or a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    raise ValueError("expected a duration like '30s', '5m' or a number of seconds")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
TimeOfDay = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


def _not_bool(value: Any) -> Any:
    # pydantic reads `true` as 1: a limit written as a boolean is a mistake, not a limit of one.
    if isinstance(value, bool):
        raise ValueError("expected a positive number, not a boolean")
    return value


Limit = Annotated[float, BeforeValidator(_not_bool), Field(gt=0)]
Count = Annotated[int, BeforeValidator(_not_bool), Field(gt=0)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SessionPlan(_Table):
    """How long the daemon runs and how fast market time passes."""

    duration: Duration = 60.0
    speed: float | Literal["max"] = Field(default=1.0)
    market_open: TimeOfDay = "09:30"
    env: Literal["PAPER", "LIVE", "BACKTEST"] = "PAPER"
    portfolio_interval: Duration = 60.0

    @property
    def clock_speed(self) -> float | None:
        """`speed` for the clock: None means as fast as possible ("max")."""
        return None if self.speed == "max" else float(self.speed)

    @model_validator(mode="after")
    def _speed_positive(self) -> SessionPlan:
        if self.speed != "max" and not self.speed > 0:
            raise ValueError(f"speed={self.speed} must be a positive number or 'max'")
        return self


class SourcePlan(_Table):
    """The market-data source: liu's simulator, a replay of recorded data, or Alpaca."""

    kind: Literal["sim", "replay", "alpaca"] = "sim"
    symbols: int | list[str] = 20
    rate: float = Field(default=1000.0, gt=0)
    seed: int = 7
    batch: int = Field(default=200, gt=0)
    path: str | None = None
    start: str | None = None
    end: str | None = None
    bars: Literal["trades", "stream"] = "trades"
    feed: Literal["iex", "sip"] = "iex"
    url: str | None = None

    @property
    def symbol_list(self) -> list[str] | None:
        """The symbols named in `symbols`, or None when it is a count (the simulator's) or all of a file."""
        return self.symbols if isinstance(self.symbols, list) else None

    @model_validator(mode="after")
    def _replay_needs_path(self) -> SourcePlan:
        if self.kind == "replay" and not self.path:
            raise ValueError("kind='replay' needs path = a CSV or Parquet file of recorded data")
        return self


class BrokerPlan(_Table):
    """The paper broker's account and fill model."""

    kind: Literal["paper", "alpaca"] = "paper"
    cash: float = Field(default=100_000.0, gt=0)
    fee_per_share: float = Field(default=0.0, ge=0)
    fee_bps: float = Field(default=0.0, ge=0)
    slippage_bps: float = Field(default=0.0, ge=0)
    not_shortable: list[str] = []
    max_participation: Annotated[float, BeforeValidator(_not_bool), Field(gt=0, le=1)] | None = None
    """Share of a print's size or a bar's volume an order may fill per event; None = fill in full."""


class RiskPlan(_Table):
    """Pre-trade limits checked on every order (liu/risk.py); a key left out (None) is no limit.

    Notional limits are in dollars; `price_band_bps` is the largest distance of an
    order's price from the last trade; `max_daily_loss` is the loss (a positive
    number of dollars, realised + unrealised since the start of the New York
    trading day) that halts trading until the next day, and `on_breach` says
    whether that breach only halts or also flattens.
    """

    max_order_notional: Limit | None = None
    max_position_notional: Limit | None = None
    max_gross_exposure: Limit | None = None
    max_open_orders: Count | None = None
    max_orders_per_minute: Count | None = None
    price_band_bps: Limit | None = None
    max_daily_loss: Limit | None = None
    on_breach: Literal["halt", "flatten"] = "halt"


class DatabasePlan(_Table):
    """Where orders, fills and runs are stored: an embedded PostgreSQL, or a DSN."""

    dsn: str | None = None
    dsn_env: str | None = None
    data_dir: str = ".liu/pgdata"

    def resolve_dsn(self) -> str | None:
        """The DSN to use, or None for the embedded server."""
        if self.dsn:
            return self.dsn
        if self.dsn_env:
            value = os.environ.get(self.dsn_env)
            if not value:
                raise ConfigError(
                    f"tradeplan [database] dsn_env={self.dsn_env!r}: that environment variable is not set"
                )
            return value
        return None


class ConsumersPlan(_Table):
    """How many consumer processes, and when an event is too old to act on."""

    count: int | Literal["auto"] = "auto"
    stale_after: Duration = 15.0

    @model_validator(mode="after")
    def _count_positive(self) -> ConsumersPlan:
        if self.count != "auto" and self.count < 1:
            raise ValueError(f"count={self.count} must be >= 1 or 'auto'")
        return self

    def resolve_count(self) -> int:
        return max(1, (os.cpu_count() or 2) - 1) if self.count == "auto" else int(self.count)


class Schedule(_Table):
    """Window of market time (New York) in which a strategy receives events."""

    start: TimeOfDay = "00:00"
    end: TimeOfDay = "23:59"


class PluginPlan(_Table):
    """A user class named by file and class, with its parameters."""

    name: str | None = None
    file: str
    class_: str = Field(alias="class")
    config: dict[str, Any] = {}

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def label(self) -> str:
        return self.name or self.class_


class ScannerPlan(PluginPlan):
    recurrence: Duration | None = None
    target_strategies: list[str] = []


class ModelRef(_Table):
    """A model a strategy uses: its spec file, a pinned version (or follow the registry), a vote weight."""

    spec: str
    version: int | None = Field(default=None, ge=1)
    """Pinned registry version; omitted = the registry's serving version, following promotions."""
    weight: float = Field(default=1.0, gt=0)


class StrategyPlan(PluginPlan):
    schedule: Schedule = Schedule()
    models: list[ModelRef] = []

    @model_validator(mode="after")
    def _models_unique(self) -> StrategyPlan:
        specs = [m.spec for m in self.models]
        dupes = sorted({s for s in specs if specs.count(s) > 1})
        if dupes:
            raise ValueError(f"models: spec {dupes[0]!r} is listed twice")
        return self


class TradePlan(_Table):
    """The whole tradeplan; `base_dir` resolves relative paths."""

    session: SessionPlan = SessionPlan()
    source: SourcePlan = SourcePlan()
    broker: BrokerPlan = BrokerPlan()
    risk: RiskPlan = RiskPlan()
    database: DatabasePlan = DatabasePlan()
    consumers: ConsumersPlan = ConsumersPlan()
    scanners: list[ScannerPlan] = []
    strategies: list[StrategyPlan] = []
    base_dir: Path = Path(".")

    @model_validator(mode="after")
    def _names_and_targets(self) -> TradePlan:
        names = [s.label for s in self.strategies]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"strategy names must be unique; repeated: {sorted(dupes)}")
        pins: dict[Path, tuple[str, int | None]] = {}
        for i, st in enumerate(self.strategies):
            for j, m in enumerate(st.models):
                spec = self.path(m.spec)
                where = f"strategies.{i}.models.{j}"
                if not spec.is_file():
                    raise ValueError(f"{where}: spec file {spec} not found (expected a model spec TOML)")
                seen = pins.setdefault(spec.resolve(), (st.label, m.version))
                if seen[1] != m.version:
                    raise ValueError(
                        f"{where}: strategy {st.label!r} uses {m.spec} at version {_pin(m.version)} but "
                        f"strategy {seen[0]!r} at version {_pin(seen[1])}; one process scores one version"
                    )
        for sc in self.scanners:
            for target in sc.target_strategies:
                if target not in names:
                    raise ValueError(
                        f"scanner {sc.label!r} targets strategy {target!r}, which is not in [[strategies]] ({names})"
                    )
        return self

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def _pin(version: int | None) -> str:
    return "serving" if version is None else str(version)


_TYPE_TAGS = {"int", "float", "str", "bool", "dict", "list"}


def _describe(err: dict) -> str:
    # Union members show up in the location as type tags ('int', "literal['auto']"): drop them.
    loc = [str(x) for x in err["loc"] if not (str(x) in _TYPE_TAGS or "[" in str(x))]
    table_parts, key = loc[:-1], loc[-1] if loc else "?"
    table = ".".join(table_parts) if table_parts else "top level"
    given = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"[{table}] unknown key {key!r} (given {given!r})"
    if err["type"] == "missing":
        return f"[{table}] missing key {key!r}"
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(given, dict) and err["type"] == "value_error":
        return f"[{'.'.join(loc) or 'top level'}] {msg}"
    expected = re.sub(r"^(Input should be |expected )", "", msg)
    return f"[{table}] {key}: given {given!r}, expected {expected}"


def parse_plan(raw: dict, source: str = "tradeplan", base_dir: Path = Path(".")) -> TradePlan:
    """Validate a tradeplan dict; raise ConfigError with one readable line."""
    try:
        return TradePlan.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as e:
        errors = e.errors()
        first = _describe(errors[0])
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {first}{more}") from None


def load_plan(path: Path) -> TradePlan:
    """Read and validate a tradeplan file."""
    if not path.exists():
        raise ConfigError(f"tradeplan {path}: file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"tradeplan {path}: not valid TOML ({e})") from None
    return parse_plan(raw, source=str(path), base_dir=path.resolve().parent)
