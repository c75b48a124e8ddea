"""Trading on Alpaca: one execution gateway process owns the connection; consumers trade through it.

`ids` makes client order ids, `mapping` turns liu orders into alpaca-py requests and Alpaca's order
snapshots back into liu updates and fills, `gateway` is the process owning the REST client, the
rate limiter and the trade_updates stream, `broker` is the `Broker` a consumer's runner trades through.
"""
