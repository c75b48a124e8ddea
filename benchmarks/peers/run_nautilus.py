"""nautilus_trader on the benchmark bars: one BacktestEngine, one Equity instrument per symbol, one cash account.

nautilus fills a market order submitted from `on_bar` at that bar's close
(its matching engine has already walked the bar's open, high, low and close),
not at the next bar's open. The benchmark therefore checks nautilus against
the reference's `fill="close"` variant of the same rules, and reports how it
differs from liu (`fill="next_open"`). Instruments and the account use a
currency with 8 decimals, like the bars' prices, so that whole-cent cash
rounding does not move the final equity; volumes are large so that no order
fills in pieces.
"""

from __future__ import annotations

import math
import time
from decimal import Decimal

import pandas as pd
from _common import FAST, SLOW, args, emit, load, symbols
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig
from nautilus_trader.indicators import SimpleMovingAverage
from nautilus_trader.model.data import BarType
from nautilus_trader.model.enums import AccountType, CurrencyType, OmsType, OrderSide
from nautilus_trader.model.identifiers import InstrumentId, Symbol, TraderId, Venue
from nautilus_trader.model.instruments import Equity
from nautilus_trader.model.objects import Currency, Money, Price, Quantity
from nautilus_trader.persistence.wranglers import BarDataWrangler
from nautilus_trader.trading.strategy import Strategy

VENUE = Venue("SIM")
DECIMALS = 8


class SmaCrossConfig(StrategyConfig, frozen=True):
    bar_types: list[str]
    currency: str


class SmaCross(Strategy):
    def __init__(self, config: SmaCrossConfig) -> None:
        super().__init__(config)
        self.bar_types = [BarType.from_str(b) for b in config.bar_types]
        n = len(self.bar_types)
        self.index = {bt.instrument_id: i for i, bt in enumerate(self.bar_types)}
        self.fast = [SimpleMovingAverage(FAST) for _ in range(n)]
        self.slow = [SimpleMovingAverage(SLOW) for _ in range(n)]
        self.prev = [None] * n
        self.entries = [0] * n
        self.exits = [0] * n
        self.fills = 0
        self.seen = 0
        self.last = [0.0] * n
        self.cur = None

    def on_start(self) -> None:
        self.cur = Currency.from_str(self.config.currency)
        for i, bt in enumerate(self.bar_types):
            self.register_indicator_for_bars(bt, self.fast[i])
            self.register_indicator_for_bars(bt, self.slow[i])
            self.subscribe_bars(bt)

    def on_bar(self, bar) -> None:
        self.seen += 1
        iid = bar.bar_type.instrument_id
        i = self.index[iid]
        close = bar.close.as_double()
        self.last[i] = close
        if not self.slow[i].initialized:
            return
        diff = self.fast[i].value - self.slow[i].value
        prev, self.prev[i] = self.prev[i], diff
        if prev is None:
            return
        held = float(self.portfolio.net_position(iid))
        if prev <= 0 < diff and held <= 0:
            free = self.portfolio.account(VENUE).balance_free(self.cur).as_double()
            qty = math.floor(free / close)
            if qty > 0:
                self.submit_order(self.order_factory.market(iid, OrderSide.BUY, Quantity.from_int(qty)))
                self.entries[i] += 1
        elif prev >= 0 > diff and held > 0:
            self.submit_order(self.order_factory.market(iid, OrderSide.SELL, Quantity.from_int(int(held))))
            self.exits[i] += 1

    def on_order_filled(self, event) -> None:
        self.fills += 1


def main() -> None:
    a = args(__doc__)
    bars = load(a.bars)
    n_sym, n = bars["close"].shape
    t0 = time.perf_counter()
    cur = Currency("USDX", DECIMALS, 0, "US dollar, 8 decimals", CurrencyType.FIAT)
    Currency.register(cur)
    engine = BacktestEngine(
        BacktestEngineConfig(trader_id=TraderId("BENCH-001"), logging=LoggingConfig(log_level="ERROR"))
    )
    engine.add_venue(
        venue=VENUE,
        oms_type=OmsType.NETTING,
        account_type=AccountType.CASH,
        base_currency=cur,
        starting_balances=[Money(a.cash, cur)],
        bar_execution=True,
    )
    index = pd.to_datetime(bars["ts"], unit="ns", utc=True)
    bar_types, per_symbol = [], []
    for s, name in enumerate(symbols(n_sym)):
        inst = Equity(
            instrument_id=InstrumentId(Symbol(name), VENUE),
            raw_symbol=Symbol(name),
            currency=cur,
            price_precision=DECIMALS,
            price_increment=Price(10**-DECIMALS, DECIMALS),
            lot_size=Quantity.from_int(1),
            ts_event=0,
            ts_init=0,
            maker_fee=Decimal(0),
            taker_fee=Decimal(0),
        )
        engine.add_instrument(inst)
        bar_type = BarType.from_str(f"{name}.SIM-1-MINUTE-LAST-EXTERNAL")
        bar_types.append(str(bar_type))
        df = pd.DataFrame({k: bars[k][s] for k in ("open", "high", "low", "close", "volume")}, index=index)
        per_symbol.append(BarDataWrangler(bar_type, inst).process(df))
    # Time-major, symbols in order within a minute (the order liu and the reference use).
    engine.add_data([b for minute in zip(*per_symbol, strict=True) for b in minute], sort=False)
    strategy = SmaCross(SmaCrossConfig(bar_types=bar_types, currency="USDX"))
    engine.add_strategy(strategy)
    t1, c1 = time.perf_counter(), time.process_time()
    engine.run()
    t2, c2 = time.perf_counter(), time.process_time()
    account = engine.trader.generate_account_report(VENUE)
    balance = engine.portfolio.account(VENUE).balance_total(cur).as_double()
    equity = balance + sum(
        float(engine.portfolio.net_position(InstrumentId(Symbol(name), VENUE))) * strategy.last[i]
        for i, name in enumerate(symbols(n_sym))
    )
    emit(
        {
            "engine": "nautilus",
            "bars": n_sym * n,
            "bars_seen": strategy.seen,
            "entries": strategy.entries,
            "exits": strategy.exits,
            "fill_events": strategy.fills,
            "orders": sum(strategy.entries) + sum(strategy.exits),
            "final_equity": equity,
            "elapsed": t2 - t1,
            "cpu": c2 - c1,
            "prep": t1 - t0,
            "account_rows": len(account),
        }
    )
    engine.dispose()


if __name__ == "__main__":
    main()
