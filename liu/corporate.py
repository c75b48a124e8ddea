"""Corporate actions (splits and cash dividends) on data replayed raw.

By default a replay and a backtest run on adjusted prices (`[source] adjustment = "all"`: the data
file's factors, normalised so that each symbol's last price is as traded, the way Alpaca's
`adjustment=all` bars look on the day they are fetched); the price series is continuous across a
split or a dividend and nothing here is needed. Where raw prices are replayed on purpose
(`adjustment = "raw"`, or "split" / "dividend" for the part left raw) the market jumps at the
ex-date, and the runner does what a broker does, before the symbol's first event on the ex-date:

* a split (`split` new shares per old one): every position holds `split` times the shares at
  1/`split` of the price, open orders are resized and repriced the same way (FINRA Rule 5330), and
  the bar history, the bar being built and the indicators move to the new basis (prices / split,
  volumes x split), so neither the P&L nor an indicator jumps;
* a cash dividend (`dividend` per share): longs are paid it, shorts pay it.

Actions travel as a schedule known in advance (a replay file's factor changes, or a broker's
corporate-action announcements), not as stream messages: a broker applies them at the start of the
ex-date whatever the feed sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_FAR = 1 << 62


@dataclass(frozen=True)
class CorporateAction:
    """A split and/or cash dividend of `symbol`, effective from data time `ts` (ns, the ex-date)."""

    symbol: str
    ts: int
    split: float = 1.0
    """New shares per old share: 7.0 for a 7-for-1 split, 0.1 for a 1-for-10 reverse split."""
    dividend: float = 0.0
    """Cash per share (on the post-split basis) paid to holders, charged to shorts."""

    def describe(self) -> str:
        parts = []
        if self.split != 1.0:
            parts.append(f"split {self.split:g}-for-1")
        if self.dividend:
            parts.append(f"dividend {self.dividend:.4f}/share")
        return f"{self.symbol}: {' and '.join(parts) or 'no change'}"


class ActionSchedule:
    """Corporate actions in time order; `due(now)` hands out those whose time has come, once each."""

    __slots__ = ("_actions", "_i", "next_ts")

    def __init__(self, actions: Iterable[CorporateAction] = ()) -> None:
        self._actions = sorted(actions, key=lambda a: (a.ts, a.symbol))
        self._i = 0
        self.next_ts = self._actions[0].ts if self._actions else _FAR

    def __len__(self) -> int:
        return len(self._actions)

    def due(self, now: int) -> list[CorporateAction]:
        """The actions with `ts <= now` not handed out yet."""
        if now < self.next_ts:
            return []
        actions, i = self._actions, self._i
        j = i
        while j < len(actions) and actions[j].ts <= now:
            j += 1
        self._i = j
        self.next_ts = actions[j].ts if j < len(actions) else _FAR
        return actions[i:j]
