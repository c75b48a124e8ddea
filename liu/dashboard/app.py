"""The dashboard's web app (FastAPI): the live page, its events and actions, past batches, /metrics.

| path | what |
|---|---|
| `GET /` | the live page (history only: redirects to /batches) |
| `GET /events` | server-sent events: one `state` event per snapshot (the sections' HTML, the equity curve) |
| `GET /api/state` | the current snapshot as JSON |
| `POST /api/control` | `{"cmd": "halt"|"resume"|"flatten"}` or `{"cmd": "cancel", "client_order_id": …}`, sent over the control channel (liu.control), answered with its answer |
| `GET /batches`, `GET /batches/{id}` | every batch in the database; one batch's report page |
| `GET /metrics` | Prometheus text format (liu.dashboard.metrics) |
| `GET /static/…` | the page's script and style, and plotly.js from the plotly package (no CDN) |

Every path sits behind `TokenGate` (liu.dashboard.auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from liu.analysis.batch import BatchNotFound
from liu.control import ControlError, send_command
from liu.dashboard import render
from liu.dashboard.auth import TokenGate, Tokens
from liu.dashboard.history import Reports
from liu.dashboard.state import Hub

ACTIONS = ("halt", "resume", "flatten", "cancel")
CONTROL_TIMEOUT = 10.0  # longer than a cancel's wait for its consumer (liu.cancel)
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class Live:
    """The live half: the hub's snapshots, /metrics' registry, the control socket."""

    hub: Hub
    registry: Any  # prometheus_client.CollectorRegistry
    control: Any  # pathlib.Path of the control socket


class _Static:
    """The page's files, read once; plotly.js is also kept gzipped (4.8 MB → about 1.4 MB)."""

    TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> tuple[bytes, bytes] | None:
        with self._lock:
            if name not in self._files:
                data = self._read(name)
                if data is None:
                    return None
                self._files[name] = (data, gzip.compress(data, 6))
            return self._files[name]

    @staticmethod
    def _read(name: str) -> bytes | None:
        if name == "plotly.min.js":
            return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
        if name in ("dashboard.js", "dashboard.css"):
            return (resources.files("liu.dashboard") / "static" / name).read_bytes()
        return None


def create_app(tokens: Tokens, cookie: str, dsn: str | None, live: Live | None = None) -> TokenGate:
    """The app behind its token gate; `live` None serves the history view only (`trader dashboard`)."""
    static = _Static()
    reports = Reports(dsn) if dsn else None
    payloads: dict[int, str] = {}  # the rendered `state` event of the latest snapshot, shared by every page

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(live.hub.run()) if live is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    def payload() -> str:
        version = live.hub.version
        if version not in payloads:
            snap = live.hub.snapshot
            payloads.clear()
            payloads[version] = json.dumps(
                {
                    "html": render.sections(snap),
                    "equity": snap["equity"],
                    "phase": snap["session"]["phase"],
                    "time_axis": snap["session"]["time_axis"],
                }
            )
        return payloads[version]

    @app.get("/")
    async def index() -> Response:
        if live is None:
            return RedirectResponse("/batches", status_code=303)
        if not live.hub.snapshot:
            await live.hub.next(live.hub.version, timeout=5)
        return HTMLResponse(
            render.live_page(live.hub.snapshot), headers={**_NO_STORE, "Content-Security-Policy": render.CSP}
        )

    @app.get("/static/{name}")
    async def static_file(name: str, request: Request) -> Response:
        found = await asyncio.to_thread(static.get, name)
        if found is None:
            return Response("not found", status_code=404)
        plain, packed = found
        kind = _Static.TYPES[name[name.rfind(".") :]]
        headers = {"Cache-Control": "private, max-age=3600", "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(packed, media_type=kind, headers={**headers, "Content-Encoding": "gzip"})
        return Response(plain, media_type=kind, headers=headers)

    @app.get("/batches")
    async def batches() -> Response:
        if reports is None:
            return HTMLResponse(render.batches_page([], None), headers=_NO_STORE)
        rows = await reports.batches()
        current = live.hub.src.batch_id if live is not None else None
        return HTMLResponse(
            render.batches_page(rows, current), headers={**_NO_STORE, "Content-Security-Policy": render.CSP}
        )

    @app.get("/batches/{batch_id}")
    async def batch(batch_id: str) -> Response:
        if reports is None:
            return Response("no database", status_code=404)
        try:
            page = await reports.page(batch_id)
        except BatchNotFound as e:
            return Response(str(e), status_code=404, media_type="text/plain")
        return HTMLResponse(page, headers=_NO_STORE)

    if live is None:
        return TokenGate(app, tokens, cookie)

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    @app.get("/events")
    async def events() -> Response:
        async def stream() -> AsyncIterator[str]:
            seen = 0  # version 0: no snapshot yet
            while True:
                version = await live.hub.next(seen)
                if version == seen:
                    yield ": still here\n\n"  # keeps proxies and the browser from timing out
                    continue
                seen = version
                yield f"event: state\ndata: {payload()}\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={**_NO_STORE, "X-Accel-Buffering": "no"}
        )

    @app.get("/api/state")
    async def state() -> Response:
        if not live.hub.snapshot:
            await live.hub.next(live.hub.version, timeout=5)
        return JSONResponse(live.hub.snapshot, headers=_NO_STORE)

    @app.post("/api/control")
    async def control(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        cmd = body.get("cmd") if isinstance(body, dict) else None
        if cmd not in ACTIONS:
            return JSONResponse(
                {"ok": False, "message": f"expected {{'cmd': one of {', '.join(ACTIONS)}}}"}, status_code=400
            )
        args: dict[str, Any] = {}
        if cmd == "cancel":
            oid = body.get("client_order_id")
            if not isinstance(oid, str) or not oid:
                return JSONResponse(
                    {"ok": False, "message": "cancel needs a client_order_id"}, status_code=400
                )
            args["client_order_id"] = oid
        try:
            answer = await asyncio.to_thread(send_command, live.control, cmd, timeout=CONTROL_TIMEOUT, **args)
        except ControlError as e:
            answer = {"ok": False, "message": str(e)}
        await live.hub.fresh()
        return JSONResponse(answer, headers=_NO_STORE)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(live.registry), media_type=CONTENT_TYPE_LATEST, headers=_NO_STORE)

    return TokenGate(app, tokens, cookie)
