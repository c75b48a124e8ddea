"""The log tail the live page shows, and the scrubbing of secrets from anything the page shows.

`LogTail` sits on the main process's root logger; the children's records reach it too, because
`liu.logs` hands every child record to the main process's own loggers.
"""

from __future__ import annotations

import collections
import logging
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

LOG_LINES = 500


class LogTail(logging.Handler):
    """Keeps the last `size` log records of the main process (and of children that log through it)."""

    def __init__(self, size: int = LOG_LINES) -> None:
        super().__init__()
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + self.formatter.formatException(record.exc_info)
            self.records.append(
                {
                    "t": datetime.fromtimestamp(record.created).strftime("%H:%M:%S"),
                    "level": record.levelname,
                    "levelno": record.levelno,
                    "name": record.name,
                    "process": record.processName,
                    "message": text,
                }
            )
        except Exception:  # a log handler must never raise into the caller
            self.handleError(record)


class Scrubber:
    """Replaces every known secret (the tokens, the DSN's password) in text bound for the page."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text


def dsn_password(dsn: str | None) -> str | None:
    """The password inside a URL-form DSN, so it can be scrubbed from anything shown."""
    if not dsn:
        return None
    try:
        return urlsplit(dsn).password
    except ValueError:
        return None
