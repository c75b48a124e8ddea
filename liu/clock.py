"""One clock for live, replay and backtest.

Every process builds its `Clock` from the same `ClockSpec` (data epoch, wall
epoch, speed), so all of them derive the same simulated time and "stale"
means the same thing everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ClockSpec:
    """Maps wall time to data time: data = data_epoch + (wall - wall_epoch) * speed.

    `speed=None` means "as fast as possible" (replay at full speed, backtest):
    there is no meaningful wall mapping, so staleness is not judged.
    """

    data_epoch_ns: int
    wall_epoch_ns: int
    speed: float | None = 1.0

    @classmethod
    def live(cls) -> ClockSpec:
        now = time.time_ns()
        return cls(now, now, 1.0)


class Clock:
    """Data-time clock built from a `ClockSpec`; cheap enough to call per event."""

    __slots__ = ("spec", "_data0", "_wall0", "_speed")

    def __init__(self, spec: ClockSpec) -> None:
        self.spec = spec
        self._data0 = spec.data_epoch_ns
        self._wall0 = spec.wall_epoch_ns
        self._speed = spec.speed

    @property
    def realtime(self) -> bool:
        """True when data time advances with wall time (so staleness is meaningful)."""
        return self._speed is not None

    def now_ns(self) -> int:
        """Current data time in ns since the Unix epoch (UTC)."""
        if self._speed is None:
            return self._data0
        return self._data0 + int((time.time_ns() - self._wall0) * self._speed)

    def data_to_wall_ns(self, data_ns: int) -> int:
        """Wall time at which data time `data_ns` is reached."""
        if self._speed is None:
            return time.time_ns()
        return self._wall0 + int((data_ns - self._data0) / self._speed)


class FakeClock(Clock):
    """A clock a test sets by hand."""

    def __init__(self, now_ns: int = 0) -> None:
        super().__init__(ClockSpec(now_ns, now_ns, 1.0))
        self.now = now_ns

    def now_ns(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * NS)
