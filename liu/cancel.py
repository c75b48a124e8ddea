"""The control channel's `cancel`: find the consumer that owns an order, ask it, wait for its answer.

`ConsumerCancel` is `AccountControl`'s `cancel` callback in the daemon. The owner is read from the order
id itself: consumer `i` of batch `b` names its orders `b[:8]-i-N` (`liu.engine.consumer_main`'s
`order_prefix`; a bracket's legs `b[:8]-i-N-sl` / `-tp`), so an order placed a moment ago can be cancelled before its row reaches the database.
The message protocol is in `liu.commands`.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from typing import Any

from liu.commands import CancelAnswer, CancelOrder


def order_owner(batch_id: str, client_order_id: str, consumers: int) -> int | None:
    """The consumer index that placed `client_order_id` in batch `batch_id`, or None (not this session's)."""
    # The prefix is the batch id's first 8 characters (paper) or the whole batch id (Alpaca, whose ids must
    # be unique for ever: liu.brokers.alpaca.ids); a bracket's legs add "-sl" / "-tp" to their entry's id.
    prefix = f"(?:{re.escape(batch_id[:8])}|{re.escape(batch_id)})"
    m = re.fullmatch(rf"{prefix}-(\d+)-\d+(?:-sl|-tp)?", client_order_id)
    if m is None or int(m.group(1)) >= consumers:
        return None
    return int(m.group(1))


class ConsumerCancel:
    """Send `CancelOrder` through `send` (the producer's control pipe); `on_answer` gets the replies.

    Runs on the daemon's event loop: `__call__` and `on_answer` must be called from it.
    """

    def __init__(
        self, batch_id: str, consumers: int, send: Callable[[Any], None], timeout: float = 5.0
    ) -> None:
        self.batch_id = batch_id
        self.consumers = consumers
        self.send = send
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[CancelAnswer]] = {}

    async def __call__(self, client_order_id: str) -> dict[str, Any]:
        owner = order_owner(self.batch_id, client_order_id, self.consumers)
        if owner is None:
            return {"ok": False, "message": f"cancel {client_order_id}: not an order of this session"}
        request = next(self._ids)
        answer = self._waiting[request] = asyncio.get_running_loop().create_future()
        try:
            try:
                self.send(CancelOrder(request, owner, client_order_id))
            except OSError:
                return {
                    "ok": False,
                    "message": f"cancel {client_order_id}: the producer is gone (session ending)",
                }
            try:
                done = await asyncio.wait_for(answer, self.timeout)
            except TimeoutError:
                return {
                    "ok": False,
                    "message": f"cancel {client_order_id}: consumer {owner} did not answer within {self.timeout:g}s",
                }
        finally:
            self._waiting.pop(request, None)
        return {"ok": done.ok, "message": done.message, "client_order_id": client_order_id}

    def on_answer(self, msg: CancelAnswer) -> None:
        waiting = self._waiting.get(msg.request)
        if waiting is not None and not waiting.done():
            waiting.set_result(msg)
