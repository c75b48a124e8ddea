"""Logging of a `trader` session: every process's records are printed by the main process, in one place.

Why: the consumers, the producer and the market-data server used to write their log lines straight to
the terminal, through the live table, which rich then redrew underneath them again and again. Now:

- A child process is started through `LogHub.spawn`, which runs its target under `run_child`: the
  child's root logger gets one `QueueHandler` whose queue is BOUNDED and emptied by a sender thread
  onto a one-way pipe to the main process. Logging never blocks the child's event loop: when the
  main process does not keep up, records are dropped, counted, and the count is sent when it can be.
- One pipe per child, not one shared `multiprocessing.Queue`: a child killed in the middle of a write
  (a fault test, a crash) breaks only its own pipe, never a lock every other process needs.
- In the main process a `LogHub` thread reads every pipe and hands each record to the main process's
  own loggers (`logging.getLogger(record.name).handle(record)`), so whatever handler the main process
  has — the terminal's `ConsoleHandler`, the alert handler (liu.alerts), a dashboard's log tail — sees
  the children's records exactly as its own.
- `ConsoleHandler` prints through the session's rich console, so a line lands above the live table
  (rich moves the cursor up over the table, prints the line, redraws the table once). When the output
  is not a terminal it writes plain lines to stderr, as before.
- Repeated warnings are summarised (`Repeats`): the first of a kind is printed; the same warning again
  within `window` seconds is only counted; when the window closes one line says how many there were
  and shows the last one ("[39 more in 10s] order … rejected: SIM001 is not shortable"). "The same"
  means the same logger, level and message once numbers are masked (see `repeat_key`), so order ids,
  quantities and counters do not make each line unique, while symbols (SIM001) and reasons do.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from rich.console import Console
from rich.text import Text

FORMAT = "%(asctime)s %(levelname)s %(proc)s %(name)s: %(message)s"
REPEAT_WINDOW = 10.0  # seconds a repeated warning is counted before its summary line
CHILD_QUEUE = 10_000  # records a child buffers before it drops (and counts) them
_STOP = None


# ---------------------------------------------------------------- the child side


# Loggers a child keeps quieter than its root level (the market-data server's websockets says
# "server listening" at INFO), on top of the levels the main process set (see `LogHub.child`).
QUIET = {"websockets": logging.WARNING}

# What a record carries across the pipe: the standard attributes, message already formatted. Anything
# else (`extra=`; websockets attaches its connection object) stays behind unless it is a plain value.
_FIELDS = (
    "name",
    "levelno",
    "levelname",
    "pathname",
    "filename",
    "module",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "relativeCreated",
    "thread",
    "threadName",
    "processName",
    "process",
)
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


@dataclass
class ChildLogs:
    """What a child process needs to log through the main process (picklable: a pipe end, levels)."""

    conn: Connection
    level: int = logging.INFO
    levels: dict[str, int] = field(default_factory=dict)  # logger name → level, set in the child


class _BoundedQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that drops (and counts) records instead of blocking when its queue is full."""

    def __init__(self, q: queue.Queue) -> None:
        super().__init__(q)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """A plain copy to pickle: the formatted message (traceback included) and plain-valued extras."""
        data = {k: getattr(record, k, None) for k in _FIELDS}
        data.update(
            (k, v)
            for k, v in record.__dict__.items()
            if k not in _STANDARD and isinstance(v, str | int | float | bool | type(None))
        )
        data["msg"] = self.format(record)
        return logging.makeLogRecord(data)

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Sender:
    """The child's sender thread: queued records → the pipe to the main process."""

    def __init__(self, conn: Connection, handler: _BoundedQueueHandler) -> None:
        self.conn = conn
        self.handler = handler
        self.reported = 0
        self.thread = threading.Thread(target=self._run, name="liu-log-sender", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        q = self.handler.queue
        while True:
            record = q.get()
            if record is _STOP:
                return
            if not self._send(record):
                return
            dropped = self.handler.dropped
            if dropped > self.reported:
                note = logging.makeLogRecord(
                    {
                        "name": "liu.logs",
                        "levelno": logging.WARNING,
                        "levelname": "WARNING",
                        "msg": f"{dropped - self.reported} log records of this process were dropped "
                        "(more than it could buffer, or not sendable)",
                        "processName": record.processName,
                    }
                )
                self.reported = dropped
                self._send(note)

    def _send(self, record: logging.LogRecord) -> bool:
        try:
            self.conn.send(record)
        except (OSError, EOFError):  # the main process is gone: nothing more can be said
            return False
        except Exception:  # noqa: BLE001 - not picklable after all: drop this record, keep the rest
            self.handler.dropped += 1
        return True

    def close(self, timeout: float) -> None:
        try:
            self.handler.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)


def run_child(logs: ChildLogs, target: Callable[..., Any], args: Sequence[Any]) -> None:
    """Process entry (see `LogHub.spawn`): route this process's logging to the main process, run `target`.

    An exception escaping `target` is logged (so its traceback reaches the main process's log like
    any other record) and the process exits with code 1, as multiprocessing would.
    """
    handler = _BoundedQueueHandler(queue.Queue(CHILD_QUEUE))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logs.level)
    for name, level in {**QUIET, **logs.levels}.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)
    sender = _Sender(logs.conn, handler)
    try:
        target(*args)
    except Exception:
        logging.getLogger("liu").exception("process %s failed", _process_name())
        raise SystemExit(1) from None
    finally:
        sender.close(timeout=2.0)


def _process_name() -> str:
    import multiprocessing

    return multiprocessing.current_process().name


# ---------------------------------------------------------------- the main side


class LogHub:
    """Main process: starts children whose logging comes back here, and replays their records here."""

    def __init__(self, level: int = logging.INFO, tick: Callable[[bool], None] | None = None) -> None:
        self.level = level
        # tick(False) a few times a second from the reader thread (repeat summaries fall due);
        # tick(True) from `drain` and `close` (every open summary now).
        self.tick = tick
        self._conns: list[Connection] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.received = 0

    def child(self, ctx: Any) -> ChildLogs:
        """A new pipe for one child: the hub keeps the read end; close the write end once it started."""
        r, w = ctx.Pipe(duplex=False)
        with self._lock:
            self._conns.append(r)
        manager = logging.Logger.manager
        levels = {
            name: lg.level
            for name, lg in manager.loggerDict.items()
            if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET
        }
        return ChildLogs(w, self.level, levels)

    def spawn(self, ctx: Any, target: Callable[..., Any], args: Sequence[Any], **kw: Any) -> Any:
        """Start `ctx.Process(target=target, args=args, **kw)` with its logging routed here."""
        logs = self.child(ctx)
        p = ctx.Process(target=run_child, args=(logs, target, tuple(args)), **kw)
        try:
            p.start()
        finally:
            logs.conn.close()  # the child has its copy: EOF here when it exits
        return p

    def start(self) -> LogHub:
        self._thread = threading.Thread(target=self._run, name="liu-log-hub", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._read(timeout=0.2)
            if self.tick is not None:
                self.tick(False)

    def _read(self, timeout: float) -> int:
        """Dispatch the records that arrive within `timeout`; return how many."""
        with self._lock:
            conns = list(self._conns)
        if not conns:
            self._stopping.wait(timeout)
            return 0
        n = 0
        for conn in wait(conns, timeout):
            try:
                record = conn.recv()
            except Exception:  # noqa: BLE001 - EOF, or a child killed mid-write: this pipe is done
                self._drop(conn)
                continue
            n += 1
            self.dispatch(record)
        return n

    def _drop(self, conn: Connection) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()

    def dispatch(self, record: logging.LogRecord) -> None:
        """Hand a child's record to this process's logger of the same name (and so to its handlers)."""
        self.received += 1
        try:
            logging.getLogger(record.name).handle(record)
        except Exception:  # noqa: BLE001 - a bad record must not end the hub
            logging.getLogger("liu.logs").exception("could not handle a log record from a child")

    def drain(self, timeout: float = 1.0) -> None:
        """Let what the children sent so far be printed (e.g. once they exited), then every open summary.

        The reader thread owns the pipes: wait until none has anything left to read (a closed pipe
        reads as ready until the thread has dropped it), at most `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        if self._thread is None:
            while self._read(0.0) and time.monotonic() < deadline:
                pass
        else:
            while time.monotonic() < deadline:
                with self._lock:
                    conns = list(self._conns)
                if not conns or not wait(conns, 0.0):
                    break
                time.sleep(0.02)
        if self.tick is not None:
            self.tick(True)

    def close(self) -> None:
        """Stop the reader after dispatching whatever is still in the pipes."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        while self._read(0.0):
            pass
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        if self.tick is not None:
            self.tick(True)


# ---------------------------------------------------------------- repeated warnings

_NUMBER = re.compile(r"(?<![A-Z\d.])[-+]?\d[\d,_]*(?:\.\d+)?(?:e[-+]?\d+)?")


def mask_numbers(text: str) -> str:
    """`text` with its numbers as '#', except those right after a capital letter (symbols: SIM001)."""
    return _NUMBER.sub("#", text)


def repeat_key(record: logging.LogRecord) -> tuple[str, int, str]:
    """(logger, level, message with its numbers masked): what makes two records "the same warning".

    A number right after a capital letter stays (symbols: SIM001); every other number becomes '#'
    (`x25` → `x#`), so ids, quantities, prices and counters do not make a line unique.
    """
    return record.name, record.levelno, mask_numbers(record.getMessage())


@dataclass
class _Group:
    first: float
    count: int
    last: logging.LogRecord


class Repeats:
    """Counts records that repeat within `window` seconds; says which to print and when to summarise.

    Only records at `min_level` and above are grouped (info lines are never held back).
    """

    def __init__(self, window: float = REPEAT_WINDOW, min_level: int = logging.WARNING) -> None:
        self.window = window
        self.min_level = min_level
        self._groups: dict[tuple[str, int, str], _Group] = {}
        self._lock = threading.Lock()
        self.suppressed = 0

    def admit(self, record: logging.LogRecord, now: float | None = None) -> list[logging.LogRecord]:
        """What to print now: `record` itself, after the summary of its group's window if that just
        closed; nothing when `record` was counted into an open group."""
        if record.levelno < self.min_level:
            return [record]
        now = time.monotonic() if now is None else now
        key = repeat_key(record)
        with self._lock:
            group = self._groups.get(key)
            if group is None or now - group.first >= self.window:
                self._groups[key] = _Group(now, 0, record)
                return [self.summary(group, now), record] if group is not None and group.count else [record]
            group.count += 1
            group.last = record
            self.suppressed += 1
            return []

    def due(self, now: float | None = None, force: bool = False) -> list[logging.LogRecord]:
        """Summary records of the groups whose window has closed (all of them when `force`)."""
        now = time.monotonic() if now is None else now
        out = []
        with self._lock:
            for key, group in list(self._groups.items()):
                if force or now - group.first >= self.window:
                    del self._groups[key]
                    if group.count:
                        out.append(self.summary(group, now))
        return out

    def summary(self, group: _Group, now: float) -> logging.LogRecord:
        last = group.last
        span = max(1, round(min(now - group.first, self.window)))
        record = logging.makeLogRecord(last.__dict__)
        record.msg = f"[{group.count} more in {span}s] {last.getMessage()}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.repeats = group.count
        return record


# ---------------------------------------------------------------- printing


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = record.processName
        record.proc = "main" if name == "MainProcess" else name.removeprefix("liu-")
        return super().format(record)


_STYLES = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}


class ConsoleHandler(logging.Handler):
    """Prints records through a rich console (above its live display), repeated warnings summarised.

    `console` is used when it is a terminal; otherwise lines go to `sys.stderr` (looked up at each
    write) as plain text, as `logging.basicConfig` would print them.
    """

    def __init__(self, console: Console | None = None, repeats: Repeats | None = None, fmt: str = FORMAT):
        super().__init__()
        self.console = console if console is not None and console.is_terminal else None
        self.repeats = repeats if repeats is not None else Repeats()
        self.setFormatter(_Formatter(fmt))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            for line in self.repeats.admit(record):
                self._print(line)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def flush_repeats(self, force: bool = False) -> None:
        """Print the summary lines whose window has closed (every open one when `force`)."""
        for record in self.repeats.due(force=force):
            try:
                self._print(record)
            except Exception:  # noqa: BLE001
                self.handleError(record)

    def _print(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if self.console is not None:
            style = _STYLES.get(record.levelno, "dim" if record.levelno < logging.INFO else "")
            self.console.print(Text(line, style=style), highlight=False, markup=False)
        else:
            with self.lock:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()


@contextlib.contextmanager
def session_logging(console: Console, level: int | None = None) -> Iterator[LogHub]:
    """For the length of a session: the root logger prints through `console` and children log through
    the yielded hub; the previous handlers come back afterwards."""
    root = logging.getLogger()
    level = root.level if level is None else level
    handler = ConsoleHandler(console)
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    hub = LogHub(level, tick=handler.flush_repeats).start()
    try:
        yield hub
    finally:
        hub.close()
        root.handlers[:] = saved
