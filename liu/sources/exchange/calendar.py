"""The US equity market calendar of liu's local exchange: `/v2/calendar`, `/v2/clock`, and the session
minutes its simulated history follows.

By default it follows the NYSE's rules: weekends and the ten NYSE holidays closed (observed on the nearest
weekday; New Year's Day on a Saturday is not made up), Juneteenth from 2022, the special closures since
2001, and 13:00 closes on July 3, the day after Thanksgiving and Christmas Eve. A test adds its own
`holidays` and `half_days` (or turns the rules off with `rules=False`) to get exactly the days it checks.
Times are New York wall times, as Alpaca's calendar gives them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

NY = ZoneInfo("America/New_York")
NS = 1_000_000_000
MINUTE_NS = 60 * NS

# Closures outside the rules (national days of mourning, 9/11, Hurricane Sandy).
SPECIAL_CLOSURES = frozenset(
    date.fromisoformat(d)
    for d in (
        "2001-09-11",
        "2001-09-12",
        "2001-09-13",
        "2001-09-14",
        "2004-06-11",
        "2007-01-02",
        "2012-10-29",
        "2012-10-30",
        "2018-12-05",
        "2025-01-09",
    )
)


@dataclass(frozen=True, slots=True)
class Session:
    """One trading day: its New York date and its regular hours as UTC ns (`close_ns` exclusive)."""

    day: date
    open: str  # "HH:MM", New York time
    close: str
    open_ns: int
    close_ns: int

    @property
    def minutes(self) -> int:
        return (self.close_ns - self.open_ns) // MINUTE_NS

    def as_alpaca(self) -> dict:
        """The `/v2/calendar` element (alpaca-py parses `open`/`close` as "%H:%M")."""
        return {
            "date": self.day.isoformat(),
            "open": self.open,
            "close": self.close,
            "session_open": "0400",
            "session_close": "2000",
            "settlement_date": _settlement(self.day).isoformat(),
        }


class MarketCalendar:
    """Trading days and hours.

    Args:
        holidays: extra closed dates (ISO strings or dates), on top of the rules.
        half_days: dates that close early: a list (closing at `early_close`) or {date: "HH:MM"}.
        open, close, early_close: regular hours, "HH:MM" New York time.
        rules: apply the NYSE rules (weekends are always closed).
    """

    def __init__(
        self,
        holidays: Iterable[str | date] = (),
        half_days: Iterable[str | date] | Mapping[str | date, str] = (),
        open: str = "09:30",
        close: str = "16:00",
        early_close: str = "13:00",
        rules: bool = True,
    ) -> None:
        self.open = _hhmm(open, "open")
        self.close = _hhmm(close, "close")
        self.early_close = _hhmm(early_close, "early_close")
        self.rules = rules
        self.holidays = frozenset(_date(d, "holidays") for d in holidays)
        if isinstance(half_days, Mapping):
            self.half_days = {_date(d, "half_days"): _hhmm(t, "half_days") for d, t in half_days.items()}
        else:
            self.half_days = {_date(d, "half_days"): self.early_close for d in half_days}
        self._years: dict[int, tuple[frozenset[date], dict[date, str]]] = {}

    @classmethod
    def from_config(cls, config: Mapping | None) -> MarketCalendar:
        """Build from a plain dict (the server process config): the constructor's keyword arguments."""
        if not config:
            return cls()
        unknown = set(config) - {"holidays", "half_days", "open", "close", "early_close", "rules"}
        if unknown:
            raise ValueError(f"calendar: unknown keys {sorted(unknown)}")
        return cls(**config)

    def _year(self, year: int) -> tuple[frozenset[date], dict[date, str]]:
        got = self._years.get(year)
        if got is None:
            closed, early = _nyse_year(year) if self.rules else (set(), {})
            closed |= {d for d in self.holidays if d.year == year}
            early = {d: self.early_close for d in early} | {
                d: t for d, t in self.half_days.items() if d.year == year
            }
            got = self._years[year] = (frozenset(closed), early)
        return got

    def session(self, day: date) -> Session | None:
        """The session on `day` (a New York date), or None when the market is closed."""
        if day.weekday() >= 5:
            return None
        closed, early = self._year(day.year)
        if day in closed:
            return None
        close = early.get(day, self.close)
        return Session(day, self.open, close, _ns(day, self.open), _ns(day, close))

    def sessions(self, start: date, end: date) -> list[Session]:
        """Sessions from `start` to `end`, both included."""
        out = []
        d = start
        while d <= end:
            s = self.session(d)
            if s is not None:
                out.append(s)
            d += timedelta(days=1)
        return out

    def next_session(self, day: date, after: bool = False) -> Session:
        """The first session on or after `day` (strictly after when `after`)."""
        d = day + timedelta(days=1) if after else day
        for _ in range(3660):
            s = self.session(d)
            if s is not None:
                return s
            d += timedelta(days=1)
        raise ValueError(f"no trading session within ten years after {day}")

    def previous_session(self, day: date) -> Session:
        """The last session strictly before `day`."""
        d = day - timedelta(days=1)
        for _ in range(3660):
            s = self.session(d)
            if s is not None:
                return s
            d -= timedelta(days=1)
        raise ValueError(f"no trading session within ten years before {day}")

    def clock(self, now_ns: int) -> dict:
        """Alpaca's `/v2/clock` at data time `now_ns`."""
        today = ny_date(now_ns)
        s = self.session(today)
        is_open = s is not None and s.open_ns <= now_ns < s.close_ns
        if is_open:
            nxt = self.next_session(today, after=True)
            next_open, next_close = nxt.open_ns, s.close_ns
        else:
            nxt = s if s is not None and now_ns < s.open_ns else self.next_session(today, after=True)
            next_open, next_close = nxt.open_ns, nxt.close_ns
        return {
            "timestamp": iso_ny(now_ns),
            "is_open": is_open,
            "next_open": iso_ny(next_open),
            "next_close": iso_ny(next_close),
        }


def ny_date(ts_ns: int) -> date:
    return datetime.fromtimestamp(ts_ns / NS, NY).date()


def iso_ny(ts_ns: int) -> str:
    """RFC 3339 in New York time with its offset, as Alpaca's clock writes it (µs precision)."""
    sec, ns = divmod(ts_ns, NS)
    return datetime.fromtimestamp(sec, NY).replace(microsecond=ns // 1000).isoformat()


def _ns(day: date, hhmm: str) -> int:
    hh, mm = (int(x) for x in hhmm.split(":"))
    return int(datetime.combine(day, time(hh, mm), NY).timestamp()) * NS


def _settlement(day: date) -> date:
    d, n = day, 0
    while n < 1:  # T+1 business days (weekends only: good enough for a local exchange)
        d += timedelta(days=1)
        if d.weekday() < 5:
            n += 1
    return d


def _hhmm(value: str, what: str) -> str:
    try:
        hh, mm = (int(x) for x in str(value).split(":"))
        if not (0 <= hh < 24 and 0 <= mm < 60):
            raise ValueError
    except ValueError:
        raise ValueError(f"calendar {what}: {value!r} is not a time 'HH:MM'") from None
    return f"{hh:02d}:{mm:02d}"


def _date(value: str | date, what: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"calendar {what}: {value!r} is not a date 'YYYY-MM-DD'") from None


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    d = date(year, month, 1)
    d += timedelta(days=(weekday - d.weekday()) % 7)
    return d + timedelta(weeks=n - 1)


def _last_weekday(year: int, month: int, weekday: int) -> date:
    d = date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)
    return d - timedelta(days=(d.weekday() - weekday) % 7)


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    m = (32 + 2 * e + 2 * i - h - k) % 7
    n = (h + m - 7 * ((a + 11 * h + 19 * m) // 433) + 90) // 25
    p = (h + m - 7 * ((a + 11 * h + 19 * m) // 433) + 33 * n + 19) % 32
    return date(year, n, p)


def _observed(d: date) -> date:
    """Saturday holidays move to Friday, Sunday ones to Monday."""
    if d.weekday() == 5:
        return d - timedelta(days=1)
    if d.weekday() == 6:
        return d + timedelta(days=1)
    return d


def _nyse_year(year: int) -> tuple[set[date], set[date]]:
    """(closed days, 13:00 early closes) of `year` by the NYSE's rules."""
    closed = {
        _nth_weekday(year, 1, 0, 3),  # Martin Luther King Jr. Day
        _nth_weekday(year, 2, 0, 3),  # Washington's Birthday
        _easter(year) - timedelta(days=2),  # Good Friday
        _last_weekday(year, 5, 0),  # Memorial Day
        _observed(date(year, 7, 4)),
        _nth_weekday(year, 9, 0, 1),  # Labor Day
        _nth_weekday(year, 11, 3, 4),  # Thanksgiving
        _observed(date(year, 12, 25)),
    }
    new_year = date(year, 1, 1)
    if new_year.weekday() != 5:  # a Saturday New Year's Day is not made up on Friday Dec 31
        closed.add(_observed(new_year))
    if year >= 2022:
        closed.add(_observed(date(year, 6, 19)))
    closed |= {d for d in SPECIAL_CLOSURES if d.year == year}
    early = {
        _nth_weekday(year, 11, 3, 4) + timedelta(days=1),  # day after Thanksgiving
        date(year, 12, 24),
        date(year, 7, 3),
    }
    early = {d for d in early if d.weekday() < 5 and d not in closed}
    return closed, early
