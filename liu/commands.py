"""Requests from the main process to one consumer, beyond `Start`/`Assign`/`Stop`, and their answers.

Cancel one order (the control channel's `cancel`, which the dashboard's cancel button sends):

    main ──CancelOrder──▶ producer ──send_control to writers[consumer]──▶ consumer
    main ◀──CancelAnswer── consumer (its results pipe, beside ConsumerReady / ConsumerReport)

The request travels through the producer like `Assign`, so it keeps its place among the consumer's
events. The consumer cancels the order if it is still open (the same cancel a strategy's `ctx.cancel`
makes: the strategy gets `on_order`, the row becomes "cancelled" with the reason) and answers every
request once, `ok=False` with a sentence when the order is unknown or already final. The main process
matches answers to callers by `request` and gives up after a timeout (`liu.cancel.ConsumerCancel`).
"""

from __future__ import annotations

from dataclasses import dataclass

CANCEL_REASON = "cancelled from the control channel"


@dataclass(frozen=True)
class CancelOrder:
    """Main → consumer `consumer`: cancel `client_order_id` if it is open."""

    request: int
    consumer: int
    client_order_id: str


@dataclass(frozen=True)
class CancelAnswer:
    """Consumer → main: what became of `CancelOrder(request)`; `message` is a sentence for a person."""

    request: int
    client_order_id: str
    ok: bool
    message: str
