"""Cash accounting shared by every consumer process.

Cash is one account for the whole run, while symbols (and so orders) are
spread over processes; the balance lives in shared memory behind a lock.
`available = cash - reserved`: reservations hold cash for open buy orders and
margin for open shorts.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Any


class Account:
    """Cash and reservations; `shared=True` puts them in shared memory for consumer processes."""

    def __init__(self, cash: float, shared: bool = False, ctx: Any = mp) -> None:
        if shared:
            self._v = ctx.RawArray("d", [cash, 0.0])
            self._lock = ctx.Lock()
        else:
            self._v = [cash, 0.0]
            self._lock = threading.Lock()

    @property
    def cash(self) -> float:
        return self._v[0]

    @property
    def reserved(self) -> float:
        return self._v[1]

    def available(self) -> float:
        return self._v[0] - self._v[1]

    def try_reserve(self, amount: float) -> bool:
        """Reserve `amount` if that much is available."""
        with self._lock:
            if self._v[0] - self._v[1] + 1e-9 < amount:
                return False
            self._v[1] += amount
            return True

    def apply(self, cash_delta: float, reserved_delta: float) -> None:
        with self._lock:
            self._v[0] += cash_delta
            self._v[1] += reserved_delta
