"""Live counters shared between the daemon's processes (one int64 array in shared memory).

Each slot has exactly one writer process, so no lock is needed; the main
process only reads them to draw progress and to spot a consumer falling behind.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

PRODUCER_FIELDS = (
    "frames",
    "events",
    "unroutable",
    "reconnects",
    "gap_ms",
    "connected",
    "updated_bars",  # Alpaca `u`: a closed bar revised (passed on to its consumer)
    "corrections",  # Alpaca `c`: a trade corrected (counted and logged)
    "cancel_errors",  # Alpaca `x`: a trade cancelled (counted and logged)
)
# A strategy runner's counters (its `counts` dict), named once for the runner, the consumer report,
# the shared progress array and the summary.
RUNNER_COUNTERS = (
    "received",
    "processed",
    "stale",
    "malformed",
    "strategy_errors",
    "orders",
    "rejected",
    "fills",
    "cancelled",
    "expired",
)
CONSUMER_FIELDS = (
    "sent",
    "backlog_bytes",  # written by the producer
    "lost",  # routed to the consumer while it was dead: set by the producer when it rewires a restarted one
    *RUNNER_COUNTERS,
    "lag_us",  # written by the consumer
    "warmed",  # symbols whose history was loaded (warm-up or back-fill)
    "warm_bars",  # history bars loaded
    "warm_failed",  # symbols whose history could not be loaded (they warm up live)
    "db_backlog",  # rows waiting for the database in the trade writer's spool (written by the consumer)
)
_P = len(PRODUCER_FIELDS)
_C = len(CONSUMER_FIELDS)


class SharedStats:
    """Named views into one shared `int64` array."""

    def __init__(self, consumers: int, ctx: Any = mp) -> None:
        self.consumers = consumers
        self.array = ctx.RawArray("q", _P + _C * consumers)

    def producer_index(self, field: str) -> int:
        return PRODUCER_FIELDS.index(field)

    def consumer_index(self, i: int, field: str) -> int:
        return _P + _C * i + CONSUMER_FIELDS.index(field)

    def producer(self) -> dict[str, int]:
        return {f: self.array[k] for k, f in enumerate(PRODUCER_FIELDS)}

    def consumer(self, i: int) -> dict[str, int]:
        base = _P + _C * i
        return {f: self.array[base + k] for k, f in enumerate(CONSUMER_FIELDS)}
