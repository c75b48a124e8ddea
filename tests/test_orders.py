"""The order desk through the runner: lifecycle updates reach `on_order`, cancel/replace from a hook,
brackets, the risk manager in front of the broker, halts, flatten, expiry and the session's end."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from liu.brokers.account import HALT_RISK, Account
from liu.brokers.paper import PaperBroker
from liu.events import BAR
from liu.plan import RiskPlan
from liu.risk import RiskManager
from liu.runner import StrategyRunner
from liu.strategy import Strategy, StrategyConfig

MIN = 60 * 10**9
NY = ZoneInfo("America/New_York")
T0 = int(datetime(2024, 3, 5, 10, 0, tzinfo=NY).timestamp()) * 10**9  # a Tuesday, 10:00 New York


def bar(i: int, o: float, h: float, lo: float, c: float, sym: str = "A", t0: int = T0) -> tuple:
    return (BAR, sym, t0 + i * MIN, o, h, lo, c, 1_000.0, 0)


class Script(Strategy):
    """Runs `plan[i](bar, ctx)` at the close of bar i; records every order update and fill."""

    def __init__(self, plan: dict, name: str = "s") -> None:
        super().__init__(name, StrategyConfig())
        self.plan = plan
        self.n = 0
        self.updates: list[tuple[str, str, str]] = []  # (client id, status, reason)
        self.fills: list[tuple[str, float, float]] = []  # (client id, qty, price)
        self.kept: dict = {}

    def on_bar(self, b, ctx):
        step = self.plan.get(self.n)
        self.n += 1
        return step(b, ctx, self) if step else None

    def on_order(self, order, ctx):
        self.updates.append((order.client_order_id, order.status, order.reason))

    def on_fill(self, fill, ctx):
        self.fills.append((fill.client_order_id, fill.qty, fill.price))


def runner_for(strategy: Strategy, cash: float = 100_000.0, risk: RiskPlan | None = None) -> StrategyRunner:
    account = Account(cash, strategies=1)
    manager = RiskManager(risk, account, 0, {strategy.name: 0}) if risk is not None else None
    r = StrategyRunner(PaperBroker(account), bars_from_trades=False, risk=manager)
    r.add_strategy(strategy)
    r.assign(["A", "B"])
    return r


def statuses(s: Script, cid: str) -> list[str]:
    return [st for c, st, _ in s.updates if c == cid]


async def test_market_order_lifecycle_reaches_on_order_and_on_fill():
    s = Script({0: lambda b, ctx, me: [ctx.buy("A", 10)]})
    r = runner_for(s)
    await r.process([bar(0, 100, 101, 99, 100), bar(1, 100.5, 102, 100, 101)])
    assert statuses(s, "o1") == ["accepted", "filled"]
    assert s.fills == [("o1", 10, 100.5)]  # the next bar's open
    assert r.counts["orders"] == 1 and r.counts["fills"] == 1


async def test_invalid_order_is_rejected_with_its_reason_and_counted():
    s = Script({0: lambda b, ctx, me: [ctx.buy("A", 10, limit=-5)]})
    r = runner_for(s)
    await r.process([bar(0, 100, 101, 99, 100)])
    ((cid, status, reason),) = s.updates
    assert status == "rejected" and "limit_price=-5" in reason
    assert r.counts["rejected"] == 1


async def test_cancel_from_a_hook_releases_the_reservation():
    def place(b, ctx, me):
        return [ctx.buy("A", 10, limit=90.0, tif="gtc")]

    def cancel(b, ctx, me):
        (order,) = ctx.open_orders("A")
        me.kept["cancelled"] = ctx.cancel(order)
        me.kept["again"] = ctx.cancel(order)

    s = Script({0: place, 1: cancel})
    r = runner_for(s)
    await r.process([bar(0, 100, 101, 99, 100)])
    assert r.broker.account.reserved == pytest.approx(900.0)  # 10 x the limit
    await r.process([bar(1, 100, 101, 99, 100)])
    assert s.kept == {"cancelled": True, "again": False}
    assert statuses(s, "o1") == ["accepted", "cancelled"]
    assert r.broker.account.reserved == 0.0
    assert r.counts["cancelled"] == 1
    await r.process([bar(2, 85, 86, 84, 85)])  # would have filled the limit
    assert s.fills == []


async def test_replace_moves_the_limit_and_the_new_order_fills():
    def place(b, ctx, me):
        return [ctx.buy("A", 10, limit=90.0)]

    def move(b, ctx, me):
        (order,) = ctx.open_orders()
        me.kept["new"] = ctx.replace(order, limit=99.5, qty=4)

    s = Script({0: place, 1: move})
    r = runner_for(s)
    await r.process([bar(0, 100, 101, 99.8, 100), bar(1, 100, 101, 99.8, 100)])
    new = s.kept["new"]
    assert new.client_order_id == "o2" and new.replaces == "o1" and new.limit_price == 99.5
    assert statuses(s, "o1") == ["accepted", "replaced"]
    assert r.broker.account.reserved == pytest.approx(4 * 99.5)
    await r.process([bar(2, 99.7, 100, 99.0, 99.2)])  # range reaches 99.5: fills at the limit
    assert s.fills == [("o2", 4, 99.5)]
    assert r.broker.account.reserved == 0.0


async def test_bracket_target_fills_and_cancels_the_stop():
    s = Script({0: lambda b, ctx, me: [ctx.buy("A", 10, stop=95.0, target=105.0)]})
    r = runner_for(s)
    await r.process(
        [
            bar(0, 100, 101, 99, 100),
            bar(1, 100, 101, 99, 100.5),  # entry at the open 100
            bar(2, 101, 106, 100, 104),  # target 105 inside the range
        ]
    )
    assert s.fills == [("o1", 10, 100.0), ("o1-tp", 10, 105.0)]
    assert statuses(s, "o1-sl") == ["held", "accepted", "cancelled"]
    assert r.broker.position("s", "A").qty == 0
    assert r.broker.open_orders() == []


async def test_risk_refusal_names_the_rule_and_is_counted_per_rule():
    s = Script({0: lambda b, ctx, me: [ctx.buy("A", 100), ctx.buy("A", 10)]})
    r = runner_for(s, risk=RiskPlan(max_order_notional=5_000))
    await r.process([bar(0, 100, 101, 99, 100), bar(1, 100, 101, 99, 100)])
    refused = [u for u in s.updates if u[1] == "rejected"]
    assert [c for c, _, _ in refused] == ["o1"]
    assert "max_order_notional" in refused[0][2] and "5,000.00" in refused[0][2]
    assert r.risk.refused == {"max_order_notional": 1}
    assert s.fills == [("o2", 10, 100.0)]  # the order inside the limit went through


async def test_daily_loss_halts_and_flattens_then_only_reducing_orders_pass():
    def entry(b, ctx, me):
        return [ctx.buy("A", 100)]

    def try_more(b, ctx, me):
        me.kept["account"] = ctx.account
        return [ctx.buy("A", 1)]

    s = Script({0: entry, 3: try_more})
    r = runner_for(s, risk=RiskPlan(max_daily_loss=500, on_breach="flatten"))
    await r.process(
        [
            bar(0, 100, 100, 100, 100),
            bar(1, 100, 100, 100, 100),  # bought 100 at 100
            bar(2, 93, 93, 93, 93),  # -700: the next minute sees the breach
            bar(3, 92, 92, 92, 92),  # breach → halt + flatten: sold at this open
            bar(4, 92, 92, 92, 92),
        ]
    )
    account = r.broker.account
    assert account.halted == HALT_RISK
    assert r.risk.breaches == {"max_daily_loss": 1}
    assert r.broker.position("s", "A").qty == 0
    sells = [f for f in r.fill_log if f.side == "sell"]
    assert [(f.qty, f.price) for f in sells] == [(100, 92.0)]
    assert s.kept["account"].halted and s.kept["account"].day_pnl == pytest.approx(-800.0)
    refused = [u for u in s.updates if u[1] == "rejected"]
    assert len(refused) == 1 and "halted" in refused[0][2]


async def test_risk_halt_lifts_on_the_next_new_york_day():
    s = Script({0: lambda b, ctx, me: [ctx.buy("A", 100)]})
    r = runner_for(s, risk=RiskPlan(max_daily_loss=500))
    await r.process([bar(0, 100, 100, 100, 100), bar(1, 100, 100, 100, 100), bar(2, 90, 90, 90, 90)])
    await r.process([bar(3, 90, 90, 90, 90)])
    assert r.broker.account.halted == HALT_RISK
    tomorrow = T0 + 24 * 60 * MIN
    await r.process([bar(0, 90, 90, 90, 90, t0=tomorrow)])
    assert r.broker.account.halted == 0


async def test_flatten_requested_elsewhere_closes_positions_and_cancels_orders():
    def entries(b, ctx, me):  # at A's bar 0 (B's bar 0 is counted as step 0)
        return [ctx.buy("A", 5), ctx.sell("B", 3), ctx.buy("A", 1, limit=50.0, tif="gtc")]

    s = Script({1: entries})
    r = runner_for(s)
    await r.process([bar(0, 50, 50, 50, 50, sym="B"), bar(0, 100, 100, 100, 100)])  # B priced before A's bar
    await r.process([bar(1, 101, 101, 101, 101), bar(1, 51, 51, 51, 51, sym="B")])
    assert r.broker.positions("s") == {"A": 5, "B": -3}
    r.broker.account.request_flatten()  # as the control channel or another consumer does
    await r.process([bar(2, 102, 102, 102, 102), bar(2, 52, 52, 52, 52, sym="B")])
    assert r.broker.positions("s") == {}
    assert statuses(s, "o3") == ["accepted", "cancelled"]
    assert r.broker.account.reserved == pytest.approx(0.0)


async def test_day_orders_expire_at_the_close_and_the_session_end_cancels_the_rest():
    def place(b, ctx, me):
        return [ctx.buy("A", 10, limit=50.0), ctx.buy("A", 10, limit=40.0, tif="gtc")]

    s = Script({0: place})
    r = runner_for(s)
    close = int(datetime(2024, 3, 5, 16, 0, tzinfo=NY).timestamp()) * 10**9
    await r.process([bar(0, 100, 100, 100, 100)])
    await r.process([(BAR, "A", close - MIN, 100, 100, 100, 100, 1.0, 0)])
    assert statuses(s, "o1") == ["accepted"]
    await r.process([(BAR, "A", close, 100, 100, 100, 100, 1.0, 0)])
    assert statuses(s, "o1") == ["accepted", "expired"]
    assert r.broker.account.reserved == pytest.approx(400.0)  # the gtc order still holds its cash
    await r.stop()
    assert statuses(s, "o2") == ["accepted", "cancelled"]
    assert r.broker.account.reserved == 0.0
    assert (r.counts["expired"], r.counts["cancelled"]) == (1, 1)
