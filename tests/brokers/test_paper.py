import pytest

from liu.brokers.account import Account
from liu.brokers.paper import PaperBroker
from liu.events import Order


def _broker(cash=10_000.0, **kw):
    b = PaperBroker(Account(cash), **kw)
    fills = []
    b.on_fill = fills.append
    return b, fills


def _order(side, qty, limit=None, sym="A", cid="1"):
    return Order(sym, side, qty, "limit" if limit else "market", limit, strategy="s", client_order_id=cid)


def test_market_buy_fills_at_next_trade_with_slippage_and_fees():
    b, fills = _broker(fee_per_share=0.01, fee_bps=1.0, slippage_bps=10)
    assert b.submit(_order("buy", 10), last_price=100.0) is None
    assert fills == []  # never fills on the event being handled
    b.on_trade("A", 5, 101.0)
    (f,) = fills
    assert f.price == pytest.approx(101.0 * 1.001)
    assert f.fee == pytest.approx(10 * 0.01 + 10 * f.price * 1e-4)
    assert b.account.cash == pytest.approx(10_000 - 10 * f.price - f.fee)
    assert b.account.reserved == pytest.approx(0.0)
    assert b.position("s", "A").qty == 10


def test_limit_buy_waits_for_price_and_bar_gap_fills_at_open():
    b, fills = _broker()
    b.submit(_order("buy", 5, limit=99.0), last_price=100.0)
    b.on_trade("A", 1, 99.5)
    assert not fills
    b.on_bar("A", 2, 98.0, 98.5, 97.0)  # gapped below the limit: fills at the open
    assert fills[-1].price == 98.0
    b.submit(_order("buy", 5, limit=97.5, cid="2"), last_price=98.0)
    b.on_bar("A", 3, 98.0, 99.0, 97.0)  # traded through: fills at the limit
    assert fills[-1].price == 97.5


def test_market_order_fills_on_quote_at_ask_or_bid():
    b, fills = _broker()
    b.submit(_order("buy", 1), last_price=10.0)
    b.on_quote("A", 1, 9.9, 10.1)
    assert fills[-1].price == 10.1
    b.submit(_order("sell", 1, cid="2"), last_price=10.0)
    b.on_quote("A", 2, 9.9, 10.1)
    assert fills[-1].price == 9.9


def test_rejects_beyond_cash_and_counts_pending_reservations():
    b, _ = _broker(cash=1_000.0)
    assert b.submit(_order("buy", 8), last_price=100.0) is None
    reason = b.submit(_order("buy", 3, cid="2"), last_price=100.0)
    assert reason and "insufficient cash" in reason


def test_short_needs_shortable_symbol_and_margin():
    b, fills = _broker(cash=1_000.0, not_shortable=["HTB"])
    assert "not shortable" in b.submit(_order("sell", 1, sym="HTB"), last_price=10.0)
    assert b.submit(_order("sell", 5), last_price=100.0) is None  # 500 margin of 1000
    b.on_trade("A", 1, 100.0)
    assert b.position("s", "A").qty == -5
    assert b.account.available() == pytest.approx(500.0)
    assert "insufficient cash" in b.submit(_order("sell", 6, cid="3"), last_price=100.0)
    b.submit(_order("buy", 5, cid="4"), last_price=90.0)  # cover: no cash needed up front
    b.on_trade("A", 2, 90.0)
    pos = b.position("s", "A")
    assert pos.qty == 0 and pos.realized == pytest.approx(50.0)
    assert b.account.cash == pytest.approx(1_050.0)
    assert b.account.available() == pytest.approx(1_050.0)


def test_selling_long_then_more_opens_a_short():
    b, fills = _broker()
    b.submit(_order("buy", 10), 10.0)
    b.on_trade("A", 1, 10.0)
    b.submit(_order("sell", 15, cid="2"), 10.0)
    b.on_trade("A", 2, 11.0)
    pos = b.position("s", "A")
    assert pos.qty == -5 and pos.avg_price == 11.0 and pos.realized == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (Order("A", "hold", 1, strategy="s"), "side 'hold'"),
        (Order("A", "buy", 0, strategy="s"), "qty=0"),
        (Order("A", "buy", 1, "limit", None, strategy="s"), "limit order needs limit_price"),
        (Order("A", "buy", 1, "stop", strategy="s"), "type 'stop'"),
    ],
)
def test_bad_orders_are_rejected_with_reason(order, expected):
    b, _ = _broker()
    assert expected in b.submit(order, 10.0)


def test_market_order_without_any_price_is_rejected():
    b, _ = _broker()
    assert "no price seen yet for A" in b.submit(_order("buy", 1), None)
