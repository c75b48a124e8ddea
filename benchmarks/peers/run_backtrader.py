"""backtrader on the benchmark bars: one Cerebro, one data feed per symbol, one shared broker.

Market orders placed in `next()` fill at the next bar's open, as in liu.
Sizing follows liu's account: a buy takes floor(available / signal close),
where `available` is cash minus what pending buys reserved. backtrader does
not reserve cash for pending orders and refuses a buy whose cost at the fill
price exceeds cash (a gap-up above the signal close), while liu fills it and
lets cash dip below zero by the gap. So the strategy keeps liu's
cash-and-reservation ledger itself (updated in liu's event order: per bar,
symbols in order, each symbol's fill before its decision), and the broker
holds an extra `BUFFER` of cash that is never traded and is subtracted from
the final value. Fills, positions and the final value are backtrader's own.
"""

from __future__ import annotations

import math
import time

import backtrader as bt
import pandas as pd
from _common import FAST, SLOW, args, emit, load, symbols

BUFFER = 10_000_000.0


class SmaCross(bt.Strategy):
    params = (("cash", 100_000.0),)

    def __init__(self):
        self.fast = [bt.indicators.SMA(d.close, period=FAST) for d in self.datas]
        self.slow = [bt.indicators.SMA(d.close, period=SLOW) for d in self.datas]
        n = len(self.datas)
        self.prev = [None] * n
        self.index = {d: i for i, d in enumerate(self.datas)}
        self.ledger_cash = self.p.cash
        self.reserved = [0.0] * n
        self.filled = [None] * n  # (cash delta) of an order executed at this bar's open, per symbol
        self.entries = [0] * n
        self.exits = [0] * n
        self.seen = 0

    def notify_order(self, order):
        if order.status == order.Completed:
            i = self.index[order.data]
            ex = order.executed
            self.filled[i] = -ex.size * ex.price  # size is signed (negative for a sell)
            if order.isbuy():
                self.entries[i] += 1
            else:
                self.exits[i] += 1
        elif order.status in (order.Margin, order.Rejected, order.Canceled):
            raise RuntimeError(f"backtrader refused an order: {order.getstatusname()}")

    def prenext(self):  # warming up (the slow SMA not defined yet): the bars still count as seen
        self.seen += len(self.datas)

    def next(self):
        self.seen += len(self.datas)
        for i, d in enumerate(self.datas):
            if self.filled[i] is not None:  # liu applies this symbol's fill just before its decision
                self.ledger_cash += self.filled[i]
                self.reserved[i] = 0.0
                self.filled[i] = None
            diff = self.fast[i][0] - self.slow[i][0]
            if diff != diff:  # NaN while warming up (backtrader calls next() from the slowest lookback)
                continue
            prev, self.prev[i] = self.prev[i], diff
            if prev is None:
                continue
            held = self.getposition(d).size
            if prev <= 0 < diff and held <= 0:
                close = d.close[0]
                qty = math.floor((self.ledger_cash - sum(self.reserved)) / close)
                if qty > 0:
                    self.reserved[i] = qty * close
                    self.buy(data=d, size=qty)
            elif prev >= 0 > diff and held > 0:
                self.sell(data=d, size=held)


def main() -> None:
    a = args(__doc__)
    bars = load(a.bars)
    n_sym, n = bars["close"].shape
    t0 = time.perf_counter()
    cerebro = bt.Cerebro(stdstats=False)
    index = pd.to_datetime(bars["ts"], unit="ns")
    for s, name in enumerate(symbols(n_sym)):
        df = pd.DataFrame({k: bars[k][s] for k in ("open", "high", "low", "close", "volume")}, index=index)
        cerebro.adddata(bt.feeds.PandasData(dataname=df, openinterest=None), name=name)
    cerebro.addstrategy(SmaCross, cash=a.cash)
    cerebro.broker.setcash(a.cash + BUFFER)
    cerebro.broker.setcommission(commission=0.0)
    t1, c1 = time.perf_counter(), time.process_time()
    (strat,) = cerebro.run(preload=True, runonce=True)
    t2, c2 = time.perf_counter(), time.process_time()
    value = cerebro.broker.getvalue() - BUFFER
    emit(
        {
            "engine": "backtrader",
            "bars": n_sym * n,
            "bars_seen": strat.seen,
            "entries": strat.entries,
            "exits": strat.exits,
            "final_equity": value,
            "ledger_gap": value
            - (strat.ledger_cash + sum(strat.getposition(d).size * d.close[0] for d in strat.datas)),
            "elapsed": t2 - t1,
            "cpu": c2 - c1,
            "prep": t1 - t0,
        }
    )


if __name__ == "__main__":
    main()
