"""Alpaca's trading REST and `trade_updates` stream over a `TradingEngine`, on its own port (uvicorn).

The market-data server's port answers through websockets' `process_request`, which cannot read a
request body, so orders get a FastAPI app on a second port, in the same event loop (the engine is
only ever touched from that loop). alpaca-py points at it with
`TradingClient(key, secret, url_override=trading_url)` and
`TradingStream(key, secret, url_override=trading_url.replace("http", "ws") + "/stream")`:

    POST/GET/DELETE /v2/orders, GET /v2/orders:by_client_order_id?client_order_id=,
    GET/PATCH/DELETE /v2/orders/{id}, GET/DELETE /v2/positions, GET/DELETE /v2/positions/{symbol},
    GET /v2/account, WS /stream (JSON trade_updates),
    any other GET (clock, calendar, assets, market data) is the market-data REST of the same exchange.

Auth: `APCA-API-KEY-ID` / `APCA-API-SECRET-KEY`; missing → 401 `{"message": "unauthorized."}`, wrong →
403 `{"message": "forbidden."}`. One account per key.

Admin (tests): `POST /liu/faults` with the exchange's key headers and a JSON body of `Faults.set` keys:
`{"fail_post": {"status": 504, "times": 1}}`, `{"delay_post": {"seconds": 5, "times": 1}}`,
`{"drop_post": {"times": 1}}`, `{"reject_symbols": ["AAA"]}`, `{"reject_after_accept": ["AAA"]}`,
`{"insufficient_buying_power": true}`,
`{"drop_trade_stream": true}`, `{"clear": true}`; it answers the switches now in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
from dataclasses import asdict
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from liu.sources.exchange.rest import RestApi
from liu.sources.exchange.trading import ApiError, TradeAccount, TradingEngine, iso

log = logging.getLogger(__name__)
_ORDER_PATH = "/v2/orders"


class TradingApi:
    """The FastAPI app and its uvicorn server for one `TradingEngine` (start/stop on the running loop)."""

    def __init__(self, engine: TradingEngine, rest: RestApi | None = None) -> None:
        self.engine = engine
        self.rest = rest
        self.host = "127.0.0.1"
        self.port = 0
        self.app = self._build()
        self._server: uvicorn.Server | None = None
        self._loop_task: asyncio.Task | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"ws://{self.host}:{self.port}/stream"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only then (else 40 ms delayed-ACK stalls).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.host, self.port = host, sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="websockets-sansio",
            ws_ping_interval=None,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        # Server.serve() would take over SIGINT/SIGTERM from the exchange: its steps, without that.
        if not config.loaded:
            config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self._loop_task = asyncio.get_running_loop().create_task(server.main_loop(), name="liu-trading-api")
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.engine.drop_trade_streams()
        server.should_exit = True
        if self._loop_task is not None:
            with contextlib.suppress(Exception):
                await self._loop_task
        server.force_exit = True
        for conn in list(server.server_state.connections):
            conn.transport.abort()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            await server.shutdown(sockets=[self._sock] if self._sock else None)

    # -- the app ---------------------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        eng = self.engine

        @app.exception_handler(ApiError)
        async def _api_error(request: Request, e: ApiError) -> JSONResponse:
            return JSONResponse(e.body, e.status)

        @app.exception_handler(StarletteHTTPException)
        async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
            return JSONResponse({"code": e.status_code * 100000, "message": str(e.detail)}, e.status_code)

        @app.post(_ORDER_PATH)
        async def post_order(request: Request) -> Response:
            acct = self._auth(request)
            eng.order_posts += 1
            fault = eng.faults.take()
            if fault is not None and fault[0] == "fail" and fault[1] in (429, 500):
                status = int(fault[1])
                msg = "rate limit exceeded" if status == 429 else "internal server error"
                return JSONResponse({"code": status * 100000, "message": msg}, status)
            rec = eng.submit(acct, await _json(request))
            body = eng.order_json(acct, rec)
            if fault is not None:
                kind, value = fault
                if kind == "fail":  # 504: the order exists, the gateway gave up waiting
                    return JSONResponse({"code": 50400000, "message": "gateway timeout"}, 504)
                if kind == "drop":
                    self._abort(request)
                    return Response(status_code=204)
                await asyncio.sleep(value)
            return JSONResponse(body)

        @app.get(_ORDER_PATH)
        async def get_orders(request: Request) -> Response:
            acct = self._auth(request)
            return JSONResponse(self._list_orders(acct, dict(request.query_params)))

        @app.delete(_ORDER_PATH)
        async def cancel_orders(request: Request) -> Response:
            acct = self._auth(request)
            return JSONResponse(eng.cancel_all(acct), 207)

        @app.get(_ORDER_PATH + ":by_client_order_id")
        async def by_client_id(request: Request) -> Response:
            acct = self._auth(request)
            cid = request.query_params.get("client_order_id")
            rid = acct.by_client.get(cid or "")
            if rid is None:
                raise ApiError(404, "order not found", 40410000)
            return JSONResponse(eng.order_json(acct, acct.orders[rid]))

        @app.get(_ORDER_PATH + "/{order_id}")
        async def get_order(order_id: str, request: Request) -> Response:
            acct = self._auth(request)
            nested = _bool(request.query_params.get("nested"))
            return JSONResponse(eng.order_json(acct, _order(acct, order_id), nested=nested))

        @app.delete(_ORDER_PATH + "/{order_id}")
        async def cancel_order(order_id: str, request: Request) -> Response:
            acct = self._auth(request)
            eng.cancel(acct, _order(acct, order_id))
            return Response(status_code=204)

        @app.patch(_ORDER_PATH + "/{order_id}")
        async def replace_order(order_id: str, request: Request) -> Response:
            acct = self._auth(request)
            rec = _order(acct, order_id)
            return JSONResponse(eng.order_json(acct, eng.replace(acct, rec, await _json(request))))

        @app.get("/v2/positions")
        async def positions(request: Request) -> Response:
            return JSONResponse(eng.positions_json(self._auth(request)))

        @app.delete("/v2/positions")
        async def close_all(request: Request) -> Response:
            acct = self._auth(request)
            cancel = _bool(request.query_params.get("cancel_orders"))
            return JSONResponse(eng.close_all(acct, cancel), 207)

        @app.get("/v2/positions/{symbol:path}")
        async def position(symbol: str, request: Request) -> Response:
            acct = self._auth(request)
            asset = eng.market.asset(symbol)
            pos = acct.broker.position("", asset["symbol"]) if asset is not None else None
            if pos is None or abs(pos.qty) < 1e-12:
                raise ApiError(404, "position does not exist", 40410000)
            return JSONResponse(eng.position_json(asset["symbol"], pos.qty, pos.avg_price))  # type: ignore[index]

        @app.delete("/v2/positions/{symbol:path}")
        async def close_position(symbol: str, request: Request) -> Response:
            acct = self._auth(request)
            q = request.query_params
            rec = eng.close_position(acct, symbol, q.get("qty"), q.get("percentage"))
            return JSONResponse(eng.order_json(acct, rec))

        @app.get("/v2/account")
        async def account(request: Request) -> Response:
            return JSONResponse(eng.account_json(self._auth(request)))

        @app.post("/liu/faults")
        async def faults(request: Request) -> Response:
            self._auth(request)
            spec = await _json(request)
            if not isinstance(spec, dict):
                raise ApiError(422, "faults: expected a JSON object", 40010001)
            try:
                eng.faults.set(spec)
            except (ValueError, KeyError, TypeError) as e:
                raise ApiError(422, f"faults: {e}", 40010001) from None
            dropped = eng.drop_trade_streams() if spec.get("drop_trade_stream") else 0
            state = {k: sorted(v) if isinstance(v, set) else v for k, v in asdict(eng.faults).items()}
            return JSONResponse(state | {"dropped_streams": dropped})

        @app.websocket("/stream")
        async def stream(ws: WebSocket) -> None:
            await self._stream(ws)

        @app.get("/{path:path}")
        async def market_rest(path: str, request: Request) -> Response:
            if self.rest is None or not RestApi.serves("/" + path):
                raise ApiError(404, "endpoint not found", 40410000)
            target = request.url.path + ("?" + request.url.query if request.url.query else "")
            reply = self.rest.handle("GET", target, request.headers)
            return Response(reply.encode(), reply.status, media_type="application/json")

        return app

    def _auth(self, request: Request) -> TradeAccount:
        key = request.headers.get("APCA-API-KEY-ID")
        secret = request.headers.get("APCA-API-SECRET-KEY")
        return self.engine.account(_check_key(self.engine, key, secret, http=True))

    def _abort(self, request: Request) -> None:
        """Cut this request's connection without an answer."""
        client = request.scope.get("client")
        server = self._server
        if server is None or client is None:
            return
        for conn in list(server.server_state.connections):
            if tuple(getattr(conn, "client", ()) or ()) == tuple(client):
                conn.transport.abort()  # type: ignore[attr-defined]

    def _list_orders(self, acct: TradeAccount, q: dict[str, str]) -> list[dict]:
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise ApiError(422, f"invalid status {status!r}: expected open, closed or all", 40010001)
        try:
            limit = int(q.get("limit", 50))
        except ValueError:
            raise ApiError(422, f"invalid limit {q.get('limit')!r}", 40010001) from None
        if not 1 <= limit <= 500:
            raise ApiError(422, f"invalid limit {limit}: must be between 1 and 500", 40010001)
        direction = q.get("direction", "desc")
        if direction not in ("asc", "desc"):
            raise ApiError(422, f"invalid direction {direction!r}: expected asc or desc", 40010001)
        after, until = _time(q.get("after"), "after"), _time(q.get("until"), "until")
        nested = _bool(q.get("nested"))
        symbols = set(q["symbols"].split(",")) if q.get("symbols") else None
        side = q.get("side")
        rows = []
        for rec in acct.orders.values():
            if nested and rec.parent is not None:
                continue
            if status == "open" and not rec.is_open or status == "closed" and rec.is_open:
                continue
            if symbols is not None and rec.symbol not in symbols:
                continue
            if side and rec.side != side:
                continue
            if after is not None and not rec.created_ns > after:
                continue
            if until is not None and not rec.created_ns < until:
                continue
            rows.append(rec)
        rows.sort(key=lambda r: r.created_ns, reverse=direction == "desc")
        return [self.engine.order_json(acct, r, nested=nested) for r in rows[:limit]]

    # -- trade_updates ---------------------------------------------------------------------------------

    async def _stream(self, ws: WebSocket) -> None:
        await ws.accept()
        acct: TradeAccount | None = None
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        listening = False

        def send(raw: bytes | None) -> None:
            queue.put_nowait(raw)

        async def reader() -> None:
            nonlocal acct, listening
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    queue.put_nowait(None)
                    return
                try:
                    req = json.loads(msg.get("text") or msg.get("bytes") or b"")
                    action, data = req.get("action"), req.get("data") or {}
                except (ValueError, AttributeError):
                    await _send(ws, {"stream": "error", "data": {"error_message": "invalid syntax"}})
                    continue
                if action in ("authenticate", "auth"):
                    try:
                        key = _check_key(self.engine, data.get("key_id"), data.get("secret_key"), http=False)
                    except ApiError:
                        await _send(
                            ws,
                            {"stream": "authorization", "data": {"status": "unauthorized", "action": action}},
                        )
                        queue.put_nowait(None)
                        return
                    acct = self.engine.account(key)
                    await _send(
                        ws, {"stream": "authorization", "data": {"action": action, "status": "authorized"}}
                    )
                elif action == "listen":
                    if acct is None:
                        await _send(ws, {"stream": "error", "data": {"error_message": "unauthorized"}})
                        continue
                    streams = [s for s in data.get("streams", []) if s == "trade_updates"]
                    listening = bool(streams)
                    if listening:
                        acct.listeners.add(send)
                    else:
                        acct.listeners.discard(send)
                    await _send(ws, {"stream": "listening", "data": {"streams": streams}})
                else:
                    await _send(
                        ws, {"stream": "error", "data": {"error_message": f"unknown action {action}"}}
                    )

        task = asyncio.get_running_loop().create_task(reader())
        try:
            while True:
                raw = await queue.get()
                if raw is None:
                    break
                await ws.send_bytes(raw)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            if acct is not None:
                acct.listeners.discard(send)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            with contextlib.suppress(Exception):
                await ws.close(1011 if task.cancelled() else 1000)


async def _send(ws: WebSocket, msg: dict) -> None:
    await ws.send_bytes(json.dumps(msg, separators=(",", ":")).encode())


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise ApiError(422, "request body is not valid JSON", 40010001) from None


def _check_key(engine: TradingEngine, key: str | None, secret: str | None, http: bool) -> str:
    """The account key of a request, or 401 / 403 as Alpaca answers."""
    if key is None and secret is None:
        raise ApiError(401, "unauthorized.")
    if not engine.keys:
        return key or ""
    for known, expected in engine.keys.items():
        if _same(key, known):
            if expected is not None and not _same(secret, expected):
                break
            return known
    raise ApiError(403, "forbidden.")


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _order(acct: TradeAccount, order_id: str) -> Any:
    rec = acct.orders.get(order_id)
    if rec is None:
        raise ApiError(404, "order not found", 40410000)
    return rec


def _bool(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


def _time(value: str | None, name: str) -> int | None:
    from liu.sources.exchange.rest import _time as parse

    try:
        return parse(value, name)
    except Exception:
        raise ApiError(422, f"invalid {name} {value!r}: expected RFC 3339", 40010001) from None


__all__ = ["TradingApi", "iso"]
