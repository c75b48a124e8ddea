"""Which consumer owns a symbol: the one formula the producer, the engine and the Alpaca gateway share."""

from __future__ import annotations

import zlib


def shard_of(symbol: str, consumers: int) -> int:
    """Stable consumer index for `symbol` (crc32, unlike `hash()`, does not change per process)."""
    return zlib.crc32(symbol.encode()) % consumers
