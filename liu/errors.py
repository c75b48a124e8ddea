"""Errors raised by liu.

Tree::

    LiuError
    ├── ConfigError            bad tradeplan or setting: stop and fix
    ├── PluginError            a scanner or strategy file/class cannot be loaded
    ├── DatabaseError          the database cannot be reached or migrated
    └── BrokerError
        ├── TransientBrokerError   retry later
        └── OrderRejected          the broker refused one order (reason given)

`trader` catches `LiuError` at the top level and prints one line; any other
exception keeps its traceback.
"""

from __future__ import annotations


class LiuError(Exception):
    """Root of every error liu raises on purpose."""


class ConfigError(LiuError):
    """A tradeplan or setting is invalid; the message names the key and what was expected."""


class PluginError(LiuError):
    """A scanner or strategy cannot be loaded; the message names the file, class and cause."""


class DatabaseError(LiuError):
    """The database is unreachable or cannot be migrated."""


class BrokerError(LiuError):
    """A broker operation failed."""


class TransientBrokerError(BrokerError):
    """A broker operation failed for a reason that may pass (retry later)."""


class OrderRejected(BrokerError):
    """The broker refused an order; `reason` says why."""

    def __init__(self, client_order_id: str, reason: str) -> None:
        super().__init__(f"order {client_order_id} rejected: {reason}")
        self.client_order_id = client_order_id
        self.reason = reason
