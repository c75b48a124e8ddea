"""`trader account | positions | orders [--open] | flatten` against the plan's Alpaca account.

Each opens its own short-lived TradingClient (keys from the environment, never printed), so they work
whether or not a session runs; `flatten` goes here only when no session answers on the control channel
(a running session flattens through its own gateway, so its strategies see the orders).
"""

from __future__ import annotations

from typing import Any

from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest

from liu.brokers.alpaca.gateway import error_text, trading_client
from liu.errors import ConfigError


def client_for(plan: Any) -> TradingClient:
    """The plan's Alpaca trading client; a clear error for a paper plan or missing keys."""
    from liu.sources.alpaca.client import load_credentials

    if plan.broker.kind != "alpaca":
        raise ConfigError(
            f'[broker] kind = "{plan.broker.kind}": these commands read an Alpaca account '
            '(set kind = "alpaca"; the paper account of a running session: `trader status`)'
        )
    a = plan.alpaca
    creds = load_credentials(a.key_env, a.secret_env)
    return trading_client(creds.key_id, creds.secret, a.trading_base, paper=a.paper, timeout=float(a.timeout))


def _call(plan: Any, what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - one line naming the call and the URL, never the keys
        raise ConfigError(f"{what} at {plan.alpaca.trading_base}: {error_text(e)}") from None


def account(plan: Any) -> dict[str, str]:
    client = client_for(plan)
    a = _call(plan, "trader account", client.get_account)
    keys = ("account_number", "status", "currency", "cash", "buying_power", "equity", "portfolio_value")
    return {k: str(a.get(k)) for k in keys if a.get(k) is not None}


def positions(plan: Any) -> list[dict[str, str]]:
    client = client_for(plan)
    rows = _call(plan, "trader positions", client.get_all_positions)
    keys = ("symbol", "side", "qty", "avg_entry_price", "current_price", "market_value", "unrealized_pl")
    return [{k: str(p.get(k) or "") for k in keys} for p in rows]


def orders(plan: Any, open_only: bool) -> list[dict[str, str]]:
    client = client_for(plan)
    status = QueryOrderStatus.OPEN if open_only else QueryOrderStatus.ALL
    rows = _call(plan, "trader orders", client.get_orders, GetOrdersRequest(status=status, limit=500))
    keys = ("client_order_id", "symbol", "side", "type", "qty", "filled_qty", "filled_avg_price", "status")
    return [{k: str(o.get(k) or "") for k in keys} for o in rows]


def flatten(plan: Any) -> list[str]:
    """Cancel every open order and close every position at Alpaca; one line per position."""
    client = client_for(plan)
    _call(plan, "trader flatten (cancel orders)", client.cancel_orders)
    answers = _call(plan, "trader flatten (close positions)", client.close_all_positions, True)
    lines = []
    for r in answers or ():
        body = r.get("body") or {}
        ok = 200 <= int(r.get("status") or 0) < 300
        lines.append(f"{r.get('symbol')}: {'closing order sent' if ok else body.get('message', 'failed')}")
    return lines or ["no positions to close"]
