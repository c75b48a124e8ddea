"""The bad-tick filter: prints that must not move prices, bars, fills or strategies.

Trade prints are dropped for two reasons, each counted per symbol:

* **conditions**: the print's sale conditions say it does not update the last price (the SIPs'
  rules, which Alpaca follows for its own bars): average-price, cash, next-day, seller, odd-lot,
  price-variation, prior-reference-price, out-of-sequence, derivatively priced, contingent,
  official open/close and corrected-close reports. These are real trades, but at prices agreed
  elsewhere or earlier: average-price prints in the recorded SPY and BAC ticks sit up to 2 % from
  the market. The decoder marks them (`TRADE_NO_LAST` instead of `TRADE`, see `no_last`), so the
  wire carries nothing more. Form T (extended hours) prints are kept: before the open and after the
  close they are the only prints there are.
* **band**: the print is further than the band from the symbol's reference price, the median of
  its last complete block of `window` accepted prints. The band follows the exchanges'
  clearly-erroneous guidelines unless set: 10 % up to $25, 5 % up to $50, 3 % above. `confirm`
  consecutive prints outside the band that agree with each other mean the price really moved (a
  gap, a halt reopening): the last of them is kept and becomes the new reference, the earlier ones
  stay dropped.

Bars are repaired, not dropped: an open, high or low outside the band around the range from the
previous bar's close to this bar's close is a bad print inside the bar (the recorded AAPL minute
bars open the split day at the pre-split 645.57 beside a 92.42 close); it is cut back to the
bar's own open and close, as if that print had been filtered. Closes and quotes are left alone.

The runner calls `check` for every trade print and `check_bar` for every bar, after the stale
check and before anything else sees them, in the consumer and in the backtester alike, so both
drop the same prints. The common case (a print inside the band) is one dict lookup, two
comparisons and an append: about 0.25 µs.
"""

from __future__ import annotations

from collections.abc import Iterable

from liu.events import TRADE, TRADE_NO_LAST

# Sale conditions that do not update the consolidated last price (CTS and UTP specifications; Alpaca's
# trade "c" list carries them as one-character codes). "B" means average price on tapes A and B but
# bunched trade (a regular print) on tape C, so it is checked with the tape.
NO_LAST = frozenset("CGHIMNPQRUVWZ479")
NO_LAST_CTS_ONLY = "B"


def no_last(conditions: Iterable[str] | None, tape: str | None = None) -> bool:
    """True when a trade with these sale conditions (on this tape) does not update the last price."""
    if not conditions:
        return False
    if not NO_LAST.isdisjoint(conditions):
        return True
    return tape != "C" and NO_LAST_CTS_ONLY in conditions


def erroneous_band(price: float) -> float:
    """The clearly-erroneous threshold (a fraction) for a reference `price`: 10 % / 5 % / 3 %."""
    return 0.10 if price <= 25.0 else (0.05 if price <= 50.0 else 0.03)


# Per-symbol state of trade prints, a list for speed (`check` spells the first four as literals on its fast
# path): [band low, band high, block of accepted prints, streak outside, candidate level,
#  prints dropped outside the band, prints dropped by conditions, bars repaired, reference moves].
# The last bar close per symbol, all that bars need on their common path, is a dict of its own.
_LO, _HI, _BLOCK, _STREAK, _CAND, _N_BAND, _N_COND, _N_BARS, _N_MOVED = range(9)


class TickFilter:
    """Drops bad trade prints and repairs bad bars, per symbol; see the module docstring."""

    __slots__ = ("band_pct", "window", "confirm", "conditions", "_band", "_inner", "_state", "_closes")

    def __init__(
        self, band_pct: float | None = None, window: int = 20, confirm: int = 3, conditions: bool = True
    ) -> None:
        """`band_pct`: the band in percent of the reference (None = the clearly-erroneous tiers);
        `window`: accepted prints per reference block; `confirm`: agreeing prints outside the band that
        move the reference; `conditions`: drop prints whose conditions do not update the last price."""
        if band_pct is not None and not band_pct > 0:
            raise ValueError(f"band_pct={band_pct} must be > 0")
        if window < 1 or confirm < 1:
            raise ValueError(f"window={window} and confirm={confirm} must be >= 1")
        self.band_pct, self.window, self.confirm, self.conditions = band_pct, window, confirm, conditions
        self._band = None if band_pct is None else band_pct / 100.0
        narrowest = self._band if self._band is not None else erroneous_band(float("inf"))
        self._inner = (1.0 - narrowest, 1.0 + narrowest)
        self._state: dict[str, list] = {}
        self._closes: dict[str, float] = {}  # the last bar close per symbol

    def check(self, symbol: str, price: float, kind: int = TRADE) -> bool:
        """True to keep the trade print; False drops it (and counts it)."""
        s = self._state.get(symbol)
        # The common case: a TRADE in the band (or a TRADE_NO_LAST with `conditions` off, like any print).
        if s is not None and (kind == 0 or not self.conditions) and s[0] <= price <= s[1]:
            block = s[2]
            block.append(price)
            if len(block) >= self.window:
                self._rebase(s, block)
            if s[3]:
                s[3] = 0
            return True
        if s is None:
            s = self._state[symbol] = self._new()
        if kind != TRADE and self.conditions:
            s[_N_COND] += 1
            return False
        return self._outside(s, price)

    def check_bar(self, ev: tuple) -> tuple:
        """A BAR wire tuple as it should be used: itself, or with a bad open/high/low cut back."""
        closes, symbol, c = self._closes, ev[1], ev[6]
        prev = closes.get(symbol, 0.0)
        closes[symbol] = c
        if not (prev > 0.0 and c > 0.0):
            return ev
        # The common case without computing the band: inside the narrowest band the price tiers allow
        # (3 %, or the fixed band), so inside the price's own band too.
        down, up = self._inner
        floor, ceiling = (prev * down, c * up) if prev <= c else (c * down, prev * up)
        o, h, lo = ev[3], ev[4], ev[5]
        if floor <= lo and h <= ceiling and floor <= o <= ceiling:
            return ev
        return self._repair_bar(ev, prev)

    def _repair_bar(self, ev: tuple, prev: float) -> tuple:
        symbol, o, h, lo, c = ev[1], ev[3], ev[4], ev[5], ev[6]
        a, b = (prev, c) if prev <= c else (c, prev)
        floor, ceiling = a - self._width(a), b + self._width(b)
        if floor <= lo and h <= ceiling and floor <= o <= ceiling:
            return ev
        s = self._state.get(symbol)
        if s is None:
            s = self._state[symbol] = self._new()
        s[_N_BARS] += 1
        o = o if floor <= o <= ceiling else c
        h = h if h <= ceiling else max(o, c)
        lo = lo if lo >= floor else min(o, c)
        return (ev[0], symbol, ev[2], o, max(h, o, c), min(lo, o, c), c, *ev[7:])

    @staticmethod
    def _new() -> list:
        return [0.0, -1.0, [], 0, 0.0, 0, 0, 0, 0]  # no reference yet: low > high

    def _outside(self, s: list, price: float) -> bool:
        if not price > 0.0:  # zero, negative or NaN: never a price
            s[_N_BAND] += 1
            return False
        if s[_HI] < 0.0:  # the symbol's first print sets the reference
            self._anchor(s, price)
            return True
        cand = s[_CAND]
        if s[_STREAK] and abs(price - cand) <= self._width(cand):
            s[_STREAK] += 1
        else:
            s[_STREAK] = 1
        s[_CAND] = price
        if s[_STREAK] >= self.confirm:
            s[_N_MOVED] += 1
            self._anchor(s, price)
            return True
        s[_N_BAND] += 1
        return False

    def _width(self, ref: float) -> float:
        return ref * (self._band if self._band is not None else erroneous_band(ref))

    def _anchor(self, s: list, ref: float) -> None:
        s[_BLOCK] = [ref]
        s[_STREAK] = 0
        self._rebase(s, s[_BLOCK])

    def _rebase(self, s: list, block: list) -> None:
        block.sort()
        n = len(block)
        ref = block[n // 2] if n % 2 else (block[n // 2 - 1] + block[n // 2]) / 2.0
        width = self._width(ref)
        s[_LO], s[_HI] = ref - width, ref + width
        block.clear()

    def adjust(self, symbol: str, factor: float) -> None:
        """Prices of `symbol` change basis (a split replayed raw): its references move with them."""
        if symbol in self._closes:
            self._closes[symbol] *= factor
        s = self._state.get(symbol)
        if s is None:
            return
        if s[_HI] >= 0.0:
            s[_LO] *= factor
            s[_HI] *= factor
        s[_CAND] *= factor
        s[_BLOCK] = [p * factor for p in s[_BLOCK]]

    def report(self) -> dict[str, dict[str, int]]:
        """symbol → {"band": prints dropped outside the band, "conditions": prints dropped by their
        conditions, "bars": bars repaired, "moved": times the reference moved to a new level}, for the
        symbols with any of them."""
        return {
            sym: {"band": s[_N_BAND], "conditions": s[_N_COND], "bars": s[_N_BARS], "moved": s[_N_MOVED]}
            for sym, s in sorted(self._state.items())
            if s[_N_BAND] or s[_N_COND] or s[_N_BARS] or s[_N_MOVED]
        }


def merge_reports(reports: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Per-symbol counts of several filters (one per consumer) added up."""
    out: dict[str, dict[str, int]] = {}
    for rep in reports:
        for sym, counts in rep.items():
            row = out.setdefault(sym, {"band": 0, "conditions": 0, "bars": 0, "moved": 0})
            for k, v in counts.items():
                row[k] = row.get(k, 0) + v
    return dict(sorted(out.items()))


__all__ = ["NO_LAST", "TRADE_NO_LAST", "TickFilter", "erroneous_band", "merge_reports", "no_last"]
