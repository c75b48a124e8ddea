"""liu's local exchange: Alpaca's market-data REST (bars, snapshots, latest), the trading API's clock,
calendar and assets, on the same port as the market-data streams (`liu.sources.server`).

`calendar` is the market calendar, `history` the bars of the feed being served, `market` what the
exchange knows at data time "now", `rest` the HTTP routes, `local` a server on a thread for tests.
"""
