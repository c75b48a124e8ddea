"""The `Scanner` base class: picks which symbols to trade.

Scanners run in the main `trader` process on their `recurrence` (market
time; once at start when no recurrence is given). The symbols they return
are subscribed by the producer and routed to the scanner's target strategies.

With Alpaca as the source, `ctx.universe` holds Alpaca's tradable assets (stocks and crypto, with
shortable, easy-to-borrow, fractionable and marginable) and `ctx.snapshots(symbols)` fetches the latest
trade, quote, minute bar and daily bars. A plain `def scan` then runs in a worker thread, so those REST
calls never stall the daemon; an `async def scan` runs on the loop and should await
`ctx.snapshots_async(symbols)` instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from liu.plan import TradePlan
from liu.plugins import instantiate

log = logging.getLogger(__name__)


class ScannerConfig(BaseModel):
    """Base for a scanner's settings (its `config` table); unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class SymbolInfo:
    """What the market-data source knows about a symbol before trading it.

    Alpaca's asset list carries no prices: there `price` and `avg_volume` are NaN (every comparison with
    them is False) until a scanner asks `ctx.snapshots`.
    """

    price: float = math.nan
    avg_volume: float = math.nan
    shortable: bool = True
    easy_to_borrow: bool = True
    fractionable: bool = False
    marginable: bool = True
    asset_class: str = "us_equity"  # "us_equity" | "crypto"
    exchange: str = ""
    name: str = ""


def _no_snapshots(symbols: Iterable[str]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ScanContext:
    """What a scanner sees: the tradable universe with reference figures, and the market time.

    `snapshots(symbols)` → {symbol: `liu.sources.alpaca.Snapshot`} (latest trade `price`, `bid`/`ask`,
    `minute_bar`, `daily_bar`, `prev_daily_bar`), fetched in batches; empty for sources without it.
    """

    now: int
    universe: Mapping[str, SymbolInfo]
    snapshots: Callable[[Iterable[str]], dict[str, Any]] = field(default=_no_snapshots)

    async def snapshots_async(self, symbols: Iterable[str]) -> dict[str, Any]:
        """`snapshots` for an `async def scan`: the REST calls run in a worker thread."""
        return await asyncio.to_thread(self.snapshots, list(symbols))


class Scanner:
    """Base class for scanners. Override `scan`.

    Example:
        class Liquid(Scanner):
            def scan(self, ctx):
                ranked = sorted(ctx.universe, key=lambda s: -ctx.universe[s].avg_volume)
                return ranked[:10]
    """

    Config: ClassVar[type[ScannerConfig]] = ScannerConfig

    def __init__(self, name: str, config: ScannerConfig) -> None:
        self.name = name
        self.config = config

    def scan(self, ctx: ScanContext) -> list[str]:
        """Return the symbols to trade now. Runs in the main process; may be `async def`."""
        return []


@dataclass
class ScheduledScanner:
    """A scanner with its recurrence (ns of market time; None = once) and target strategies."""

    scanner: Scanner
    recurrence_ns: int | None
    targets: tuple[str, ...]
    next_run: int = 0
    done: bool = False


class ScannerRunner:
    """Runs scanners when they are due, in market time; returns what each picked, and when the next is due."""

    def __init__(
        self,
        scanners: list[ScheduledScanner],
        universe: Mapping[str, SymbolInfo],
        snapshots: Callable[[Iterable[str]], dict[str, Any]] | None = None,
    ) -> None:
        self.scanners = scanners
        self.universe = universe
        self.snapshots = snapshots  # a live source's REST: plain scans then run in a worker thread

    def next_due(self) -> int | None:
        """Market time the next scanner run is due (None: no scanner will run again)."""
        pending = [s.next_run for s in self.scanners if not s.done]
        return min(pending) if pending else None

    async def run_due(self, now_ns: int) -> list[tuple[ScheduledScanner, list[str]]]:
        """Each due scanner with the symbols it picked that the universe has (others are logged, dropped)."""
        import inspect

        picked = []
        for s in self.scanners:
            if s.done or now_ns < s.next_run:
                continue
            try:
                if self.snapshots is None:
                    result = s.scanner.scan(ScanContext(now_ns, self.universe))
                else:
                    ctx = ScanContext(now_ns, self.universe, self.snapshots)
                    if inspect.iscoroutinefunction(s.scanner.scan):
                        result = s.scanner.scan(ctx)
                    else:  # it may call ctx.snapshots (blocking REST): keep it off the event loop
                        result = await asyncio.to_thread(s.scanner.scan, ctx)
                if inspect.isawaitable(result):
                    result = await result
                symbols = [str(x) for x in (result or [])]
                unknown = sorted(set(symbols) - self.universe.keys())
                if unknown:
                    log.warning(
                        "scanner %s picked symbols the source does not have: %s", s.scanner.name, unknown[:10]
                    )
                    symbols = [x for x in symbols if x in self.universe]
            except Exception:
                log.exception("scanner %s raised; it picked nothing this time", s.scanner.name)
                symbols = []
            if symbols:
                picked.append((s, symbols))
            if s.recurrence_ns:
                s.next_run = now_ns + s.recurrence_ns
            else:
                s.done = True
        return picked


def load_scanners(plan: TradePlan) -> list[ScheduledScanner]:
    """The plan's scanners, loaded and validated, with their recurrence and target strategies."""
    return [
        ScheduledScanner(
            instantiate(plan.path(s.file), s.class_, Scanner, s.label, s.config),
            int(s.recurrence * 1_000_000_000) if s.recurrence else None,
            tuple(s.target_strategies),
        )
        for s in plan.scanners
    ]


def asset_infos(assets: Mapping[str, Any]) -> dict[str, SymbolInfo]:
    """Alpaca's tradable assets (`liu.sources.alpaca.Asset` by symbol) as scanner inputs."""
    return {
        s: SymbolInfo(
            shortable=a.shortable,
            easy_to_borrow=a.easy_to_borrow,
            fractionable=a.fractionable,
            marginable=a.marginable,
            asset_class=a.asset_class,
            exchange=a.exchange,
            name=a.name,
        )
        for s, a in assets.items()
    }


def symbol_infos(universe: dict[str, dict]) -> dict[str, SymbolInfo]:
    """A feed's universe (symbol → price, avg_volume, shortable) as scanner inputs."""
    return {
        s: SymbolInfo(
            float(v.get("price", 0.0)), float(v.get("avg_volume", 0.0)), bool(v.get("shortable", True))
        )
        for s, v in universe.items()
    }
