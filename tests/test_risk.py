import logging
import multiprocessing
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from liu.brokers.account import HALT_MANUAL, HALT_NONE, HALT_RISK, Account
from liu.events import Order
from liu.plan import RiskPlan
from liu.risk import RiskManager, order_price, with_open_orders

NY = ZoneInfo("America/New_York")
STRATEGIES = {"s": 0, "t": 1}


def ny_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()) * 1_000_000_000


T0 = ny_ns("2024-03-05 10:00")


def _order(side="buy", qty=100.0, type="market", limit=None, trigger=None, strategy="s", **kw):
    return Order(
        "AAPL",
        side,
        qty,
        type,
        limit_price=limit,
        trigger_price=trigger,
        strategy=strategy,
        client_order_id="1",
        **kw,
    )


def _risk(account=None, slot=0, **limits):
    account = account or Account(1_000_000.0, slots=2, strategies=len(STRATEGIES))
    return RiskManager(RiskPlan(**limits), account, slot, STRATEGIES)


def _check(rm, order, last=100.0, held=0.0, symbol_position=None, local_gross=0.0, local_open=0, now=T0):
    return rm.check(
        order,
        last_price=last,
        held=held,
        symbol_position=held if symbol_position is None else symbol_position,
        local_gross=local_gross,
        local_open_orders=local_open,
        now_ns=now,
    )


def test_no_limits_pass_everything_and_count_nothing():
    rm = _risk(max_daily_loss=500.0)  # a day-loss limit alone checks no order
    assert not rm.enabled
    assert _check(rm, _order(qty=1e9), local_open=10**6) is None
    assert rm.refused == {}
    assert _risk(max_open_orders=3).enabled


def test_max_order_notional_refuses_just_above_the_limit_with_rule_limit_and_value():
    rm = _risk(max_order_notional=10_000.0)
    assert _check(rm, _order(qty=100)) is None
    assert (
        _check(rm, _order(qty=101)) == "risk max_order_notional: order notional 10,100.00 > limit 10,000.00"
    )
    assert rm.refused == {"max_order_notional": 1}


@pytest.mark.parametrize(
    ("order", "price"),
    [
        (_order(type="market"), 100.0),  # at the last trade
        (_order(type="limit", limit=90.0), 90.0),
        (_order(type="stop", trigger=120.0), 120.0),
        (_order(type="stop_limit", trigger=120.0, limit=125.0), 125.0),
        (_order(type="trailing_stop", trail_percent=1.0), 100.0),
    ],
)
def test_orders_are_valued_at_their_own_price(order, price):
    assert order_price(order, 100.0) == price
    rm = _risk(max_order_notional=100 * price)
    assert _check(rm, order) is None
    bigger = _order(
        qty=101,
        type=order.type,
        limit=order.limit_price,
        trigger=order.trigger_price,
        trail_percent=order.trail_percent,
    )
    assert _check(rm, bigger).startswith("risk max_order_notional")


def test_market_order_without_a_last_trade_cannot_be_valued_and_passes_the_notional_rules():
    rm = _risk(max_order_notional=1.0, max_position_notional=1.0, max_gross_exposure=1.0)
    assert _check(rm, _order(qty=10**6), last=None) is None
    assert _check(rm, _order(qty=10**6, type="limit", limit=1.0), last=None).startswith(
        "risk max_order_notional"
    )


def test_max_position_notional_counts_the_whole_account_position_in_the_symbol():
    rm = _risk(max_position_notional=10_000.0)
    # Another strategy holds 40: the account's 40 + this 60 = 100 x 100 = the limit.
    assert _check(rm, _order(qty=60), held=0.0, symbol_position=40.0) is None
    assert (
        _check(rm, _order(qty=61), held=0.0, symbol_position=40.0)
        == "risk max_position_notional: AAPL position notional 10,100.00 after the order > limit 10,000.00"
    )
    # Short side, same limit.
    assert _check(rm, _order("sell", qty=101), held=0.0, symbol_position=0.0).startswith("risk max_position")
    # An opening order that shrinks the account's |position| (another strategy is short 300) passes.
    assert _check(rm, _order(qty=150), held=0.0, symbol_position=-300.0) is None
    assert rm.refused == {"max_position_notional": 2}


def test_max_gross_exposure_adds_other_processes_this_process_and_the_growth_of_the_order():
    account = Account(1_000_000.0, slots=2, strategies=2)
    account.publish(1, net_value=60_000.0, gross_value=60_000.0, open_orders=0)
    account.publish(0, net_value=0.0, gross_value=999_999.0, open_orders=0)  # own slot: local_gross wins
    rm = _risk(account, slot=0, max_gross_exposure=100_000.0)
    assert _check(rm, _order(qty=100), local_gross=30_000.0) is None
    assert (
        _check(rm, _order(qty=101), local_gross=30_000.0)
        == "risk max_gross_exposure: gross exposure 100,100.00 after the order > limit 100,000.00"
    )
    # A flip from long 50 adds only what grows |held|: selling 150 adds 5,000 (not its 15,000 notional),
    # selling 200 adds 10,000 (exactly the limit), selling 201 adds 10,100.
    assert _check(rm, _order("sell", qty=150), held=50.0, local_gross=30_000.0) is None
    assert _check(rm, _order("sell", qty=200), held=50.0, local_gross=30_000.0) is None
    assert _check(rm, _order("sell", qty=201), held=50.0, local_gross=30_000.0).startswith("risk max_gross")
    assert rm.refused == {"max_gross_exposure": 2}


def test_max_open_orders_counts_other_processes_this_process_and_a_brackets_legs():
    account = Account(1_000_000.0, slots=2, strategies=2)
    account.publish(1, 0.0, 0.0, open_orders=2)
    account.publish(0, 0.0, 0.0, open_orders=50)  # own slot: local_open_orders wins
    rm = _risk(account, max_open_orders=5)
    assert _check(rm, _order(), local_open=2) is None  # 2 + 2 + 1 = 5
    assert (
        _check(rm, _order(), local_open=3) == "risk max_open_orders: open orders 6 with this order > limit 5"
    )
    bracket = _order(stop=98.0, target=104.0)  # the entry and its two legs open together
    assert _check(rm, bracket, local_open=0) is None
    assert _check(rm, bracket, local_open=1).startswith("risk max_open_orders: open orders 6")
    # A count rule: reducing orders are checked too.
    assert _check(rm, _order("sell"), held=100.0, local_open=3).startswith("risk max_open_orders")
    assert rm.refused == {"max_open_orders": 3}


def test_max_orders_per_minute_per_strategy_counts_reducing_orders_but_not_refused_ones():
    rm = _risk(max_orders_per_minute=2, max_order_notional=10_000.0)
    assert _check(rm, _order()) is None
    assert _check(rm, _order(qty=1_000)).startswith("risk max_order_notional")  # refused first: not counted
    assert _check(rm, _order("sell"), held=100.0) is None  # reducing: counted
    assert (
        _check(rm, _order("sell"), held=100.0)
        == "risk max_orders_per_minute: order 3 of strategy 's' this minute > limit 2"
    )
    assert _check(rm, _order(strategy="t")) is None  # another strategy has its own count
    assert _check(rm, _order(), now=T0 + 60_000_000_000) is None  # the next minute starts again
    assert rm.refused == {"max_order_notional": 1, "max_orders_per_minute": 1}


def test_price_band_refuses_limits_far_from_the_last_trade_for_every_order():
    rm = _risk(price_band_bps=100.0)
    assert _check(rm, _order(type="limit", limit=101.0)) is None  # exactly 100 bps
    assert _check(rm, _order(type="limit", limit=99.0)) is None
    assert (
        _check(rm, _order(type="limit", limit=101.5))
        == "risk price_band_bps: limit price 101.50 is 150.0 bps from last trade 100.00 > limit 100.0 bps"
    )
    # Reducing orders too.
    assert _check(rm, _order("sell", type="limit", limit=98.0), held=100.0).startswith("risk price_band_bps")
    # Market orders trade at the last price; without a last trade the band cannot be checked.
    assert _check(rm, _order()) is None
    assert _check(rm, _order(type="limit", limit=500.0), last=None) is None
    # Stop triggers sit away from the market on purpose; a stop-limit's limit is measured from its trigger.
    assert _check(rm, _order("sell", type="stop", trigger=90.0)) is None
    assert _check(rm, _order(type="stop_limit", trigger=110.0, limit=111.0)) is None
    assert _check(rm, _order(type="stop_limit", trigger=110.0, limit=112.0)).endswith(
        "is 181.8 bps from trigger 110.00 > limit 100.0 bps"
    )
    assert rm.refused == {"price_band_bps": 3}


@pytest.mark.parametrize("limits", [{}, {"max_order_notional": 1e9}])
def test_halt_refuses_opening_and_growing_orders_and_passes_reducing_ones(limits):
    rm = _risk(**limits)
    assert _check(rm, _order()) is None
    rm.account.halt(HALT_MANUAL)
    assert _check(rm, _order()) == "risk halted: trading halted (manual); only reducing orders pass"
    assert _check(rm, _order("sell", qty=10), held=10.0) is None  # closes the long
    assert _check(rm, _order("sell", qty=11), held=10.0).startswith("risk halted")  # would flip short
    assert _check(rm, _order("sell", qty=10), held=0.0).startswith("risk halted")  # opens a short
    assert _check(rm, _order("buy", qty=10), held=-10.0) is None  # covers the short
    assert _check(rm, _order("buy", qty=10), held=10.0).startswith("risk halted")  # grows the long
    assert rm.refused == {"halted": 4}
    assert rm.halted_reason() == "trading halted (manual)"
    rm.account.resume()
    assert _check(rm, _order()) is None
    assert rm.halted_reason() == ""


def test_reducing_orders_pass_the_notional_and_exposure_rules():
    account = Account(1_000_000.0, slots=2, strategies=2)
    account.publish(1, 0.0, gross_value=500_000.0, open_orders=0)
    rm = _risk(account, max_order_notional=1_000.0, max_position_notional=1_000.0, max_gross_exposure=1_000.0)
    assert _check(rm, _order("sell", qty=100), held=100.0, local_gross=10_000.0) is None
    assert _check(rm, _order("buy", qty=100), held=-100.0, local_gross=10_000.0) is None
    assert _check(rm, _order("buy", qty=11), held=0.0).startswith("risk max_order_notional")
    assert _check(rm, _order("buy", qty=5), held=0.0).startswith("risk max_gross_exposure")


def test_with_open_orders_counts_resting_orders_on_the_same_side_but_not_bracket_legs():
    resting = [
        Order("AAPL", "sell", 6.0, "limit", 105.0, status="accepted"),
        Order("AAPL", "sell", 4.0, "limit", 106.0, status="partially_filled", filled_qty=1.0),
        Order("AAPL", "sell", 10.0, "stop", trigger_price=95.0, status="held", leg="stop_loss"),
        Order("AAPL", "buy", 50.0, "limit", 90.0, status="accepted"),
        Order("AAPL", "sell", 7.0, status="filled", filled_qty=7.0),
    ]
    assert with_open_orders(10.0, resting, "sell") == 1.0  # 10 - 6 - 3
    assert with_open_orders(10.0, resting, "buy") == 60.0
    # With both resting exits counted, selling 10 more is no longer reducing: refused while halted.
    rm = _risk()
    rm.account.halt(HALT_MANUAL)
    assert _check(rm, _order("sell", qty=10), held=with_open_orders(10.0, resting, "sell")).startswith(
        "risk halted"
    )
    assert _check(rm, _order("sell", qty=1), held=with_open_orders(10.0, resting, "sell")) is None


def _lose(account: Account, slot: int, loss: float) -> None:
    # Bought 10,000 of stock that is now worth 10,000 - loss.
    account.apply(-10_000.0, 0.0)
    account.publish(slot, net_value=10_000.0 - loss, gross_value=10_000.0 - loss, open_orders=0)


def test_daily_loss_halts_once_for_the_new_york_day_and_lifts_the_next_day(caplog):
    account = Account(100_000.0, slots=1, strategies=2)
    rm = _risk(account, max_daily_loss=1_000.0, on_breach="flatten")
    assert rm.on_minute(T0) is None
    _lose(account, 0, 1_000.0)  # exactly the limit: no breach
    assert account.day_pnl() == -1_000.0
    assert rm.on_minute(T0 + 60_000_000_000) is None
    assert account.halted == HALT_NONE
    account.publish(0, net_value=8_999.0, gross_value=8_999.0, open_orders=0)  # 1,001 down
    with caplog.at_level(logging.WARNING, logger="liu.risk"):
        assert rm.on_minute(T0 + 120_000_000_000) == "flatten"
        assert rm.on_minute(T0 + 180_000_000_000) is None  # once
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert account.halted == HALT_RISK
    assert rm.breaches == {"max_daily_loss": 1}
    assert rm.halted_reason() == "trading halted (risk max_daily_loss: day P&L -1,001.00 < limit -1,000.00)"
    assert _check(rm, _order(qty=1)) == "risk halted: trading halted (risk); only reducing orders pass"
    # Late evening in New York is already the next day in UTC: still the same trading day, still halted.
    assert rm.on_minute(ny_ns("2024-03-05 23:59")) is None
    assert account.halted == HALT_RISK
    # The next New York day: the halt lifts and the day's P&L starts again from the current equity.
    assert rm.on_minute(ny_ns("2024-03-06 00:00")) is None
    assert account.halted == HALT_NONE
    assert account.day_pnl() == 0.0
    assert _check(rm, _order(qty=1)) is None
    assert rm.halted_reason() == ""


def test_daily_loss_still_past_the_limit_halts_again_after_a_manual_resume_the_same_day():
    account = Account(100_000.0, slots=1, strategies=2)
    rm = _risk(account, max_daily_loss=1_000.0)
    rm.on_minute(T0)
    _lose(account, 0, 2_000.0)
    assert rm.on_minute(T0 + 60_000_000_000) == "halt"
    account.resume()
    assert rm.on_minute(T0 + 120_000_000_000) == "halt"
    assert account.halted == HALT_RISK
    assert rm.breaches == {"max_daily_loss": 2}


def test_a_manual_halt_does_not_hide_a_daily_loss_breach():
    account = Account(100_000.0, slots=1, strategies=2)
    rm = _risk(account, max_daily_loss=1_000.0, on_breach="flatten")
    rm.on_minute(T0)
    account.halt(HALT_MANUAL)
    _lose(account, 0, 1_500.0)
    assert rm.on_minute(T0 + 60_000_000_000) == "flatten"
    assert account.halted == HALT_RISK


def test_two_processes_share_the_halt_the_open_orders_and_the_orders_per_minute():
    ctx = multiprocessing.get_context("spawn")
    account = Account(100_000.0, shared=True, ctx=ctx, slots=2, strategies=2)
    limits = {"max_daily_loss": 1_000.0, "max_open_orders": 3, "max_orders_per_minute": 2}
    a = _risk(account, slot=0, **limits)
    b = _risk(account, slot=1, **limits)
    assert a.on_minute(T0) is None
    assert b.on_minute(T0) is None
    # Open orders: what process a publishes, process b counts.
    account.publish(0, 0.0, 0.0, open_orders=2)
    assert _check(b, _order(), local_open=0) is None  # 2 + 0 + 1
    assert _check(b, _order(), local_open=1).startswith("risk max_open_orders: open orders 4")
    # Orders per minute of strategy "s" add up over both processes (b's first order above counted one).
    assert _check(a, _order(), local_open=0) is None
    assert (
        _check(a, _order(), local_open=0)
        == "risk max_orders_per_minute: order 3 of strategy 's' this minute > limit 2"
    )
    # A loss seen by process a halts process b too, and only a reports the breach.
    _lose(account, 0, 1_500.0)
    assert a.on_minute(T0 + 60_000_000_000) == "halt"
    assert b.on_minute(T0 + 60_000_000_000) is None
    assert b.breaches == {}
    assert _check(b, _order(strategy="t")) == "risk halted: trading halted (risk); only reducing orders pass"
    assert b.halted_reason() == "trading halted (risk)"
    # The next New York day, whichever process rolls it first, lifts the halt for both.
    assert b.on_minute(ny_ns("2024-03-06 09:30")) is None
    assert a.on_minute(ny_ns("2024-03-06 09:30")) is None
    assert account.halted == HALT_NONE
    assert _check(a, _order(strategy="t"), now=ny_ns("2024-03-06 09:30")) is None


def test_the_trading_day_is_the_new_york_date_not_the_utc_date():
    account = Account(100_000.0, slots=1, strategies=2)
    rm = _risk(account, max_daily_loss=1_000.0)
    evening = ny_ns("2024-03-05 20:30")  # already March 6 in UTC
    rm.on_minute(evening)
    _lose(account, 0, 1_500.0)
    assert rm.on_minute(evening + 60_000_000_000) == "halt"
    assert rm.on_minute(ny_ns("2024-03-06 09:30")) is None  # March 6 in New York: a new day
    assert account.halted == HALT_NONE
