"""Alpaca as a market-data source: REST (history, snapshots, assets, calendar) and stream endpoints.

`client` talks to Alpaca's REST APIs through alpaca-py's own clients (blocking: call them off the event
loop); `history` loads recent minute bars for warm-up and gap back-fill; `calendar` turns Alpaca's clock
and calendar into a trading session. The websocket side is the producer's (`liu.producer`).
"""

from liu.sources.alpaca.client import (
    AlpacaAuthError,
    AlpacaData,
    AlpacaError,
    Asset,
    Credentials,
    Endpoints,
    Snapshot,
    is_crypto,
    load_credentials,
)

__all__ = [
    "AlpacaAuthError",
    "AlpacaData",
    "AlpacaError",
    "Asset",
    "Credentials",
    "Endpoints",
    "Snapshot",
    "is_crypto",
    "load_credentials",
]
