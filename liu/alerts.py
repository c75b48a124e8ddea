"""Alerts: what happens in a session, sent where the user wants it (apprise URLs), grouped, never a flood.

Configured by the tradeplan's `[alerts]` table (`liu.plan.AlertsPlan`): `urls` in apprise's form
(`mailto://…`, `slack://…`, `tgram://…`, `discord://…`, `json://host:port/path`, …), a level per
kind of event (`[alerts.levels]`) and a `min_level` below which nothing is sent.

Kinds and where the main process learns of them (it sees every process's log records through the
logging queue of `liu.logs`, so most kinds come from there; the rest it reads itself):

| kind       | what                                      | source                                              |
|------------|-------------------------------------------|-----------------------------------------------------|
| fill       | an order filled                           | new `trades` rows of the batch, read when the shared fill counters move (`SessionWatch`) |
| rejection  | an order rejected (broker or risk rule)   | the consumers' "order … rejected: …" warning        |
| risk       | a risk breach, a halt, a resume, a flatten| liu.risk/flatten warnings; the account's halt flag (`SessionWatch`) |
| connection | market data lost / reconnected            | the producer's connection warnings                  |
| consumer   | a consumer or the producer died or was restarted, the gateway died | the daemon's supervision lines ("consumer N died", "producer restarted", …) |
| database   | writes failing, and working again         | warnings and errors of liu.store (the writers)      |
| strategy   | a strategy or scanner raised              | the runner's and scanner's error lines              |
| error      | any other error the session logs          | every other ERROR record                            |

Mapping known log lines, rather than adding an alert call next to each of them, keeps one source
of truth: what an alert says is what the log says, and a new process or module needs nothing
extra. `RULES` is the mapping; a line that changes its wording falls back to `error` (for errors)
and the tests of this module say so.

Grouping (`Grouper`): alerts of the same kind whose text is the same once numbers are masked
(`liu.logs.mask_numbers`: order ids and quantities vary, symbols and reasons do not) form a group
for `window` seconds. The first of a group is sent at once, unless its kind already sent `burst`
alerts in the last window; the rest are counted, and when the window closes one message says
"40× order rejected: SIM029 is not shortable". All summaries due together go out as one message,
at most one such message per window. So a storm sends at most `burst` messages per kind, plus one
summary, per window.

Sending (`Sender`) happens on its own thread with a bounded queue: the event loop never waits for
a mail server. A message that cannot be queued (the queue is full) or sent (refused, timed out) is
counted and logged on `liu.alerts` (without the URL's secrets: only its scheme and host), and
trading goes on. At the end of the session what is queued gets a few seconds to go out.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from liu.errors import ConfigError
from liu.logs import mask_numbers
from liu.plan import AlertsPlan

log = logging.getLogger("liu.alerts")

LEVELS = {"info": 20, "warning": 30, "error": 40}
KINDS = ("fill", "rejection", "risk", "connection", "consumer", "database", "strategy", "error")
QUEUE = 100  # messages waiting for one URL's sender thread; more are dropped and counted
SUMMARY_LINES = 20  # groups listed in one summary message
_IGNORED = ("liu.alerts", "apprise", "urllib3", "requests")  # the alert path itself: never an alert


@dataclass(frozen=True)
class Notice:
    """One message to send."""

    title: str
    body: str
    level: str  # info | warning | error


# ---------------------------------------------------------------- from log records to alerts


@dataclass(frozen=True)
class Rule:
    """Records of loggers under `logger` (a prefix), at `level` or above, matching `pattern` → `kind`."""

    kind: str
    logger: str
    pattern: str = ""
    level: int = logging.WARNING
    text: Callable[[re.Match], str] | None = None  # a shorter text from the match; default: the message


def _rejection(m: re.Match) -> str:
    return f"order rejected: {m['reason']} ({m['strategy']}: {m['side']} {m['symbol']})"


RULES: tuple[Rule, ...] = (
    Rule(
        "rejection",
        "liu.orders",
        r"^order \S+ (?P<side>\w+) (?P<symbol>\S+) x\S+ by (?P<strategy>\S+) rejected: (?P<reason>.*)$",
        text=_rejection,
    ),
    Rule("rejection", "liu", r" rejected: "),
    Rule("risk", "liu.risk"),
    Rule("risk", "liu.orders", r"^flatten"),
    Rule("connection", "liu.producer", r"connect"),
    Rule("connection", "liu.sources", r"connect"),
    Rule(
        "consumer",
        "liu",
        r"\b(consumer \d+|producer|gateway)\b.*\b(died|restart\w*|respawn\w*|did not finish)",
    ),
    Rule("database", "liu.store"),
    Rule("strategy", "liu.runner", r"^strategy .* raised", logging.ERROR),
    Rule("strategy", "liu.scanner", r"raised"),
    Rule("error", "", "", logging.ERROR),
)


def classify(record: logging.LogRecord, rules: Iterable[Rule] = RULES) -> tuple[str, str] | None:
    """(kind, text) for a record that is an alert, else None."""
    name = record.name
    if name.startswith(_IGNORED):
        return None
    message = record.getMessage()
    for rule in rules:
        if record.levelno < rule.level:
            continue
        if rule.logger and not (name == rule.logger or name.startswith(rule.logger + ".")):
            continue
        m = re.search(rule.pattern, message, re.S) if rule.pattern else None
        if rule.pattern and m is None:
            continue
        text = rule.text(m) if rule.text is not None and m is not None else message
        return rule.kind, _short(text)
    return None


def _short(text: str, limit: int = 2000) -> str:
    """A traceback keeps its first line and its last lines (the exception); long texts are cut."""
    lines = text.splitlines()
    if len(lines) > 8 and any(line.startswith("Traceback") for line in lines):
        text = "\n".join([lines[0], "…", *lines[-3:]])
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AlertHandler(logging.Handler):
    """A logging handler (main process, root logger) that turns known records into alerts."""

    def __init__(self, alerts: Alerts, rules: Iterable[Rule] = RULES) -> None:
        super().__init__(logging.INFO)
        self.alerts = alerts
        self.rules = tuple(rules)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            found = classify(record, self.rules)
            if found is not None:
                self.alerts.notify(*found)
        except Exception:  # noqa: BLE001 - an alert must never break logging
            self.handleError(record)


# ---------------------------------------------------------------- grouping


@dataclass
class _Group:
    kind: str
    level: str
    first: float
    count: int
    sent_first: bool
    last: str


class Grouper:
    """Decides what is sent now and what is summarised later (see the module docstring). Not thread-safe:
    `Alerts` calls it under its lock."""

    def __init__(self, window: float, burst: int) -> None:
        self.window = window
        self.burst = burst
        self._groups: dict[tuple[str, str], _Group] = {}
        self._closed: list[_Group] = []  # groups whose window closed, waiting for the next summary
        self._sent: dict[str, list[float]] = {}  # kind → times of alerts sent at once, last window
        self._last_summary = float("-inf")

    def add(self, kind: str, level: str, text: str, now: float) -> list[Notice]:
        key = (kind, mask_numbers(text))
        group = self._groups.get(key)
        if group is not None and now - group.first < self.window:
            group.count += 1
            group.last = text
            return []
        out: list[Notice] = []
        if group is not None:  # its window closed and no tick summarised it yet
            self._closed.append(group)
        sent = [t for t in self._sent.get(kind, []) if now - t < self.window]
        first = len(sent) < self.burst
        if first:
            sent.append(now)
            out.append(Notice(f"liu {level}: {kind}", text, level))
        self._sent[kind] = sent
        self._groups[key] = _Group(kind, level, now, 1, first, text)
        return out

    def due(self, now: float, force: bool = False) -> list[Notice]:
        """One message with the groups whose window closed (all, when `force`), at most once per window."""
        closed = [k for k, g in self._groups.items() if force or now - g.first >= self.window]
        self._closed += [self._groups.pop(k) for k in closed]
        groups = [g for g in self._closed if g.count > (1 if g.sent_first else 0)]  # something unsent
        if not groups or (not force and now - self._last_summary < self.window):
            if not groups:
                self._closed.clear()
            return []
        self._closed.clear()
        self._last_summary = now
        groups.sort(key=lambda g: (-LEVELS[g.level], -g.count))  # what matters most first: lines get cut
        lines = [f"{g.count}× {g.last}" for g in groups[:SUMMARY_LINES]]
        if len(groups) > SUMMARY_LINES:
            lines.append(f"… and {len(groups) - SUMMARY_LINES} more groups")
        level = max((g.level for g in groups), key=LEVELS.__getitem__)
        kinds = sorted({g.kind for g in groups})
        title = (
            f"liu {level}: {lines[0]}" if len(groups) == 1 else f"liu {level}: {len(groups)} grouped alerts"
        )
        body = "\n".join(lines) + f"\n({', '.join(kinds)}; grouped over {self.window:g}s)"
        return [Notice(title[:200], body, level)]


# ---------------------------------------------------------------- sending


def shown_url(url: str) -> str:
    """An alert URL as it may be logged: scheme and host only (tokens and passwords stay out)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "<alert url>"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # tgram://BOTID:TOKEN/…: the "port" is a secret
        port = ""
    return f"{parts.scheme}://{host}{port}/…" if parts.scheme else "<alert url>"


class Sender:
    """Sends notices to one URL on its own thread, from a bounded queue (a slow target holds up no other)."""

    def __init__(self, url: str, index: int = 0, size: int = QUEUE) -> None:
        import apprise  # only sessions with alerts pay for it (about 0.3 s of plugin loading)

        logging.getLogger("apprise").setLevel(logging.CRITICAL)  # it logs each attempt; we log failures
        self._types = {
            "info": apprise.NotifyType.INFO,
            "warning": apprise.NotifyType.WARNING,
            "error": apprise.NotifyType.FAILURE,
        }
        self.shown = shown_url(url)
        self.target = apprise.Apprise()
        if not self.target.add(url):
            raise ConfigError(
                f"tradeplan [alerts] urls[{index}] ({self.shown}): apprise cannot use this URL "
                "(expected one of apprise's notification URLs, e.g. json://host:port/path, mailto://…)"
            )
        self.queue: queue.Queue[Notice | None] = queue.Queue(size)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._abandoned = False  # set when close() stopped waiting: what is left is not sent
        self._thread = threading.Thread(target=self._run, name="liu-alerts", daemon=True)
        self._thread.start()

    def submit(self, notice: Notice) -> bool:
        """Queue `notice` without waiting; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(notice)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("alerts to %s: queue full, %d alerts dropped so far", self.shown, self.dropped)
            return False

    def _run(self) -> None:
        while (notice := self.queue.get()) is not None and not self._abandoned:
            ok = False
            try:
                ok = bool(
                    self.target.notify(
                        body=notice.body, title=notice.title, notify_type=self._types[notice.level]
                    )
                )
            except Exception as exc:  # noqa: BLE001 - a plugin's bug must not end the sender
                log.debug("alert plugin raised %s", type(exc).__name__)
            if ok:
                self.sent += 1
            else:
                self.failed += 1
                log.warning(
                    "alert %r could not be sent to %s (%d failed so far)",
                    notice.title,
                    self.shown,
                    self.failed,
                )

    def close(self, deadline: float) -> None:
        """Let the queued notices go out until `deadline` (time.monotonic), then stop waiting."""
        try:
            self.queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandoned = True
            log.warning(
                "alerts to %s: %d still unsent at the end of the session", self.shown, self.queue.qsize() + 1
            )


# ---------------------------------------------------------------- the facade


@dataclass
class Alerts:
    """The session's alerts: `notify(kind, text)` from anywhere in the main process, `tick()` now and then."""

    plan: AlertsPlan
    senders: list[Any] = field(
        default_factory=list
    )  # Sender, or anything with submit(Notice), close(deadline)
    clock: Callable[[], float] = time.monotonic
    grouper: Grouper = field(init=False)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.grouper = Grouper(self.plan.window, self.plan.burst)
        self._lock = threading.Lock()
        self._min = LEVELS[self.plan.min_level]

    @classmethod
    def start(cls, plan: AlertsPlan) -> Alerts | None:
        """The session's alerts, or None when the plan names no URL."""
        urls = plan.all_urls()
        return cls(plan, [Sender(url, i) for i, url in enumerate(urls)]) if urls else None

    def wants(self, kind: str) -> bool:
        """Whether alerts of `kind` are sent at all (its level is not 'off' and reaches min_level)."""
        level = getattr(self.plan.levels, kind, "error")
        return level != "off" and LEVELS[level] >= self._min

    def notify(self, kind: str, text: str) -> None:
        if not self.wants(kind):
            return
        level = getattr(self.plan.levels, kind, "error")
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            notices = self.grouper.add(kind, level, text, self.clock())
        self._submit(notices)

    def tick(self, force: bool = False) -> None:
        with self._lock:
            notices = self.grouper.due(self.clock(), force)
        self._submit(notices)

    def _submit(self, notices: list[Notice]) -> None:
        for n in notices:
            for sender in self.senders:
                sender.submit(n)

    def handler(self) -> AlertHandler:
        return AlertHandler(self)

    def close(self, timeout: float = 5.0) -> None:
        """Send the open summaries, then give the queue `timeout` seconds to go out."""
        self.tick(force=True)
        deadline = time.monotonic() + timeout
        for sender in self.senders:
            sender.close(deadline)


class SessionAlerts:
    """The daemon's alerts: the log handler on the root logger, and what the main process reads itself
    for alerts: the account's halt flag and, when fill alerts are wanted, the batch's new fills (read
    from `trades` only when the shared fill counters moved)."""

    def __init__(self, alerts: Alerts) -> None:
        self.alerts = alerts
        self.handler = alerts.handler()
        logging.getLogger().addHandler(self.handler)
        self.dsn: str | None = None
        self.batch_id = ""
        self.account: Any = None
        self.stats: Any = None
        self.halted = 0
        self._fills_seen = 0
        self._last_id = 0

    @classmethod
    def start(cls, plan: AlertsPlan) -> SessionAlerts | None:
        """None when the plan names no alert URL; a bad URL raises ConfigError (before anything starts)."""
        alerts = Alerts.start(plan)
        return cls(alerts) if alerts is not None else None

    def watch(self, dsn: str | None, batch_id: str, account: Any, stats: Any) -> None:
        """What to watch once the session's processes exist."""
        self.dsn, self.batch_id, self.account, self.stats = dsn, batch_id, account, stats

    async def poll(self) -> None:
        """Call from the supervising loop (a few times a second): cheap unless something changed."""
        self._halt()
        if self.alerts.wants("fill") and self.dsn is not None and self.stats is not None:
            total = sum(self.stats.consumer(i).get("fills", 0) for i in range(self.stats.consumers))
            if total > self._fills_seen:
                try:
                    if await self._fills() < _FILL_ROWS:
                        self._fills_seen = total
                except Exception as exc:  # noqa: BLE001 - the database may be out: try again later
                    log.debug("fill alerts: cannot read the new fills (%s)", type(exc).__name__)
        self.alerts.tick()

    def _halt(self) -> None:
        if self.account is None:
            return
        from liu.brokers.account import HALT_NAMES

        now = self.account.halted
        if now != self.halted:
            if now:
                self.alerts.notify("risk", f"trading halted ({HALT_NAMES.get(now, 'unknown')})")
            else:
                self.alerts.notify("risk", "trading resumed: the halt is lifted")
            self.halted = now

    async def _fills(self) -> int:
        from liu.store.db import connection

        async with connection(self.dsn) as conn:
            rows = await conn.fetch(
                """
                SELECT t.id, t.symbol, t.side, t.qty, t.price, COALESCE(r.algo_name, '') AS strategy
                FROM trades t LEFT JOIN algo_run r ON r.id = t.algo_run_id
                WHERE t.batch_id = $1 AND t.id > $2
                ORDER BY t.id
                LIMIT $3
                """,
                self.batch_id,
                self._last_id,
                _FILL_ROWS,
            )
        for r in rows:
            self._last_id = max(self._last_id, int(r["id"]))
            self.alerts.notify(
                "fill", f"{r['strategy']}: {r['side']} {r['qty']:g} {r['symbol']} @ {r['price']:,.4f}"
            )
        return len(rows)

    def close(self, timeout: float = 5.0) -> None:
        """Stop mapping log records; send the open summaries; give the queue `timeout` seconds."""
        logging.getLogger().removeHandler(self.handler)
        self.alerts.close(timeout)


_FILL_ROWS = 1000  # new fills read per poll
