"""What `MarketDataServer` needs from a feed, and a factory from a plain config dict.

A feed yields frames paced by a `liu.clock.Clock`:

* a `list[dict]` of Alpaca-shaped messages (see `liu.sources.protocol`); the
  server filters it per connection subscription and msgpack-encodes it, or
* an `Encoded` frame (`liu.sources.protocol`): ready msgpack bytes holding `count` messages of any
  symbol. The server sends it as-is to connections subscribed to "*" (or to
  every symbol of `universe()`) on every channel the feed emits (`Feed.types`),
  and to no one else.

Feeds:
* `liu.sources.sim.SimFeed`: seeded synthetic trades / quotes / bars, endless.
* `liu.sources.replay.ReplayFeed`: recorded data files, finite.

`feed_history` gives a feed's past as the local exchange serves it over REST (historical bars).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from liu.clock import NS, Clock
from liu.errors import ConfigError
from liu.plan import TradePlan
from liu.sources.exchange.calendar import MarketCalendar
from liu.sources.exchange.history import FileHistory, History, LiveBook, StitchedHistory
from liu.sources.protocol import Encoded

NY = ZoneInfo("America/New_York")


class Feed(Protocol):
    finite: bool  # True: frames() ends (replay); the server then sends "end of data"
    types: frozenset[str]  # message types ("t", "q", "b", "d") the feed may emit
    events: int  # market messages produced so far

    def frames(self, clock: Clock) -> AsyncIterator[list[dict] | Encoded]: ...

    def universe(self) -> dict[str, dict]:
        """symbol → {"price": float, "avg_volume": float, "shortable": bool}."""
        ...

    def first_ts(self) -> int | None:
        """Data time (ns) of the first event, or None for a feed stamped with the clock."""
        ...


SIM_KEYS = ("symbols", "rate", "seed", "batch", "kinds", "preencoded", "prebuilt_frames")
REPLAY_KEYS = ("path", "symbols", "start", "end", "speed", "batch", "format", "adjustment")


def make_feed(config: dict[str, Any]) -> Feed:
    """Build a feed from `config["kind"]` ("sim" | "replay") and that feed's keyword arguments.

    Keys other than the feed's own (host, port, key, secret, kind) are ignored here.
    """
    kind = config.get("kind", "sim")
    if kind == "sim":
        from liu.sources.sim import SimFeed

        return SimFeed(**{k: config[k] for k in SIM_KEYS if k in config})
    if kind == "replay":
        from liu.sources.replay import ReplayFeed

        return ReplayFeed(**{k: config[k] for k in REPLAY_KEYS if k in config})
    raise ValueError(f"unknown feed kind {kind!r} (expected 'sim' or 'replay')")


def feed_history(feed: Feed, calendar: MarketCalendar, epoch_ns: int, book: LiveBook) -> History:
    """The bars REST serves for `feed`: a replay's file; the simulator's generated past up to `epoch_ns`
    followed by what `book` records of the stream; for any other feed, the stream alone."""
    from liu.sources.sim import SimFeed

    if isinstance(feed, SimFeed):
        return StitchedHistory(feed.history(calendar, epoch_ns), book, epoch_ns)
    path, fmt = getattr(feed, "path", None), getattr(feed, "format", None)
    if path is not None and feed.finite:  # a replay: its file is the history
        streamed = getattr(feed, "adjustment", "raw")
        return FileHistory(path, symbols=sorted(feed.universe()), format=fmt, streamed=streamed)
    return book


def sim_epoch(plan: TradePlan) -> int:
    """Market time the simulator starts at: today's `market_open` in New York."""
    hh, mm = (int(x) for x in plan.session.market_open.split(":"))
    today = datetime.now(NY).date()
    start = datetime(today.year, today.month, today.day, hh, mm, tzinfo=NY)
    return int(start.timestamp()) * NS


def feed_config(plan: TradePlan, key: str = "", secret: str = "") -> dict[str, Any]:
    src = plan.source
    base = {"host": "127.0.0.1", "port": 0, "key": key, "secret": secret}
    if src.kind == "sim":
        return base | {
            "kind": "sim",
            "epoch_ns": sim_epoch(plan),
            "symbols": src.symbols,
            "rate": src.rate,
            "seed": src.seed,
            "batch": src.batch,
            "kinds": ["t", "q"] if src.bars == "trades" else ["t", "q", "b"],
        }
    path = plan.path(src.path or "")
    if not path.exists():
        raise ConfigError(f"tradeplan [source] path: {path} does not exist (expected a CSV or Parquet file)")
    speed = plan.session.clock_speed
    symbols = src.symbol_list
    return base | {
        "kind": "replay",
        "path": str(path),
        "symbols": symbols,
        "start": src.start,
        "end": src.end,
        "speed": speed,
        "adjustment": src.adjustment,
    }
