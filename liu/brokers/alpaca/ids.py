"""Client order ids that are deterministic and unique for ever.

`<batch id>-<consumer>-<seq>`: the batch id is a full UUID (never reused), the consumer index and the
desk's sequence make it unique within the batch, so re-sending an order after a timeout re-uses its
id and Alpaca's "client_order_id must be unique" can only ever mean "this very order already exists".
A bracket's legs get their parent's id plus `-sl` / `-tp` (Alpaca names legs itself).
"""

from __future__ import annotations

MAX_LEN = 48  # the stricter of Alpaca's documented limits (48 in the older spec, 128 in the newer)
LEG_SUFFIX = {"stop_loss": "-sl", "take_profit": "-tp"}


def order_prefix(batch_id: str, consumer: int) -> str:
    """The desk's id prefix for `consumer` of `batch_id` (the desk appends its sequence)."""
    return f"{batch_id}-{consumer}-"


def consumer_of(client_order_id: str) -> int | None:
    """The consumer that placed an order, from its id; None for an id liu did not make."""
    parts = client_order_id.split("-")
    # uuid4 has 5 dash-separated parts; then consumer, seq and perhaps a leg suffix
    if len(parts) < 7 or not parts[5].isdigit():
        return None
    return int(parts[5])


def leg_id(parent: str, leg: str) -> str:
    return parent + LEG_SUFFIX[leg]


def check(client_order_id: str) -> str:
    """`client_order_id` itself, or a clear error when Alpaca would refuse it as too long."""
    if len(client_order_id) > MAX_LEN:
        raise ValueError(f"client order id {client_order_id!r} is longer than {MAX_LEN} characters")
    return client_order_id
