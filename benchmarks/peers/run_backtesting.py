"""backtesting.py on the benchmark bars: one `Backtest` per symbol (it trades one asset per run).

Orders placed in `next()` fill at the next bar's open, as in liu. `margin=0.5`
only relaxes backtesting.py's pre-trade check: an all-in order sized on the
signal close would otherwise be cancelled when the next open gaps up, while
liu (and the reference) fill it and let cash dip below zero by the gap.
Equity and P&L are unchanged by it (no position is ever leveraged beyond that gap).
"""

from __future__ import annotations

import math
import time
import warnings

import pandas as pd
from _common import FAST, SLOW, args, emit, load, symbols
from backtesting import Backtest, Strategy


def sma(x, n):
    return pd.Series(x).rolling(n).mean().to_numpy()


class SmaCross(Strategy):
    def init(self):
        self.fast = self.I(sma, self.data.Close, FAST)
        self.slow = self.I(sma, self.data.Close, SLOW)
        self.prev = None
        self.held = 0
        self.entries = self.exits = self.seen = 0

    def next(self):
        self.seen = len(self.data)
        size = self.position.size
        if size != self.held:  # an order filled at this bar's open
            if size > self.held:
                self.entries += 1
            else:
                self.exits += 1
            self.held = size
        diff = self.fast[-1] - self.slow[-1]
        prev, self.prev = self.prev, diff
        if prev is None:
            return
        close = self.data.Close[-1]
        if prev <= 0 < diff and size <= 0:
            qty = math.floor(self.equity / close)  # flat: equity is all cash
            if qty > 0:
                self.buy(size=qty)
        elif prev >= 0 > diff and size > 0:
            self.position.close()


def main() -> None:
    a = args(__doc__)
    bars = load(a.bars)
    n_sym, n = bars["close"].shape
    index = pd.to_datetime(bars["ts"], unit="ns")
    entries, exits, seen, equity = [], [], 0, 0.0
    elapsed = prep = cpu = 0.0
    for s in range(n_sym):
        t0 = time.perf_counter()
        df = pd.DataFrame(
            {k.capitalize(): bars[k][s] for k in ("open", "high", "low", "close", "volume")}, index=index
        )
        bt = Backtest(df, SmaCross, cash=a.cash, commission=0.0, margin=0.5, finalize_trades=False)
        t1, c1 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stats = bt.run()
        t2, c2 = time.perf_counter(), time.process_time()
        cpu += c2 - c1
        prep += t1 - t0
        elapsed += t2 - t1
        st = stats["_strategy"]
        entries.append(st.entries)
        exits.append(st.exits)
        seen += st.seen
        equity += float(stats["Equity Final [$]"])
    emit(
        {
            "engine": "backtesting",
            "bars": n_sym * n,
            "bars_seen": seen,
            "entries": entries,
            "exits": exits,
            "final_equity": equity,
            "elapsed": elapsed,
            "cpu": cpu,
            "prep": prep,
            "runs": n_sym,
            "symbols": symbols(n_sym),
        }
    )


if __name__ == "__main__":
    main()
