"""The account shared by every consumer process: cash, exposure, the risk state.

Cash is one account for the whole run, while symbols (and so orders and
positions) are spread over processes; the figures live in shared memory
behind one lock. `available = cash - reserved`: reservations hold cash for
open buy orders and margin for open shorts. Each consumer publishes the market
value of its own positions and its open-order count into its own slot, so
equity and exposure are the sum over slots. Each slot also keeps its share of
the reservations, so a consumer that dies can be cleared (`clear_slot`) and
its restarted successor reserve again for what it restores, without holding
cash twice. The halt flag and the flatten
generation are how a halt or flatten (a risk breach in any consumer, or the
control channel) reaches every consumer.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from dataclasses import dataclass
from typing import Any

# Global fields, then `slots` groups of _SLOT fields, then one (minute, count) pair per strategy.
_CASH, _RESERVED, _HALTED, _HALT_DAY, _FLATTEN, _DAY, _DAY_EQUITY, _START_CASH = range(8)
_GLOBAL = 8
_NET, _GROSS, _OPEN, _SLOT_RESERVED = range(4)
_SLOT = 4

HALT_NONE, HALT_MANUAL, HALT_RISK, HALT_FAULT = 0, 1, 2, 3
HALT_NAMES = {HALT_NONE: "", HALT_MANUAL: "manual", HALT_RISK: "risk", HALT_FAULT: "a process died too often"}


@dataclass(frozen=True)
class AccountView:
    """What `ctx.account` shows a strategy: one consistent snapshot of the shared account."""

    cash: float
    equity: float
    buying_power: float
    gross_exposure: float
    day_pnl: float
    halted: bool
    halt_reason: str


class Account:
    """Cash, reservations, exposure and the risk state; `shared=True` puts them in shared memory.

    `slots` is the number of processes that publish positions (one per consumer),
    `strategies` the number of strategies whose orders per minute are counted.
    """

    def __init__(
        self, cash: float, shared: bool = False, ctx: Any = mp, slots: int = 1, strategies: int = 0
    ) -> None:
        size = _GLOBAL + _SLOT * slots + 2 * strategies
        init = [0.0] * size
        init[_CASH] = init[_DAY_EQUITY] = init[_START_CASH] = cash
        init[_DAY] = -1.0
        self.slots = slots
        self.strategies = strategies
        if shared:
            self._v = ctx.RawArray("d", init)
            self._lock = ctx.Lock()
        else:
            self._v = init
            self._lock = threading.Lock()

    # -- cash -------------------------------------------------------------
    @property
    def cash(self) -> float:
        return self._v[_CASH]

    @property
    def reserved(self) -> float:
        return self._v[_RESERVED]

    def available(self) -> float:
        return self._v[_CASH] - self._v[_RESERVED]

    def try_reserve(self, amount: float, slot: int = 0) -> bool:
        """Reserve `amount` for process `slot` if that much is available."""
        with self._lock:
            if self._v[_CASH] - self._v[_RESERVED] + 1e-9 < amount:
                return False
            self._v[_RESERVED] += amount
            self._v[_GLOBAL + _SLOT * slot + _SLOT_RESERVED] += amount
            return True

    def apply(self, cash_delta: float, reserved_delta: float, slot: int = 0) -> None:
        with self._lock:
            self._v[_CASH] += cash_delta
            self._v[_RESERVED] += reserved_delta
            self._v[_GLOBAL + _SLOT * slot + _SLOT_RESERVED] += reserved_delta

    def clear_slot(self, slot: int) -> float:
        """Forget a dead process's part: release what it reserved, zero what it published; return the
        release. Cash stays: its fills happened."""
        base = _GLOBAL + _SLOT * slot
        with self._lock:
            v = self._v
            released = v[base + _SLOT_RESERVED]
            v[_RESERVED] -= released
            for k in range(_SLOT):
                v[base + k] = 0.0
            return released

    # -- positions, published per process ---------------------------------
    def publish(self, slot: int, net_value: float, gross_value: float, open_orders: int) -> None:
        """Set one process's market value of positions (net and gross) and open-order count."""
        base = _GLOBAL + _SLOT * slot
        v = self._v
        v[base + _NET] = net_value
        v[base + _GROSS] = gross_value
        v[base + _OPEN] = open_orders

    def _sum(self, field: int, skip: int = -1) -> float:
        v = self._v
        return sum(v[_GLOBAL + _SLOT * i + field] for i in range(self.slots) if i != skip)

    def equity(self) -> float:
        return self._v[_CASH] + self._sum(_NET)

    def gross_exposure(self, skip: int = -1) -> float:
        """Gross market value of every position (of every slot but `skip`)."""
        return self._sum(_GROSS, skip)

    def open_orders(self, skip: int = -1) -> int:
        return int(self._sum(_OPEN, skip))

    # -- the trading day ----------------------------------------------------
    def roll_day(self, day: int) -> bool:
        """Start trading day `day` (New York date ordinal) once: remember equity, lift a risk halt."""
        with self._lock:
            if day <= self._v[_DAY]:
                return False
            self._v[_DAY] = day
            self._v[_DAY_EQUITY] = self.equity()
            if self._v[_HALTED] == HALT_RISK and self._v[_HALT_DAY] < day:
                self._v[_HALTED] = HALT_NONE
            return True

    def day_pnl(self) -> float:
        return self.equity() - self._v[_DAY_EQUITY]

    # -- halt and flatten ---------------------------------------------------
    @property
    def halted(self) -> int:
        """HALT_NONE, HALT_MANUAL or HALT_RISK."""
        return int(self._v[_HALTED])

    def halt(self, why: int = HALT_MANUAL) -> bool:
        """Halt new exposure; returns False when already halted. A risk halt lasts the trading day."""
        with self._lock:
            was = self._v[_HALTED]
            self._v[_HALTED] = max(was, why) if was else why
            self._v[_HALT_DAY] = self._v[_DAY]
            return not was

    def resume(self) -> bool:
        with self._lock:
            was = self._v[_HALTED]
            self._v[_HALTED] = HALT_NONE
            return bool(was)

    @property
    def flatten_generation(self) -> int:
        return int(self._v[_FLATTEN])

    def request_flatten(self) -> int:
        """Ask every process to cancel its open orders and close its positions; returns the new generation."""
        with self._lock:
            self._v[_FLATTEN] += 1
            return int(self._v[_FLATTEN])

    # -- orders per minute, per strategy --------------------------------------
    def count_order(self, strategy: int, minute: int) -> int:
        """Count one order of strategy number `strategy` in `minute`; return the count so far in it."""
        i = _GLOBAL + _SLOT * self.slots + 2 * strategy
        with self._lock:
            if self._v[i] != minute:
                self._v[i] = minute
                self._v[i + 1] = 0
            self._v[i + 1] += 1
            return int(self._v[i + 1])

    def view(self) -> AccountView:
        with self._lock:
            cash = self._v[_CASH]
            net = self._sum(_NET)
            return AccountView(
                cash=cash,
                equity=cash + net,
                buying_power=cash - self._v[_RESERVED],
                gross_exposure=self._sum(_GROSS),
                day_pnl=cash + net - self._v[_DAY_EQUITY],
                halted=bool(self._v[_HALTED]),
                halt_reason=HALT_NAMES[int(self._v[_HALTED])],
            )
