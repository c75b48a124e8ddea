"""The control channel's cancel in the main process: the owning consumer from the order id, answers matched
to callers, a consumer that does not answer in time (liu.cancel)."""

from __future__ import annotations

import asyncio

from liu.cancel import ConsumerCancel, order_owner
from liu.commands import CancelAnswer, CancelOrder

BATCH = "30d355d2-a695-462b-8598-d3bc5b6b45f7"


def test_the_owner_is_read_from_the_order_id() -> None:
    assert order_owner(BATCH, "30d355d2-1-17", 2) == 1
    assert order_owner(BATCH, "30d355d2-0-17-sl", 2) == 0  # a bracket's stop-loss leg
    assert order_owner(BATCH, "30d355d2-1-17-tp", 2) == 1
    assert order_owner(BATCH, "30d355d2-0-17-xx", 2) is None  # not an id this session's consumers make
    assert order_owner(BATCH, "30d355d2-2-17", 2) is None  # no consumer 2
    assert order_owner(BATCH, "deadbeef-0-17", 2) is None  # another batch's
    assert order_owner(BATCH, "30d355d2-0-x", 2) is None


def test_the_owner_of_an_alpaca_order_is_read_from_its_full_batch_id() -> None:
    # With [broker] kind = "alpaca" the ids carry the whole batch id (unique for ever at Alpaca).
    assert order_owner(BATCH, f"{BATCH}-1-17", 2) == 1
    assert order_owner(BATCH, f"{BATCH}-0-17-sl", 2) == 0
    assert order_owner(BATCH, f"{BATCH}-2-17", 2) is None
    assert order_owner(BATCH, "30d355d2-a695-462b-8598-000000000000-0-17", 2) is None  # another batch


async def test_answers_reach_their_callers_and_silence_times_out() -> None:
    sent: list[CancelOrder] = []
    cancel = ConsumerCancel(BATCH, 2, sent.append, timeout=0.5)
    first = asyncio.create_task(cancel("30d355d2-1-5"))
    second = asyncio.create_task(cancel("30d355d2-0-6"))
    while len(sent) < 2:
        await asyncio.sleep(0)
    assert [(m.consumer, m.client_order_id) for m in sent] == [(1, "30d355d2-1-5"), (0, "30d355d2-0-6")]
    assert sent[0].request != sent[1].request
    # Answered out of order, each reaches its own caller; a stray answer is ignored.
    cancel.on_answer(CancelAnswer(sent[1].request, "30d355d2-0-6", False, "order 30d355d2-0-6 is filled"))
    cancel.on_answer(CancelAnswer(999, "nope", True, "stray"))
    cancel.on_answer(CancelAnswer(sent[0].request, "30d355d2-1-5", True, "cancelled 30d355d2-1-5"))
    assert await first == {"ok": True, "message": "cancelled 30d355d2-1-5", "client_order_id": "30d355d2-1-5"}
    assert (await second)["message"] == "order 30d355d2-0-6 is filled"
    late = await cancel("30d355d2-1-7")
    assert late == {"ok": False, "message": "cancel 30d355d2-1-7: consumer 1 did not answer within 0.5s"}
    assert (await cancel("other-0-1"))["message"] == "cancel other-0-1: not an order of this session"
    assert len(sent) == 3  # nothing sent for an order that is not this session's
