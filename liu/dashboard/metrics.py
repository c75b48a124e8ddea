"""`/metrics` for Prometheus: the session's live counters, read at scrape time from where the terminal reads.

No counter is kept twice: every figure comes from `SharedStats` (the shared array the consumers and the
producer write, and `liu.progress` draws) and the shared `Account`, when Prometheus asks. The registry
is the dashboard's own (`CollectorRegistry`), not prometheus_client's global one.

| metric | type | labels | from |
|---|---|---|---|
| liu_events_received_total / _processed_total | counter | consumer | runner counters |
| liu_events_sent_total | counter | consumer | what the producer sent each consumer |
| liu_events_dropped_total | counter | consumer, reason (stale, malformed, lost; unroutable: consumer="") | runner, producer |
| liu_strategy_errors_total, liu_fills_total | counter | consumer | runner counters |
| liu_orders_total | counter | consumer, status (placed, rejected, cancelled, expired) | runner counters |
| liu_consumer_lag_seconds, liu_consumer_queue_events, liu_consumer_backlog_bytes | gauge | consumer | consumer, producer |
| liu_producer_events_total, _frames_total, _reconnects_total | counter | | producer |
| liu_producer_connected, liu_producer_last_gap_seconds | gauge | | producer |
| liu_equity, liu_cash, liu_buying_power, liu_gross_exposure, liu_day_pnl, liu_open_orders | gauge | | account |
| liu_halted | gauge | reason | account (1 while halted) |
| liu_flattens_total | counter | | account |
| liu_session_ended | gauge | | 1 once the session is over |
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from liu.brokers.account import Account
from liu.stats import SharedStats

# liu_orders_total's status label → the runner counter it reads.
ORDER_STATUSES = {"placed": "orders", "rejected": "rejected", "cancelled": "cancelled", "expired": "expired"}
DROP_REASONS = ("stale", "malformed", "lost")


class SessionCollector:
    """A prometheus_client collector over one session's `SharedStats` and `Account`."""

    def __init__(
        self, stats: SharedStats, account: Account | None, ended: Callable[[], bool] = lambda: False
    ) -> None:
        self.stats = stats
        self.account = account
        self.ended = ended

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        rows = [stats.consumer(i) for i in range(stats.consumers)]
        prod = stats.producer()

        def per_consumer(kind: type, name: str, doc: str, value: Callable[[dict], float]) -> Metric:
            m = kind(name, doc, labels=["consumer"])
            for i, c in enumerate(rows):
                m.add_metric([str(i)], value(c))
            return m

        yield per_consumer(
            CounterMetricFamily,
            "liu_events_received",
            "Events a consumer took off its queue",
            lambda c: c["received"],
        )
        yield per_consumer(
            CounterMetricFamily,
            "liu_events_processed",
            "Events handed to the strategies (received = processed + stale + malformed)",
            lambda c: c["processed"],
        )
        yield per_consumer(
            CounterMetricFamily,
            "liu_events_sent",
            "Events the producer sent to a consumer",
            lambda c: c["sent"],
        )
        dropped = CounterMetricFamily(
            "liu_events_dropped", "Events dropped, by reason", labels=["consumer", "reason"]
        )
        for i, c in enumerate(rows):
            for reason in DROP_REASONS:
                dropped.add_metric([str(i), reason], c[reason])
        dropped.add_metric(["", "unroutable"], prod["unroutable"])
        yield dropped
        yield per_consumer(
            CounterMetricFamily,
            "liu_strategy_errors",
            "Strategy hooks that raised",
            lambda c: c["strategy_errors"],
        )
        orders = CounterMetricFamily(
            "liu_orders", "Orders by what became of them", labels=["consumer", "status"]
        )
        for i, c in enumerate(rows):
            for status, counter in ORDER_STATUSES.items():
                orders.add_metric([str(i), status], c[counter])
        yield orders
        yield per_consumer(CounterMetricFamily, "liu_fills", "Executions", lambda c: c["fills"])
        yield per_consumer(
            GaugeMetricFamily,
            "liu_consumer_lag_seconds",
            "Receive-to-handling delay of a consumer's last batch",
            lambda c: c["lag_us"] / 1e6,
        )
        yield per_consumer(
            GaugeMetricFamily,
            "liu_consumer_queue_events",
            "Events sent to a consumer and not yet taken off its queue",
            lambda c: c["sent"] - c["received"] - c["lost"],
        )
        yield per_consumer(
            GaugeMetricFamily,
            "liu_consumer_backlog_bytes",
            "Bytes the producer holds for a consumer that reads too slowly",
            lambda c: c["backlog_bytes"],
        )
        for field, doc in (
            ("events", "Market events the producer decoded"),
            ("frames", "Websocket frames the producer received"),
            ("reconnects", "Reconnections to the market-data source"),
        ):
            yield CounterMetricFamily(f"liu_producer_{field}", doc, value=prod[field])
        yield GaugeMetricFamily(
            "liu_producer_connected",
            "1 while the producer is connected to the source",
            value=prod["connected"],
        )
        yield GaugeMetricFamily(
            "liu_producer_last_gap_seconds", "Length of the last connection gap", value=prod["gap_ms"] / 1000
        )
        yield from self._account()
        yield GaugeMetricFamily("liu_session_ended", "1 once the session is over", value=int(self.ended()))

    def _account(self) -> Iterator[Metric]:
        if self.account is None:
            return
        v = self.account.view()
        for name, value, doc in (
            ("liu_equity", v.equity, "Cash plus the market value of every position"),
            ("liu_cash", v.cash, "Cash"),
            ("liu_buying_power", v.buying_power, "Cash not reserved by open orders"),
            ("liu_gross_exposure", v.gross_exposure, "Sum of |position| at market"),
            ("liu_day_pnl", v.day_pnl, "Equity change since the New York day began"),
            ("liu_open_orders", self.account.open_orders(), "Open orders, whole account"),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        halted = GaugeMetricFamily("liu_halted", "1 while trading is halted", labels=["reason"])
        halted.add_metric([v.halt_reason or "none"], int(v.halted))
        yield halted
        yield CounterMetricFamily(
            "liu_flattens",
            "Flatten requests (control channel or risk)",
            value=self.account.flatten_generation,
        )


def session_registry(collector: SessionCollector) -> CollectorRegistry:
    """A registry of its own holding `collector` (nothing global)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
