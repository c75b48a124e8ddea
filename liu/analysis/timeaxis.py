"""A trading-time axis: calendar time with the gaps (nights, weekends, holidays, data gaps) collapsed.

On a calendar axis a nine-year minute backtest is mostly nights and weekends, and a chart of it is
a straight line; on this axis each stretch of data keeps its real spacing and each gap longer than
`min_gap` is shrunk to one bar step, and remembered so the chart can mark it.

Coordinates are seconds of trading time from the first sample (`x`). `x_of` maps any calendar time
(a fill, a round trip's exit) onto the same axis, so every chart of a report lines up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liu.analysis.metrics import ny_times

NS = 10**9
MIN_GAP_NS = 15 * 60 * NS  # a pause of at least this long (and of 2.5 bar steps) is a gap


@dataclass(frozen=True)
class Gap:
    """A collapsed stretch of calendar time: it sits at `x` on the axis."""

    x: float
    start_ns: int  # the last sample before it
    end_ns: int  # the first sample after it

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / NS


@dataclass(frozen=True)
class TradingAxis:
    """Calendar sample times (`ts`, ns, sorted) and their trading-time coordinates (`x`, seconds)."""

    ts: np.ndarray
    x: np.ndarray
    step_ns: int
    gaps: tuple[Gap, ...]

    def x_of(self, t: np.ndarray | list[int] | int) -> np.ndarray:
        """Trading-time coordinates of calendar times `t` (inside a gap: at most one step past its start)."""
        t = np.atleast_1d(np.asarray(t, dtype=np.int64))
        ts, x = self.ts, self.x
        if ts.size == 0:
            return np.zeros(t.size)
        i = np.searchsorted(ts, t, side="right") - 1
        j = np.clip(i, 0, ts.size - 1)
        room = np.append(np.diff(x), np.inf)[j]  # trading time to the next sample
        after = np.minimum((t - ts[j]) / NS, room)
        before = -np.minimum((ts[0] - t) / NS, self.step_ns / NS)
        return np.where(i >= 0, x[j] + after, x[0] + before)

    def ticks(self, n: int = 9) -> tuple[list[float], list[str]]:
        """About `n` tick positions and New York time labels: at the start of the data after gaps when
        there are gaps (dates), else evenly spread (times of day)."""
        if self.ts.size == 0:
            return [], []
        starts = [0] + [int(np.searchsorted(self.ts, g.end_ns)) for g in self.gaps]
        span_days = (int(self.ts[-1]) - int(self.ts[0])) / (86_400 * NS)
        if len(starts) >= 3:
            pick = np.unique(np.linspace(0, len(starts) - 1, min(n, len(starts))).round().astype(int))
            idx = [starts[k] for k in pick]
            fmt = "%Y-%m-%d" if span_days > 366 else "%a %d %b" if span_days > 3 else "%a %d %b %H:%M"
        else:
            idx = list(np.unique(np.linspace(0, self.ts.size - 1, min(n, self.ts.size)).round().astype(int)))
            fmt = "%Y-%m-%d %H:%M" if span_days > 1 else "%H:%M"
        labels = ny_times(self.ts[idx]).strftime(fmt)
        return [float(self.x[i]) for i in idx], list(labels)


def bar_step(ts: np.ndarray) -> int:
    """The most common spacing of the samples (their bar length); 60 s when it cannot be told."""
    steps = np.diff(np.asarray(ts, dtype=np.int64))
    steps = steps[steps > 0]
    if steps.size == 0:
        return 60 * NS
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])


def trading_axis(ts: np.ndarray, step_ns: int | None = None, min_gap_ns: int = MIN_GAP_NS) -> TradingAxis:
    """The axis of the sample times `ts` (sorted ns): pauses longer than `min_gap_ns` and 2.5 steps
    become gaps of exactly one step."""
    ts = np.asarray(ts, dtype=np.int64)
    step = int(step_ns or bar_step(ts))
    if ts.size == 0:
        return TradingAxis(ts, np.zeros(0), step, ())
    dt = np.diff(ts)
    is_gap = (dt > min_gap_ns) & (dt > 2.5 * step)
    moved = np.where(is_gap, step, dt).astype(np.float64) / NS
    x = np.concatenate([[0.0], np.cumsum(moved)])
    where = np.flatnonzero(is_gap)
    gaps = tuple(Gap(float(x[k] + step / NS / 2), int(ts[k]), int(ts[k + 1])) for k in where)
    return TradingAxis(ts, x, step, gaps)


def describe_gap(gap: Gap) -> str:
    """'Fri 16:00 → Mon 09:30 (2d 17h 30m)': what a gap marker says on hover."""
    a, b = ny_times(np.array([gap.start_ns, gap.end_ns]))
    return f"{a:%a %Y-%m-%d %H:%M} → {b:%a %Y-%m-%d %H:%M} ({duration(gap.seconds)} without data)"


def duration(seconds: float) -> str:
    """A readable length of time: 45s, 12m, 3h05m, 2d 17h 30m."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    m = int(seconds // 60)
    if m < 60:
        return f"{m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h {m:02d}m"
