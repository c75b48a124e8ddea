"""The strategy runner: routes one symbol shard's events to its strategies, in data time.

The consumer process drives it with event batches from the producer; the
backtester drives the same object in-process with the same wire tuples, so
what is backtested is what runs live. Decisions use event time (`now` is the
data time of the event being handled), never the wall clock.

The runner itself does routing and staleness and calls user code; bars come
from `liu.bars`, indicators from `liu.features`, and every order goes through
the `liu.orders.OrderDesk` (risk manager, broker, sink). The broker returns
what happened (order updates, fills); the runner delivers each to the
strategy that owns the order (`on_order`, `on_fill`).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import CoroutineType
from typing import Any
from zoneinfo import ZoneInfo

from liu.bars import MINUTE, BarBuilder
from liu.brokers.base import Broker, Update
from liu.corporate import ActionSchedule, CorporateAction
from liu.events import BAR, KIND_NAMES, MALFORMED, QUOTE, TRADE, TRADE_NO_LAST, Bar, Fill, Order, Quote, Trade
from liu.features import Features
from liu.orders import NullSink, OrderDesk, Sink
from liu.risk import RiskManager
from liu.stats import RUNNER_COUNTERS
from liu.strategy import Context, Strategy
from liu.ticks import TickFilter

__all__ = ["Keystore", "NullSink", "Sink", "StrategyRunner"]

log = logging.getLogger(__name__)
_new_bar = tuple.__new__  # builds a NamedTuple from a ready tuple without its argument parsing
NY = ZoneInfo("America/New_York")
_FAR = 1 << 62


class Keystore(dict):
    """A strategy's persistent key/value store; remembers which keys changed since the last save."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.dirty: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.dirty.add(key)

    def take_dirty(self) -> dict[str, Any]:
        items = {k: self[k] for k in self.dirty if k in self}
        self.dirty.clear()
        return items


def _ny_minute_of_day(ts: int, _cache: dict[int, int] = {}) -> int:  # noqa: B006 - per-day offset cache
    day = ts // (86_400 * 10**9)
    offset = _cache.get(day)
    if offset is None:
        dt = datetime.fromtimestamp(day * 86_400 + 43_200, UTC).astimezone(NY)
        offset = _cache[day] = int(dt.utcoffset().total_seconds()) // 60
    return (ts // MINUTE + offset) % 1440


@dataclass
class _Slot:
    """One strategy instance as the runner sees it."""

    strategy: Strategy
    ctx: Context
    window: tuple[int, int] | None  # minutes of day (NY), inclusive; None = always
    on_trade: bool
    on_quote: bool
    on_order: bool
    trades: int = 0
    errors: int = 0
    rejected: set[str] = field(default_factory=set)

    def open_at(self, ts: int) -> bool:
        if self.window is None:
            return True
        m = _ny_minute_of_day(ts)
        return self.window[0] <= m <= self.window[1]


def _overrides(strategy: Strategy, hook: str) -> bool:
    return getattr(type(strategy), hook) is not getattr(Strategy, hook)


class StrategyRunner:
    """Runs strategies over a stream of wire events for the symbols assigned to them."""

    def __init__(
        self,
        broker: Broker,
        *,
        bars_from_trades: bool = True,
        order_prefix: str = "o",
        sink: Sink | None = None,
        stale_after_ns: int | None = None,
        portfolio_interval_ns: int = 60 * 10**9,
        risk: RiskManager | None = None,
        account_slot: int = 0,
        ticks: TickFilter | None = None,
        actions: Iterable[CorporateAction] = (),
    ) -> None:
        self.broker = broker
        self.ticks = ticks  # the bad-tick filter on trade prints (None = off)
        self.actions = ActionSchedule(actions)  # splits and dividends of data replayed raw
        self.features = Features()
        self.bars_from_trades = bars_from_trades
        self.stale_after_ns = stale_after_ns
        self.portfolio_interval_ns = portfolio_interval_ns
        self.slots: dict[str, _Slot] = {}
        # Called with each closed bar after its features update and before the strategies see it
        # (ML scoring hooks in here, so a strategy's on_bar sees the bar's predictions).
        self.bar_hooks: list[Callable[[Bar], None]] = []
        self.routes: dict[str, list[_Slot]] = {}
        self.last_price: dict[str, float] = {}
        self.now = 0
        self.recv_ns = 0  # wall time the producer received the event being handled
        self.counts = dict.fromkeys(RUNNER_COUNTERS, 0)
        self.desk = OrderDesk(
            broker,
            broker.account,  # type: ignore[attr-defined]
            self.counts,
            self.last_price,
            risk=risk,
            sink=sink,
            order_prefix=order_prefix,
            slot=account_slot,
        )
        self._bars = BarBuilder()
        self._next_portfolio = 0
        self._portfolio_slots: list[_Slot] = []  # strategies that override on_portfolio
        # Housekeeping when data time enters a new minute (expiry, account, daily loss), and the
        # backtest's equity sampling (`sample_minutes`), before the first event of that minute.
        self._on_minute: Callable[[int], None] | None = None
        self._next_minute = 0

    @property
    def risk(self) -> RiskManager | None:
        return self.desk.risk

    @property
    def fill_log(self) -> list[Fill]:
        return self.desk.fill_log

    # -- setup ----------------------------------------------------------
    def add_strategy(
        self,
        strategy: Strategy,
        keystore: MutableMapping[str, Any] | None = None,
        window: tuple[str, str] | None = None,
    ) -> None:
        win = None
        if window and window != ("00:00", "23:59"):
            a, b = (int(x[:2]) * 60 + int(x[3:]) for x in window)
            win = (a, b)
        ctx = Context(strategy.name, self, keystore if keystore is not None else Keystore())
        slot = self.slots[strategy.name] = _Slot(
            strategy,
            ctx,
            win,
            _overrides(strategy, "on_trade"),
            _overrides(strategy, "on_quote"),
            _overrides(strategy, "on_order"),
        )
        if _overrides(strategy, "on_portfolio"):
            self._portfolio_slots.append(slot)

    def sample_minutes(self, hook: Callable[[int], None]) -> None:
        """Call `hook(minute_end_ns)` whenever data time enters a new minute (see `end_minute`)."""
        self._on_minute = hook

    def end_minute(self) -> None:
        """Close the last sampled minute (the backtester calls this when the data ends)."""
        if self._on_minute is not None and 0 < self._next_minute < _FAR:
            self._on_minute(self._next_minute)

    async def start(self) -> None:
        if not self._portfolio_slots:
            self._next_portfolio = _FAR  # nobody listens: skip the interval check's work entirely
        for slot in self.slots.values():
            await self._call(slot, slot.strategy.on_start, None, "on_start", "")

    def assign(self, symbols: Iterable[str], strategies: Iterable[str] = ()) -> None:
        """Route `symbols` to `strategies` (all strategies when empty)."""
        targets = (
            [self.slots[s] for s in strategies if s in self.slots]
            if strategies
            else list(self.slots.values())
        )
        for sym in symbols:
            route = self.routes.setdefault(sym, [])
            for slot in targets:
                if slot not in route and sym not in slot.rejected:
                    route.append(slot)

    def reject(self, strategy: str, symbol: str) -> None:
        slot = self.slots[strategy]
        slot.rejected.add(symbol)
        route = self.routes.get(symbol)
        if route and slot in route:
            route.remove(slot)

    # -- history (warm-up, gap back-fill; off the event path) ------------
    def warm(self, symbol: str, bars: Sequence[tuple]) -> int:
        """Load history bars `(ts, open, high, low, close, volume)`, oldest first, into `symbol`'s bar
        history, indicators and model features; return how many were newer than what it had.

        No strategy sees them and no model scores them (the symbol is unrouted meanwhile), so the first
        live bar finds warm indicators. Live prints for minutes the history covers build no bar.
        """
        hist = self.features.bars(symbol)
        last = int(hist.ts[-1]) if hist.n else -1
        route = self.routes.pop(symbol, None)
        added = 0
        try:
            for ts, o, h, lo, c, v in bars:
                if ts <= last:
                    continue
                last = ts
                self.features.add_bar(symbol, ts, o, h, lo, c, v)
                bar = Bar(symbol, ts, o, h, lo, c, v)
                for hook in self.bar_hooks:
                    try:
                        hook(bar)
                    except Exception:  # as in _close_bar: a hook's failure must not stop the consumer
                        log.exception("bar hook %r failed on history bar of %s at %d", hook, symbol, ts)
                added += 1
        finally:
            if route is not None:
                self.routes[symbol] = route
        if added:
            self._bars.seal(symbol, last // MINUTE)
            self.last_price.setdefault(symbol, bars[-1][4])
        return added

    # -- the event path -------------------------------------------------
    async def process(self, batch: Sequence[tuple], now_ns: int | None = None) -> None:
        """Handle a batch of wire tuples; events older than `stale_after_ns` at `now_ns` are dropped."""
        counts = self.counts
        counts["received"] += len(batch)
        stale = malformed = 0  # counted locally, added once per batch (in `finally`, so counts always add up)
        stale_cut = None
        if self.stale_after_ns is not None and now_ns is not None:
            stale_cut = now_ns - self.stale_after_ns
        broker = self.broker
        desk = self.desk
        ticks = self.ticks
        check_tick = ticks.check if ticks is not None else None
        if desk.check_flatten(self.now):  # one shared-memory read per batch
            await self._deliver()
        try:
            for ev in batch:
                kind = ev[0]
                if kind == MALFORMED:
                    malformed += 1
                    if (counts["malformed"] + malformed) % 1000 == 1:
                        log.warning(
                            "malformed market message for %r: %s (%d so far)",
                            ev[1],
                            ev[3],
                            counts["malformed"] + malformed,
                        )
                    continue
                ts = ev[2]
                if stale_cut is not None and ts < stale_cut:
                    stale += 1
                    if (counts["stale"] + stale) % 1000 == 1:
                        log.warning(
                            "dropped stale %s for %s: %.3fs old (stale_after %.3fs); %d dropped so far",
                            KIND_NAMES[kind],
                            ev[1],
                            (now_ns - ts) / 1e9,
                            self.stale_after_ns / 1e9,
                            counts["stale"] + stale,
                        )
                    continue
                sym = ev[1]
                if ts > self.now:
                    self.now = ts
                    if ts >= self._next_minute:
                        self._minute(ts)
                        if desk.queue:
                            await self._deliver()
                if kind == TRADE or kind == TRADE_NO_LAST:
                    price = ev[3]
                    if check_tick is not None and not check_tick(sym, price, kind):
                        continue  # a bad print: counted per symbol by the filter
                    self.last_price[sym] = price
                    updates = broker.on_trade(sym, ts, price, ev[4])
                    if updates:
                        desk.record(updates)
                        await self._deliver()
                    if self.bars_from_trades:
                        closed = self._bars.update(sym, ts, price, ev[4])
                        if closed is not None:
                            await self._close_bar(closed)
                    route = self.routes.get(sym)
                    if route:
                        self.recv_ns = ev[-1]
                        trade = None
                        for slot in route:
                            if slot.on_trade and (slot.window is None or slot.open_at(ts)):
                                if trade is None:
                                    trade = Trade(sym, ts, price, ev[4])
                                # Called inline (no coroutine per event); only results need awaiting.
                                result = self._invoke(slot, slot.strategy.on_trade, trade, "on_trade", sym)
                                if result:
                                    await self._handle(slot, result, "on_trade", sym)
                                elif desk.queue:  # it cancelled or replaced and returned nothing
                                    await self._deliver()
                elif kind == QUOTE:
                    updates = broker.on_quote(sym, ts, ev[3], ev[4], ev[5], ev[6])
                    if updates:
                        desk.record(updates)
                        await self._deliver()
                    route = self.routes.get(sym)
                    if route:
                        quote = None
                        for slot in route:
                            if slot.on_quote and (slot.window is None or slot.open_at(ts)):
                                if quote is None:
                                    quote = Quote(sym, ts, ev[3], ev[4], ev[5], ev[6])
                                result = self._invoke(slot, slot.strategy.on_quote, quote, "on_quote", sym)
                                if result:
                                    await self._handle(slot, result, "on_quote", sym)
                                elif desk.queue:  # it cancelled or replaced and returned nothing
                                    await self._deliver()
                elif kind == BAR:
                    if ticks is not None:
                        ev = ticks.check_bar(ev)  # a bad open/high/low cut back (counted per symbol)
                    updates = broker.on_bar(sym, ts, ev[3], ev[4], ev[5], ev[6], ev[7])
                    if updates:
                        desk.record(updates)
                        await self._deliver()
                    self.last_price[sym] = ev[6]
                    await self._close_bar(_new_bar(Bar, ev[1:8]))  # the wire slice is exactly Bar's fields
                if ts >= self._next_portfolio:
                    await self._portfolio(ts)
        finally:
            counts["stale"] += stale
            counts["malformed"] += malformed
            counts["processed"] += len(batch) - stale - malformed

    def _minute(self, ts: int) -> None:
        """Data time entered a new minute: sample the last one, then the desk's housekeeping."""
        if self._next_minute and self._on_minute is not None:
            self._on_minute(self._next_minute)
        if ts >= self.actions.next_ts:
            self._corporate_actions(ts)
        self._next_minute = (ts // MINUTE + 1) * MINUTE
        self.desk.on_minute(ts)

    async def broker_updates(self, updates: list) -> None:
        """Updates a remote broker (the Alpaca gateway) reported between events: record, then deliver."""
        if updates:
            self.desk.record(updates)
            await self._deliver()

    async def deliver(self) -> None:
        """Hand what the desk queued outside a hook (a cancel from the control channel) to the strategies."""
        await self._deliver()

    async def poll_account(self) -> None:
        """Publish this process's positions to the shared account and carry out a pending flatten
        (the consumer calls this on its timer, so both happen even while no events arrive)."""
        self.desk.publish()
        if self.desk.check_flatten(self.now):
            await self._deliver()

    def _corporate_actions(self, ts: int) -> None:
        """Splits and dividends due at `ts`, before the first event on their ex-date (`liu.corporate`):
        the broker adjusts positions and orders (or pays the dividend), history and prices move with them.
        What the broker reports is queued for the strategies (the caller delivers it)."""
        for action in self.actions.due(ts):
            sym = action.symbol
            updates: list[Update] = []
            if action.split != 1.0:
                f = 1.0 / action.split
                self.features.adjust(sym, f, action.split)
                self._bars.adjust(sym, f, action.split)
                if sym in self.last_price:
                    self.last_price[sym] *= f
                if self.ticks is not None:
                    self.ticks.adjust(sym, f)
                updates += self.broker.split(sym, action.split, ts)
            if action.dividend:
                last = self.last_price.get(sym)
                if last:  # the reference drops by the dividend, as the exchange's previous close does
                    self.last_price[sym] = last - action.dividend
                    if self.ticks is not None:
                        self.ticks.adjust(sym, (last - action.dividend) / last)
                updates += self.broker.dividend(sym, action.dividend, ts)
            log.info("corporate action at %d: %s", ts, action.describe())
            if updates:
                self.desk.record(updates)

    async def flush_bars(self, now_ns: int, grace_ns: int = 2 * 10**9) -> None:
        """Close bars whose minute ended before `now_ns - grace_ns` (live: quiet symbols still get bars)."""
        for bar in self._bars.flush(now_ns, grace_ns):
            await self._close_bar(bar)

    async def _close_bar(self, bar: Bar) -> None:
        self.features.add_bar(bar.symbol, bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume)
        for hook in self.bar_hooks:
            try:
                hook(bar)
            except Exception:  # a hook's own failure must not stop the strategies or the consumer
                self.counts["strategy_errors"] += 1
                log.exception("bar hook %r failed on %s at %d", hook, bar.symbol, bar.ts)
        route = self.routes.get(bar.symbol)
        if route:
            for slot in route if len(route) == 1 else list(route):  # a hook may reject (and unroute)
                if slot.window is None or slot.open_at(bar.ts):
                    result = self._invoke(slot, slot.strategy.on_bar, bar, "on_bar", bar.symbol)
                    if result:  # orders are placed before the next strategy sees the bar
                        await self._handle(slot, result, "on_bar", bar.symbol)
                    elif self.desk.queue:  # it cancelled or replaced and returned nothing
                        await self._deliver()

    async def _portfolio(self, ts: int) -> None:
        first = self._next_portfolio == 0
        self._next_portfolio = (ts // self.portfolio_interval_ns + 1) * self.portfolio_interval_ns
        if first:
            return
        for slot in self._portfolio_slots:
            await self._call(slot, slot.strategy.on_portfolio, None, "on_portfolio", "")

    async def _deliver(self) -> None:
        """Hand queued order updates and fills to the strategies that own them (in order)."""
        queue = self.desk.queue
        while queue:
            updates = queue[:]
            queue.clear()
            for up in updates:
                if up.__class__ is Fill:
                    slot = self.slots.get(up.strategy)
                    if slot is not None:
                        slot.trades += 1
                        await self._call(slot, slot.strategy.on_fill, up, "on_fill", up.symbol)
                else:
                    order = up.order
                    slot = self.slots.get(order.strategy)
                    if slot is not None and slot.on_order:
                        await self._call(slot, slot.strategy.on_order, order, "on_order", order.symbol)

    # -- calling user code ----------------------------------------------
    async def _call(self, slot: _Slot, hook, arg: Any, name: str, symbol: str) -> None:
        result = self._invoke(slot, hook, arg, name, symbol)
        if result:
            await self._handle(slot, result, name, symbol)
        elif self.desk.queue:  # a hook that cancelled or replaced returns nothing
            await self._deliver()

    def _invoke(self, slot: _Slot, hook, arg: Any, name: str, symbol: str) -> Any:
        try:
            return hook(slot.ctx) if arg is None else hook(arg, slot.ctx)
        except Exception:
            self._strategy_failed(slot, name, symbol, traceback.format_exc())
            return None

    async def _handle(self, slot: _Slot, result: Any, name: str, symbol: str) -> None:
        """Await an async hook's result, then place the orders it returned."""
        if result.__class__ is CoroutineType:
            try:
                result = await result
            except Exception:
                self._strategy_failed(slot, name, symbol, traceback.format_exc())
                return
        if result:
            self._place(slot, result, name)
        if self.desk.queue:
            await self._deliver()

    def _strategy_failed(self, slot: _Slot, hook: str, symbol: str, tb: str) -> None:
        slot.errors += 1
        self.counts["strategy_errors"] += 1
        log.error(
            "strategy %s raised in %s for symbol %s (error %d):\n%s",
            slot.strategy.name,
            hook,
            symbol or "-",
            slot.errors,
            tb,
        )

    def _place(self, slot: _Slot, orders: Any, hook: str) -> None:
        if isinstance(orders, Order):
            orders = [orders]
        for order in orders:
            if not isinstance(order, Order):
                self._strategy_failed(
                    slot, hook, "", f"returned {order!r}; expected Order objects from ctx.buy/ctx.sell\n"
                )
                continue
            self.desk.place(order, slot.strategy.name, self.now)

    # -- end --------------------------------------------------------------
    async def stop(self) -> None:
        for slot in self.slots.values():
            await self._call(slot, slot.strategy.on_stop, None, "on_stop", "")
        self.desk.end_session(self.now)
        await self._deliver()
        self.desk.publish()

    def report(self) -> dict[str, dict]:
        """Per strategy: trades, realised and unrealised P&L, fees, open positions."""
        out = {
            name: {
                "trades": slot.trades,
                "realized": 0.0,
                "unrealized": 0.0,
                "fees": 0.0,
                "errors": slot.errors,
                "positions": {},
            }
            for name, slot in self.slots.items()
        }
        for (strategy, sym), pos in self.broker.all_positions().items():
            row = out[strategy]  # positions only exist for strategies this runner placed orders for
            row["realized"] += pos.realized
            row["fees"] += pos.fees
            if pos.qty:
                last = self.last_price.get(sym, pos.avg_price)
                row["unrealized"] += (last - pos.avg_price) * pos.qty
                row["positions"][sym] = pos.qty
        return out
