"""Minute bars built from trade prints, one open bar per symbol.

The runner folds each trade into its symbol's open bar and gets the bar back
when a print of a later minute closes it. Live, quiet symbols still need their
bars: `flush` closes bars whose minute ended a grace period ago, and a late
print for a minute already closed that way must not reopen it.
"""

from __future__ import annotations

from liu.events import Bar

MINUTE = 60_000_000_000


def bar_of(sym: str, bar: list) -> Bar:
    """The Bar of an open-bar list [minute, open, high, low, close, volume]."""
    return Bar(sym, bar[0] * MINUTE, bar[1], bar[2], bar[3], bar[4], bar[5])


class BarBuilder:
    """Open minute bars per symbol, as lists [minute, open, high, low, close, volume]."""

    def __init__(self) -> None:
        self._bar: dict[str, list] = {}
        self._closed: dict[str, int] = {}  # per symbol, the minute `flush` last closed

    def update(self, sym: str, ts: int, price: float, size: float) -> Bar | None:
        """Fold a trade into the symbol's minute bar; return the bar it closed, if any."""
        minute = ts // MINUTE
        bar = self._bar.get(sym)
        if bar is None:
            if minute <= self._closed.get(sym, -1):  # late print for a bar already closed by flush
                return None
            self._bar[sym] = [minute, price, price, price, price, size]
            return None
        if minute == bar[0]:
            if price > bar[2]:
                bar[2] = price
            elif price < bar[3]:
                bar[3] = price
            bar[4] = price
            bar[5] += size
            return None
        if minute < bar[0]:  # late print for a closed minute: counts for the price, not the bar
            return None
        self._bar[sym] = [minute, price, price, price, price, size]
        return bar_of(sym, bar)

    def seal(self, sym: str, minute: int) -> None:
        """Bars up to `minute` came from history (warm-up, gap back-fill): drop an open bar at or before
        it, and let no later print reopen one of those minutes."""
        bar = self._bar.get(sym)
        if bar is not None and bar[0] <= minute:
            del self._bar[sym]
        if minute > self._closed.get(sym, -1):
            self._closed[sym] = minute

    def adjust(self, sym: str, price: float, volume: float) -> None:
        """A split replayed raw: the open bar moves to the new basis like the stored history."""
        bar = self._bar.get(sym)
        if bar is not None:
            bar[1:5] = [x * price for x in bar[1:5]]
            bar[5] *= volume

    def flush(self, now_ns: int, grace_ns: int) -> list[Bar]:
        """Close the bars whose minute ended before `now_ns - grace_ns`."""
        cutoff = (now_ns - grace_ns) // MINUTE
        closed = []
        for sym, bar in list(self._bar.items()):
            if bar[0] < cutoff:
                del self._bar[sym]
                self._closed[sym] = bar[0]  # a print for this minute arriving later must not reopen it
                closed.append(bar_of(sym, bar))
        return closed
