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

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

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
    """How long the daemon runs and how fast market time passes.

    `duration = "market"` runs on the market's calendar (kind = "alpaca"): from the open (or now, when
    the market is open) to the close, early closes and holidays included; see `liu.sources.alpaca.calendar`.
    """

    duration: Duration | Literal["market"] = 60.0
    speed: float | Literal["max"] = Field(default=1.0)
    market_open: TimeOfDay = "09:30"
    env: Literal["PAPER", "LIVE", "BACKTEST"] = "PAPER"
    portfolio_interval: Duration = 60.0

    @property
    def seconds(self) -> float:
        """`duration` in seconds; "market" counts as one regular 6.5-hour session (simulator, backtest)."""
        return 6.5 * 3600 if self.duration == "market" else float(self.duration)

    @property
    def clock_speed(self) -> float | None:
        """`speed` for the clock: None means as fast as possible ("max")."""
        return None if self.speed == "max" else float(self.speed)

    @model_validator(mode="after")
    def _speed_positive(self) -> SessionPlan:
        if self.speed != "max" and not self.speed > 0:
            raise ValueError(f"speed={self.speed} must be a positive number or 'max'")
        return self


def _on_off(value: Any) -> Any:
    """`bad_ticks = false` / `true`: off, or on with the defaults."""
    return {"enabled": value} if isinstance(value, bool) else value


class BadTicksPlan(_Table):
    """The bad-tick filter on trade prints (`liu.ticks`), on unless `bad_ticks = false`.

    `band_pct`: a print further than this (percent) from the median of the symbol's recent prints is
    dropped; left out, the exchanges' clearly-erroneous tiers (10 % up to $25, 5 % up to $50, 3 %
    above). `window`: prints per reference median. `confirm`: that many agreeing prints outside the
    band move the reference (a real gap). `conditions`: drop prints whose sale conditions do not
    update the last price (average-price, odd-lot, out-of-sequence...). A bar's open, high or low
    outside the band around its previous and own close is cut back (a bad print inside the bar).
    """

    enabled: bool = True
    band_pct: Limit | None = None
    window: Count = 20
    confirm: Count = 3
    conditions: bool = True

    def filter_options(self) -> dict[str, Any] | None:
        """Keyword arguments for `liu.ticks.TickFilter`, or None when the filter is off."""
        return self.model_dump(exclude={"enabled"}) if self.enabled else None


class SourcePlan(_Table):
    """The market-data source: liu's simulator, a replay of recorded data, or Alpaca.

    `adjustment` (replay and backtests): what to take out of recorded prices with the file's own
    factors, "all" (splits and dividends, the default), "split", "dividend" or "raw"; what is left raw
    is applied to positions and bar history at the ex-dates, as a broker does (`liu.corporate`).
    """

    kind: Literal["sim", "replay", "alpaca"] = "sim"
    symbols: int | list[str] = 20
    rate: float = Field(default=1000.0, gt=0)
    seed: int = 7
    batch: int = Field(default=200, gt=0)
    path: str | None = None
    start: str | None = None
    end: str | None = None
    bars: Literal["trades", "stream"] = "trades"
    feed: Literal["iex", "sip", "delayed_sip"] = "iex"
    """Alpaca's stock feed (kind = "alpaca"); crypto pairs (`BTC/USD`) always use the crypto stream."""
    url: str | None = None
    adjustment: Literal["all", "split", "dividend", "raw"] = "all"
    bad_ticks: Annotated[BadTicksPlan, BeforeValidator(_on_off)] = BadTicksPlan()

    @property
    def symbol_list(self) -> list[str] | None:
        """The symbols named in `symbols`, or None when it is a count (the simulator's) or all of a file."""
        return self.symbols if isinstance(self.symbols, list) else None

    @model_validator(mode="after")
    def _replay_needs_path(self) -> SourcePlan:
        if self.kind == "replay" and not self.path:
            raise ValueError("kind='replay' needs path = a CSV or Parquet file of recorded data")
        return self


class AlpacaPlan(_Table):
    """Where Alpaca lives: base URLs to which liu appends Alpaca's paths (as alpaca-py does), and the
    names of the environment variables (or `.env` entries) holding the keys; the keys never go in the plan.

    One table with `http://127.0.0.1:PORT` / `ws://127.0.0.1:PORT` points every part at a local
    server (`trader exchange`).
    """

    data_url: str = "https://data.alpaca.markets"
    stream_url: str = "wss://stream.data.alpaca.markets"
    trading_url: str | None = None
    """None: the paper or live trading API by `paper`."""
    paper: bool = True
    key_env: str = "APCA_API_KEY_ID"
    secret_env: str = "APCA_API_SECRET_KEY"
    timeout: Duration = 30.0
    """Seconds one REST request may take before it counts as failed."""

    @property
    def trading_base(self) -> str:
        if self.trading_url:
            return self.trading_url.rstrip("/")
        return "https://paper-api.alpaca.markets" if self.paper else "https://api.alpaca.markets"

    @model_validator(mode="after")
    def _urls(self) -> AlpacaPlan:
        for key, schemes in (
            ("data_url", ("http://", "https://")),
            ("stream_url", ("ws://", "wss://")),
            ("trading_url", ("http://", "https://")),
        ):
            value = getattr(self, key)
            if value is not None and not value.startswith(schemes):
                raise ValueError(f"{key}={value!r} must start with {' or '.join(schemes)}")
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
    persist: bool | None = None
    """The paper account (cash, positions, open gtc orders) continues from the last persisted session
    (`liu.store.account_state`); unset means true for paper trading. Backtests always start fresh with
    `cash`, and so does `persist = false` (without touching the persisted account)."""
    unexplained: Literal["ignore", "stop"] = "ignore"
    """kind = "alpaca": a position at the start that liu's orders do not explain is adopted by no strategy
    and reported; "stop" stops the start instead (liu.brokers.alpaca.reconcile)."""

    @model_validator(mode="after")
    def _persist_paper_only(self) -> BrokerPlan:
        if self.persist and self.kind != "paper":
            raise ValueError(
                f"persist=true applies to the paper broker; kind={self.kind!r} keeps its own account"
            )
        return self

    def persists(self, env: str) -> bool:
        """Whether a daemon session in `env` continues the persisted paper account."""
        return self.kind == "paper" and env != "BACKTEST" and self.persist is not False


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
    """How many consumer processes, when an event is too old to act on, and how dead processes come back.

    A consumer or the producer that dies is restarted after `restart_backoff` seconds (doubling with each
    restart of the same process, at most 30 s); after `restarts` restarts of one process in a session,
    trading halts instead and the summary says why.
    """

    count: int | Literal["auto"] = "auto"
    stale_after: Duration = 15.0
    restarts: int = Field(3, ge=0)
    restart_backoff: Duration = 0.5

    @model_validator(mode="after")
    def _count_positive(self) -> ConsumersPlan:
        if self.count != "auto" and self.count < 1:
            raise ValueError(f"count={self.count} must be >= 1 or 'auto'")
        return self

    def resolve_count(self) -> int:
        return max(1, (os.cpu_count() or 2) - 1) if self.count == "auto" else int(self.count)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MIN_TOKEN = 16


class DashboardPlan(_Table):
    """The web dashboard (`trader`'s live page, `trader dashboard`'s history) and its `/metrics`.

    Every request needs the token; `trader` prints the address with it at start. `token` / `token_env`
    fix it (at least 16 characters); left out, every start makes a new one. `metrics_token` /
    `metrics_token_env` give `/metrics` a token of its own (Prometheus sends it as `Authorization:
    Bearer …`); `metrics_token = false` lets `/metrics` answer without one, on a local bind only.
    `linger` keeps the dashboard and `/metrics` up that long after the session ended (Ctrl-C ends it
    sooner), so the final figures can still be read and scraped.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    """0 = a free port, chosen at start."""
    # SecretStr: a plan printed or logged by mistake shows '**********', never the token.
    token: SecretStr | None = None
    token_env: str | None = None
    metrics_token: SecretStr | Literal[False] | None = None
    metrics_token_env: str | None = None
    linger: Duration = 0.0

    @property
    def local(self) -> bool:
        return self.host in LOCAL_HOSTS

    @model_validator(mode="after")
    def _tokens(self) -> DashboardPlan:
        # Raised at table level so the error line never echoes the value given (a secret).
        for key in ("token", "metrics_token"):
            value = getattr(self, key)
            if value is not None and getattr(self, f"{key}_env"):
                raise ValueError(f"give {key} or {key}_env, not both")
            if isinstance(value, SecretStr):
                _check_token(key, value.get_secret_value())
        if self.metrics_token is False and not self.local:
            raise ValueError(
                f"metrics_token = false with host={self.host!r}: /metrics without a token is allowed on a "
                f"local bind only ({', '.join(LOCAL_HOSTS)})"
            )
        return self

    def resolve_token(self) -> str | None:
        """The configured token (from the plan or its environment variable), or None: make one."""
        return _secret("token", self.token, self.token_env)

    def resolve_metrics_token(self) -> str | Literal[False] | None:
        """/metrics' own token, False for none, or None: the dashboard's token."""
        if self.metrics_token is False:
            return False
        return _secret("metrics_token", self.metrics_token, self.metrics_token_env)


def _check_token(key: str, value: str) -> None:
    # Never echo the value: it is a secret, and this message is printed.
    if len(value) < MIN_TOKEN or not re.fullmatch(r"[A-Za-z0-9._~-]+", value):
        raise ValueError(
            f"{key} must be at least {MIN_TOKEN} characters of letters, digits and -._~ "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )


def _secret(key: str, value: SecretStr | None, env: str | None) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if not env:
        return None
    found = os.environ.get(env)
    if not found:
        raise ConfigError(f"tradeplan [dashboard] {key}_env={env!r}: that environment variable is not set")
    try:
        _check_token(key, found)
    except ValueError as e:
        raise ConfigError(f"tradeplan [dashboard] {key}_env={env!r}: the {e}") from None
    return found


AlertLevel = Literal["info", "warning", "error", "off"]


class AlertLevels(_Table):
    """The level of each kind of alert (liu.alerts); "off" never sends that kind."""

    fill: AlertLevel = "info"
    rejection: AlertLevel = "warning"
    risk: AlertLevel = "error"
    """Risk breaches, halts, resumes and flattens."""
    connection: AlertLevel = "warning"
    """Market data disconnects and reconnects."""
    consumer: AlertLevel = "error"
    """A consumer process died or was restarted."""
    database: AlertLevel = "error"
    """Writes failing (an outage) and working again."""
    strategy: AlertLevel = "error"
    """A strategy or scanner raised."""
    error: AlertLevel = "error"
    """Any other error the session logs."""


class AlertsPlan(_Table):
    """Where alerts go (apprise URLs), which are sent (`min_level`, `levels`) and how they are grouped.

    `urls_env` names an environment variable (or `.env` entry) holding more URLs, separated by spaces
    or commas, so tokens and passwords can stay out of the plan. Alerts of one kind with the same text
    (numbers aside) within `window` are grouped: the first `burst` of a kind go out at once, the rest
    as one "40× …" summary when the window closes.
    """

    # SecretStr: URLs carry tokens and passwords; a plan printed by mistake shows '**********'.
    urls: list[SecretStr] = []
    urls_env: str | None = None
    min_level: Literal["info", "warning", "error"] = "warning"
    levels: AlertLevels = AlertLevels()
    window: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 60.0
    burst: Count = 3

    def all_urls(self) -> list[str]:
        """The URLs of `urls` and of `urls_env`."""
        urls = [u.get_secret_value() for u in self.urls]
        if self.urls_env:
            found = os.environ.get(self.urls_env)
            if not found:
                raise ConfigError(
                    f"tradeplan [alerts] urls_env={self.urls_env!r}: that environment variable is not set"
                )
            urls += [u for u in re.split(r"[\s,]+", found) if u]
        return urls


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
    warmup: Annotated[int, BeforeValidator(_not_bool), Field(ge=0)] | None = None
    """Minute bars of history the strategy needs before its first live bar (live sources load them at
    start); None = worked out from its indicators and models (see `liu.warmup`)."""

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
    alpaca: AlpacaPlan = AlpacaPlan()
    broker: BrokerPlan = BrokerPlan()
    risk: RiskPlan = RiskPlan()
    database: DatabasePlan = DatabasePlan()
    consumers: ConsumersPlan = ConsumersPlan()
    dashboard: DashboardPlan = DashboardPlan()
    alerts: AlertsPlan = AlertsPlan()
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
        if self.source.kind == "alpaca" and not self.scanners and self.source.symbol_list is None:
            raise ValueError(
                'source: kind=\'alpaca\' needs symbols = a list (e.g. ["AAPL", "BTC/USD"]) or a scanner; '
                f"given symbols={self.source.symbols!r}"
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
