"""AlpacaBroker's own checks before anything reaches the gateway (the gateway itself is tested against the
local exchange in test_alpaca_gateway.py): a short in a symbol the asset list marks not shortable."""

from liu.brokers.alpaca.broker import AlpacaBroker
from liu.events import OrderUpdate
from liu.strategy import new_order


def _order(side: str, qty: float, symbol: str = "HTB", cid: str = "b-0-1"):
    o = new_order(symbol, side, qty)
    o.strategy, o.client_order_id = "s", cid
    return o


def test_a_sell_that_would_open_a_short_in_a_not_shortable_symbol_is_refused_before_sending():
    sent: list = []
    broker = AlpacaBroker(sent.append, None, not_shortable=("HTB",))
    broker.position("s", "HTB").qty = 5.0  # long 5
    (refused,) = broker.submit(_order("sell", 8), 10.0, 1)
    assert isinstance(refused, OrderUpdate) and refused.event == "rejected"
    assert refused.order.reason.startswith("HTB is not shortable")
    assert sent == []  # nothing went to the gateway
    (ok, *_) = broker.submit(_order("sell", 5, cid="b-0-2"), 10.0, 2)  # closing the long is fine
    assert ok.event == "new" and len(sent) == 1
    (other, *_) = broker.submit(_order("sell", 3, symbol="OK", cid="b-0-3"), 10.0, 3)  # shortable
    assert other.event == "new" and len(sent) == 2
