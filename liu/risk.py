"""Pre-trade risk: the tradeplan's `[risk]` limits, checked on every order before a broker sees it.

One `RiskManager` per consumer process. The runner calls `check` once per new
order (not per event) and `on_minute` once per minute of data time. The
figures of other processes come from the shared `Account` (their published
gross exposure and open-order count, the halt flag, orders per minute); this
process's own figures come in as arguments, so nothing is read twice.

Rules, in the order they are checked (the first that fails is the reason):
- `halted`: while the account is halted (by hand or by a risk breach), only
  reducing orders pass.
- `price_band_bps`: a limit order's limit price farther than the band from
  the last trade is refused; a stop-limit's limit is measured from its trigger
  (where the market is when it becomes a limit order). Market orders are at
  the last trade, so they pass; stop triggers, trailing stops and a bracket's
  stop/target are meant to sit away from the market and are not checked. No
  last trade = the band cannot be checked: pass.
- `max_order_notional`: qty x the order's price.
- `max_position_notional`: |account's qty in the symbol after the order| x
  the order's price, refused only when the order grows that |qty|.
- `max_gross_exposure`: other processes' gross + this process's gross + the
  part of the order that grows |held| (valued at the order's price).
- `max_open_orders`: other processes' open orders + this process's + this
  order (a bracket counts 1 + its legs, which open with it).
- `max_orders_per_minute`: per strategy, account-wide, by data-time minute;
  checked last, so only orders that passed every other rule are counted.

The order's price: limit and stop-limit orders at the limit, stop orders at the
trigger, market and trailing-stop orders at the last trade. Without a price
(a market order before any trade) the notional rules cannot be checked and
pass; the broker refuses a market order it cannot price.

Reducing orders: an order is reducing when it is on the other side of `held`
and no larger than |held|, so it can only bring the strategy's position toward
zero. Reducing orders pass the halt and the three notional/exposure rules (a
limit must never stop anyone from getting out); they are still checked against
the price band and counted for max_open_orders and max_orders_per_minute,
which guard against runaway loops rather than exposure. Orders the risk
manager itself asks for (flatten) should not go through `check`.

`held` and `symbol_position` are what the position would be once the open
orders on the order's side fill (`with_open_orders`), so two resting sells
cannot each look like they close the same long. Bracket legs are left out:
they only close what their entry opened, and are cancelled when the position
closes otherwise.

Daily loss: `on_minute` starts each New York trading day on the account
(`Account.roll_day`, which remembers the day's starting equity and lifts a
risk halt of an earlier day). When `account.day_pnl() < -max_daily_loss` the
account is halted (HALT_RISK) and `on_minute` returns `on_breach` ("halt" or
"flatten") once, in the process that saw it first. The halt lasts the day: a
manual resume while the loss is still past the limit halts again the next
minute.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from liu.brokers.account import HALT_MANUAL, HALT_NAMES, HALT_RISK, Account
from liu.events import Order
from liu.plan import RiskPlan

log = logging.getLogger(__name__)

NY = ZoneInfo("America/New_York")
_MINUTE_NS = 60_000_000_000
_EPS = 1e-9

ORDER_RULES = (
    "halted",
    "price_band_bps",
    "max_order_notional",
    "max_position_notional",
    "max_gross_exposure",
    "max_open_orders",
    "max_orders_per_minute",
)


def with_open_orders(position: float, open_orders: Iterable[Order], side: str) -> float:
    """The signed qty `position` reaches once every open order on `side` fills (bracket legs left out)."""
    sign = 1.0 if side == "buy" else -1.0
    return position + sign * sum(
        o.remaining for o in open_orders if o.side == side and not o.leg and o.is_open
    )


def order_price(order: Order, last_price: float | None) -> float | None:
    """The price an order is valued at: its limit, its stop trigger, or the last trade."""
    if order.type in ("limit", "stop_limit"):
        return order.limit_price
    if order.type == "stop":
        return order.trigger_price
    return last_price


def _money(x: float) -> str:
    return f"{x:,.2f}" if abs(x) >= 1 or x == 0 else f"{x:.4f}"


class RiskManager:
    """Checks orders against a `RiskPlan` and watches the day's loss, for process `slot`.

    `strategy_index` numbers the strategies as the account counts their orders per minute.
    `refused` counts refusals per rule, `breaches` counts daily-loss breaches.
    """

    def __init__(self, plan: RiskPlan, account: Account, slot: int, strategy_index: dict[str, int]) -> None:
        self.plan = plan
        self.account = account
        self.slot = slot
        self.strategy_index = strategy_index
        self.refused: dict[str, int] = {}
        self.breaches: dict[str, int] = {}
        # Any order rule set? The halt is checked even when none is (a manual halt needs no [risk]).
        self.enabled = any(
            v is not None
            for v in (
                plan.max_order_notional,
                plan.max_position_notional,
                plan.max_gross_exposure,
                plan.max_open_orders,
                plan.max_orders_per_minute,
                plan.price_band_bps,
            )
        )
        self._day_start_ns = self._day_end_ns = 0
        self._breach = ""  # figures of this process's last daily-loss breach, for halted_reason()

    # -- orders ---------------------------------------------------------------
    def check(
        self,
        order: Order,
        *,
        last_price: float | None,
        held: float,
        symbol_position: float,
        local_gross: float,
        local_open_orders: int,
        now_ns: int,
    ) -> str | None:
        """None if the order may go to the broker, else the reason (rule, value, limit); counts refusals.

        Args:
            held: this strategy's signed qty in the symbol, open orders on the order's side included.
            symbol_position: the account's signed qty in the symbol (every strategy), the same way.
            local_gross: this process's gross market value of positions.
            local_open_orders: this process's open orders (the order itself not included).
            now_ns: data time, for orders per minute.
        """
        halted = self.account.halted
        if not self.enabled and not halted:
            return None
        plan = self.plan
        sign = 1.0 if order.side == "buy" else -1.0
        qty = order.qty - order.filled_qty
        reducing = held * sign < 0 and qty <= abs(held) + _EPS
        if halted and not reducing:
            return self._refuse(
                "halted", f"trading halted ({HALT_NAMES.get(halted, 'unknown')}); only reducing orders pass"
            )
        if plan.price_band_bps is not None:
            why = self._band(order, last_price, plan.price_band_bps)
            if why:
                return self._refuse("price_band_bps", why)
        if not reducing:
            price = order_price(order, last_price)
            if price is not None:
                why = self._exposure(order, qty * sign, price, held, symbol_position, local_gross)
                if why:
                    return why
        if plan.max_open_orders is not None:
            n = (
                self.account.open_orders(skip=self.slot)
                + local_open_orders
                + 1
                + (order.stop is not None)
                + (order.target is not None)
            )
            if n > plan.max_open_orders:
                return self._refuse(
                    "max_open_orders", f"open orders {n} with this order > limit {plan.max_open_orders}"
                )
        if plan.max_orders_per_minute is not None:
            n = self.account.count_order(self.strategy_index[order.strategy], now_ns // _MINUTE_NS)
            if n > plan.max_orders_per_minute:
                return self._refuse(
                    "max_orders_per_minute",
                    f"order {n} of strategy {order.strategy!r} this minute > limit {plan.max_orders_per_minute}",
                )
        return None

    def _band(self, order: Order, last_price: float | None, band: float) -> str:
        if order.type == "limit":
            ref, ref_name = last_price, "last trade"
        elif order.type == "stop_limit":
            ref, ref_name = order.trigger_price, "trigger"
        else:
            return ""
        price = order.limit_price
        if not ref or price is None:
            return ""
        bps = abs(price - ref) / ref * 1e4
        if bps <= band:
            return ""
        return f"limit price {_money(price)} is {bps:,.1f} bps from {ref_name} {_money(ref)} > limit {band:,.1f} bps"

    def _exposure(
        self,
        order: Order,
        signed_qty: float,
        price: float,
        held: float,
        symbol_position: float,
        local_gross: float,
    ) -> str:
        plan = self.plan
        notional = abs(signed_qty) * price
        if plan.max_order_notional is not None and notional > plan.max_order_notional:
            return self._refuse(
                "max_order_notional",
                f"order notional {_money(notional)} > limit {_money(plan.max_order_notional)}",
            )
        if plan.max_position_notional is not None:
            after = abs(symbol_position + signed_qty)
            value = after * price
            if after > abs(symbol_position) and value > plan.max_position_notional:
                return self._refuse(
                    "max_position_notional",
                    f"{order.symbol} position notional {_money(value)} after the order"
                    f" > limit {_money(plan.max_position_notional)}",
                )
        if plan.max_gross_exposure is not None:
            added = (abs(held + signed_qty) - abs(held)) * price
            if added > 0:
                gross = self.account.gross_exposure(skip=self.slot) + local_gross + added
                if gross > plan.max_gross_exposure:
                    return self._refuse(
                        "max_gross_exposure",
                        f"gross exposure {_money(gross)} after the order > limit {_money(plan.max_gross_exposure)}",
                    )
        return ""

    def _refuse(self, rule: str, text: str) -> str:
        self.refused[rule] = self.refused.get(rule, 0) + 1
        return f"risk {rule}: {text}"

    # -- the trading day -----------------------------------------------------
    def due(self, now_ns: int) -> bool:
        """Whether `on_minute` has work at `now_ns`: a daily-loss limit to check, or a new day to start."""
        return self.plan.max_daily_loss is not None or not self._day_start_ns <= now_ns < self._day_end_ns

    def on_minute(self, now_ns: int) -> str | None:
        """Roll the New York day and check the day's loss; "halt" or "flatten" once on a breach, else None."""
        if not self._day_start_ns <= now_ns < self._day_end_ns:
            self._start_day(now_ns)
        limit = self.plan.max_daily_loss
        account = self.account
        if limit is None or account.halted == HALT_RISK:
            return None
        pnl = account.day_pnl()
        if pnl >= -limit:
            return None
        was = account.halted
        # halt() is False when another process halted first; a manual halt still becomes a risk halt here.
        if not account.halt(HALT_RISK) and was != HALT_MANUAL:
            return None
        self.breaches["max_daily_loss"] = self.breaches.get("max_daily_loss", 0) + 1
        self._breach = f"max_daily_loss: day P&L {_money(pnl)} < limit -{_money(limit)}"
        log.warning(
            "risk %s; trading halted until the next New York day (on_breach=%s, equity %s)",
            self._breach,
            self.plan.on_breach,
            _money(account.equity()),
        )
        return self.plan.on_breach

    def _start_day(self, now_ns: int) -> None:
        day = datetime.fromtimestamp(now_ns // 1_000_000_000, NY).date()
        start = datetime.combine(day, time(), NY)
        end = datetime.combine(day + timedelta(days=1), time(), NY)
        self._breach = ""
        self._day_start_ns = int(start.timestamp()) * 1_000_000_000
        self._day_end_ns = int(end.timestamp()) * 1_000_000_000
        self.account.roll_day(day.toordinal())

    def halted_reason(self) -> str:
        """Why trading is halted ("" when it is not), with the figures when this process saw the breach."""
        halted = self.account.halted
        if not halted:
            return ""
        if halted == HALT_RISK and self._breach:
            return f"trading halted (risk {self._breach})"
        return f"trading halted ({HALT_NAMES.get(halted, 'unknown')})"
