"""The token gate in front of every dashboard request (pages, events, actions, static files, /metrics).

A request passes when it presents the token in one of three ways, each compared in constant time:
`?token=…` (the address `trader` prints), `Authorization: Bearer …` (scripts, Prometheus), or the
cookie the first visit gets. A page opened with `?token=` is answered with that cookie (HttpOnly,
SameSite=Strict) and a redirect to the same address without the token, so the token does not stay in
the address bar, the history or the page. Anything else gets 401, whatever the path, so a wrong token
learns nothing about what exists. `/metrics` also takes its own token when `[dashboard] metrics_token`
sets one, or none when it is `false`.

Actions (POST) are refused when the browser says they come from another origin: with SameSite=Strict
the cookie is not sent across sites anyway; this is the second lock.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

METRICS_PATH = "/metrics"


def new_token() -> str:
    """A fresh random token (256 bits), for a start without `[dashboard] token`."""
    return secrets.token_urlsafe(32)


def same(given: str, expected: str) -> bool:
    """Constant-time comparison (the time does not tell how much of a guess was right)."""
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Tokens:
    """The dashboard's token, and /metrics' own (a token, False for none, None for the dashboard's)."""

    dashboard: str
    metrics: str | Literal[False] | None = None

    def __repr__(self) -> str:  # never print a token by accident
        return "Tokens(***)"


class TokenGate:
    """ASGI middleware: 401 unless the request carries a valid token; see the module docstring."""

    def __init__(self, app: ASGIApp, tokens: Tokens, cookie: str) -> None:
        self.app = app
        self.tokens = tokens
        self.cookie = cookie

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # the dashboard has no websocket
            await send({"type": "websocket.close", "code": 1008})
            return
        path = scope.get("path", "")
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        from_query = [v for k, v in query if k == "token"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = [*from_query, *self._bearer(headers), *self._cookie(headers)]
        expected = [self.tokens.dashboard]
        if path == METRICS_PATH:
            if self.tokens.metrics is False:
                expected = []
            elif self.tokens.metrics:
                expected.append(self.tokens.metrics)
        # Every candidate is compared with every token: no early exit that timing could reveal.
        ok = not expected or any([same(g, t) for g in given for t in expected])  # noqa: C419
        if not ok:
            await _plain(send, 401, "401: this dashboard needs its token: open the address trader printed")
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD") and not _same_origin(headers):
            await _plain(send, 403, "403: actions come from the dashboard's own page only")
            return
        if from_query and method == "GET" and path != METRICS_PATH:
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            await self._login(send, path + (f"?{rest}" if rest else ""), from_query[-1])
            return
        await self.app(scope, receive, _with_headers(send))

    @staticmethod
    def _bearer(headers: dict[str, str]) -> list[str]:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return [value.strip()] if scheme.lower() == "bearer" and value.strip() else []

    def _cookie(self, headers: dict[str, str]) -> list[str]:
        raw = headers.get("cookie")
        if not raw:
            return []
        jar = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return []
        return [jar[self.cookie].value] if self.cookie in jar else []

    async def _login(self, send: Callable, location: str, token: str) -> None:
        cookie = f"{self.cookie}={token}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode("latin-1")),
                    (b"cache-control", b"no-store"),
                    (b"content-length", b"0"),
                    *_SECURITY,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


_SECURITY = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def _with_headers(send: Callable) -> Callable:
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *_SECURITY]}
        await send(message)

    return wrapped


def _same_origin(headers: dict[str, str]) -> bool:
    origin = headers.get("origin")
    return origin is None or origin in (
        f"http://{headers.get('host', '')}",
        f"https://{headers.get('host', '')}",
    )


async def _plain(send: Callable, status: int, text: str) -> None:
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *_SECURITY,
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="liu dashboard"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
