"""The main process's side of Alpaca as the market-data source (`[source] kind = "alpaca"`).

Before any child process starts: the keys (environment or `.env`), the tradable universe (assets), the
plan's symbols checked against it (one line naming a symbol that is unknown or a crypto pair spelled as a
stock), the market session (`[session] duration = "market"`: Alpaca's clock and calendar), and how many
minute bars each new symbol's consumer loads before its first live event (the longest lookback of the
plan's indicators and models). The daemon then connects its producer to the stream URLs built here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from rich.console import Console

from liu.errors import ConfigError
from liu.features import indicator_calls, lookback
from liu.plan import TradePlan
from liu.scanner import SymbolInfo, asset_infos
from liu.sources.alpaca.calendar import MarketSession, market_session, ny
from liu.sources.alpaca.client import AlpacaData, Asset, Endpoints, is_crypto, load_credentials
from liu.sources.alpaca.history import HistorySource

log = logging.getLogger("liu.market")
NS = 1_000_000_000
DEFAULT_WARMUP = 100  # bars when a strategy names no indicator liu can size (it may read ctx.bars too)
_CRYPTO_QUOTES = ("USD", "USDT", "USDC", "BTC", "ETH")


@dataclass
class LiveSource:
    """Everything the daemon needs to run on Alpaca."""

    endpoints: Endpoints
    data: AlpacaData
    key: str
    secret: str
    universe: dict[str, SymbolInfo]
    symbols: list[str]
    history: HistorySource
    session: MarketSession | None  # None: no calendar (a fixed duration, or crypto only: 24/7)
    fetched: float = 0.0  # time.monotonic() when the session was read

    def seconds_until(self, ns: int) -> float:
        """Seconds from now until `ns` on the server's clock (which the session came from)."""
        assert self.session is not None
        return (ns - self.session.now) / NS - (time.monotonic() - self.fetched)

    @property
    def crypto_only(self) -> bool:
        return bool(self.symbols) and all(is_crypto(s) for s in self.symbols)


def warmup_bars(plan: TradePlan, models: list[Any] | None = None) -> int:
    """Bars of history a new symbol needs: the most any strategy declares (`warmup`) or uses.

    A strategy without `warmup` needs its indicators' longest lookback (literal `ctx.ta(...)` calls in
    its file) and its models' feature lookback, plus one bar, and at least `DEFAULT_WARMUP`.
    """
    need = 0
    model_lookback = {pm.name: pm.pipeline.lookback for pm in models or ()}
    for sp in plan.strategies:
        if sp.warmup is not None:
            need = max(need, sp.warmup)
            continue
        longest = -1
        try:
            calls = indicator_calls(plan.path(sp.file).read_text())
        except (OSError, SyntaxError, ValueError):
            calls = []
        for name, params in calls:
            lb = lookback(name, params)
            if lb is not None:
                longest = max(longest, lb)
        for pm in models or ():
            if sp.label in pm.weights:
                longest = max(longest, model_lookback[pm.name])
        need = max(need, DEFAULT_WARMUP, longest + 1)
    return need


def check_symbols(symbols: list[str], assets: dict[str, Asset], feed: str) -> None:
    """Every plan symbol must be a tradable asset; a crypto pair must be written BASE/QUOTE."""
    crypto = {s for s, a in assets.items() if a.asset_class == "crypto"}
    for sym in symbols:
        if sym in assets:
            if not is_crypto(sym) and sym in crypto:
                pair = _pair(sym, crypto)
                raise ConfigError(
                    f"tradeplan [source] symbols: {sym!r} is a crypto pair and would go to the {feed} stock "
                    f"feed; write it {pair or 'BASE/QUOTE'!r} (crypto pairs use the crypto stream)"
                )
            continue
        pair = None if is_crypto(sym) else _pair(sym, crypto)
        if pair is not None:
            raise ConfigError(
                f"tradeplan [source] symbols: {sym!r} is not a stock on the {feed} feed but the crypto pair "
                f"{pair!r}; write it {pair!r} (crypto pairs use the crypto stream)"
            )
        kind = "crypto pair" if is_crypto(sym) else "stock"
        raise ConfigError(
            f"tradeplan [source] symbols: {sym!r} is not an active, tradable {kind} at Alpaca "
            f"({len(assets)} assets listed)"
        )


def _pair(sym: str, crypto: set[str]) -> str | None:
    for q in _CRYPTO_QUOTES:
        if sym.endswith(q) and len(sym) > len(q):
            pair = f"{sym[: -len(q)]}/{q}"
            if pair in crypto:
                return pair
    return None


async def calendar_session(data: AlpacaData) -> MarketSession:
    """Alpaca's clock and the calendar around it, as the session to run."""
    clock = await asyncio.to_thread(data.clock)
    today = ny(clock.now).date()
    days = await asyncio.to_thread(data.calendar, today - timedelta(days=7), today + timedelta(days=14))
    return market_session(clock, days)


async def prepare(plan: TradePlan, dsn: str | None, models: list[Any] | None = None) -> LiveSource:
    """Keys, universe, symbols, session and warm-up size; one clear line (a LiuError) on any problem."""
    src = plan.source
    a = plan.alpaca
    creds = load_credentials(a.key_env, a.secret_env)
    endpoints = Endpoints.from_plan(plan)
    data = AlpacaData(endpoints, creds)
    assets = await asyncio.to_thread(data.assets)
    symbols = list(dict.fromkeys(src.symbol_list or ()))
    check_symbols(symbols, assets, src.feed)
    stocks = any(not is_crypto(s) for s in symbols) or bool(plan.scanners)
    session = None
    if plan.session.duration == "market" and stocks:
        session = await calendar_session(data)
    bars = warmup_bars(plan, models)
    history = HistorySource(endpoints, creds, bars, dsn)
    return LiveSource(
        endpoints,
        data,
        creds.key_id,
        creds.secret,
        asset_infos(assets),
        symbols,
        history,
        session,
        time.monotonic(),
    )


async def wait_for_open(live: LiveSource, console: Console, once: bool, stop: asyncio.Event) -> bool:
    """Say when the session runs; outside market hours wait for the open (False: do not run now).

    `once`: do not wait, return False. `stop` (SIGINT/SIGTERM) ends the wait.
    """
    session = live.session
    if session is None:
        return True
    console.print(session.describe(), highlight=False)
    if session.open_now:
        return True
    if once:
        console.print("--once: not waiting for the open", highlight=False)
        return False
    delay = max(0.0, live.seconds_until(session.start))
    try:
        await asyncio.wait_for(stop.wait(), delay)
        return False
    except TimeoutError:
        return True
