"""The market's calendar as a trading session: when it opens, when it closes, and why it is closed.

`[session] duration = "market"` runs from the open (or now, when the market is open) to the close. The
truth about *now* comes from Alpaca's `/v2/clock` (is it open, the next open and close, early closes
included); `/v2/calendar` names the day: an early close, or a weekday without a session (a holiday).
Everything here is pure (no I/O), so the rules are tested on any calendar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from liu.sources.alpaca.client import MarketClock, MarketDay, market_day, ny_ns

__all__ = ["MarketSession", "market_day", "market_session", "ny", "ny_ns"]

NY = ZoneInfo("America/New_York")
NS = 1_000_000_000
REGULAR_CLOSE = time(16, 0)


def ny(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / NS, NY)


def is_early_close(day: MarketDay) -> bool:
    return ny(day.close).time() < REGULAR_CLOSE


def holidays(days: Sequence[MarketDay], first: date, last: date) -> list[date]:
    """Weekdays from `first` to `last` (inclusive) without a session, if the calendar covers them."""
    if not days:
        return []
    have = {d.date for d in days}
    lo, hi = min(have), max(have)
    out, d = [], first
    while d <= last:
        if d.weekday() < 5 and lo <= d <= hi and d not in have:
            out.append(d)
        d += timedelta(days=1)
    return out


@dataclass(frozen=True)
class MarketSession:
    """The session `trader` runs: [start, end] in ns; `open_now` when it has begun already."""

    open_now: bool
    start: int
    end: int
    now: int
    day: MarketDay | None = None
    holidays: tuple[date, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def early_close(self) -> bool:
        return self.day is not None and is_early_close(self.day)

    def describe(self) -> str:
        """One line for the terminal: open until when, or closed and when it opens."""
        close = ny(self.end)
        extra = f" (early close {close:%H:%M})" if self.early_close else ""
        if self.open_now:
            return f"market open until {close:%a %Y-%m-%d %H:%M} New York{extra}"
        why = "".join(f"; no session on {h:%a %Y-%m-%d} (market holiday)" for h in self.holidays)
        wait = _span((self.start - self.now) / NS)
        return (
            f"market closed{why}; next session opens {ny(self.start):%a %Y-%m-%d %H:%M} New York, "
            f"closes {close:%H:%M}{extra}; in {wait}"
        )


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    return f"{d}d {h}h {m:02d}m" if d else f"{h}h {m:02d}m" if h else f"{m}m {seconds % 60:02d}s"


def market_session(clock: MarketClock, days: Sequence[MarketDay]) -> MarketSession:
    """The session to run now: the current one when the market is open, else the next one."""
    now = clock.now
    if clock.is_open:
        day = next((d for d in days if d.open <= now < d.close), None)
        end = clock.next_close
        return MarketSession(True, now, end, now, day)
    start = clock.next_open
    day = next((d for d in days if d.open == start), None) or next((d for d in days if d.open >= now), None)
    if day is not None and day.open != start:  # the clock is the authority on the next open
        day = None
    end = day.close if day is not None else clock.next_close
    today = ny(now).date()
    # Weekdays from today to the next session's day without a session: holidays (today only if it is one).
    gone = holidays(days, today, ny(start).date() - timedelta(days=1))
    return MarketSession(False, start, end, now, day, tuple(gone))
