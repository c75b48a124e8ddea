"""The token on every dashboard request: 401 without it and with a wrong one, on every route the app has
(found from its route table, so a new route is covered the day it is added) and on paths it does not have."""

from __future__ import annotations

import asyncio

import pytest
import requests

from liu.brokers.account import HALT_NONE
from tests.dashboard.conftest import TOKEN, LiveParts

WRONG = "dashboard-test-token-0123456788"  # one character off


def _wrong_ways(cookie: str) -> list[tuple[str, dict]]:
    return [
        ("no token", {}),
        ("wrong ?token=", {"params": {"token": WRONG}}),
        ("prefix of the token", {"params": {"token": TOKEN[:-1]}}),
        ("empty ?token=", {"params": {"token": ""}}),
        ("wrong bearer", {"headers": {"Authorization": f"Bearer {WRONG}"}}),
        ("wrong cookie", {"cookies": {cookie: WRONG}}),
        ("token in another cookie", {"cookies": {"liu_dashboard_1": TOKEN}}),
        ("token as basic auth", {"auth": ("liu", TOKEN)}),
    ]


def _check_all(live: LiveParts) -> list[tuple[str, str]]:
    routes = live.routes()
    probes = [*routes, ("GET", "/nope"), ("GET", "/docs"), ("GET", "/openapi.json"), ("POST", "/metrics")]
    for method, path in probes:
        for how, kw in _wrong_ways(live.cookie):
            r = requests.request(method, live.base + path, allow_redirects=False, timeout=10, **kw)
            assert r.status_code == 401, f"{method} {path} with {how}: {r.status_code}"
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in r.text
    return routes


async def test_every_endpoint_answers_401_without_the_token_or_with_a_wrong_one(live: LiveParts) -> None:
    routes = await asyncio.to_thread(_check_all, live)
    expected = {
        ("GET", "/"),
        ("GET", "/events"),
        ("GET", "/api/state"),
        ("POST", "/api/control"),
        ("GET", "/batches"),
        ("GET", f"/batches/{live.session.batch_id}"),
        ("GET", "/static/dashboard.js"),
        ("GET", "/metrics"),
    }
    assert expected <= set(routes)
    assert live.account.halted == HALT_NONE  # no action got through

    def right_token() -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for method, path in routes:
            if path == "/events":
                continue  # a stream: test_live.py reads it
            r = requests.request(method, live.base + path, headers=auth, json={}, timeout=30)
            assert r.status_code != 401, f"{method} {path}: 401 with the right token"

    await asyncio.to_thread(right_token)


async def test_the_printed_address_logs_in_once_and_leaves_no_token_in_the_page(live: LiveParts) -> None:
    assert live.printed.count(TOKEN) == 1
    assert f"{live.base}/?token={TOKEN}" in live.printed

    def visit() -> None:
        first = requests.get(f"{live.base}/?token={TOKEN}&view=1", allow_redirects=False, timeout=10)
        assert first.status_code == 303
        assert first.headers["location"] == "/?view=1"  # the token leaves the address bar
        cookie = first.headers["set-cookie"]
        assert cookie.startswith(f"{live.cookie}={TOKEN};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        page = requests.get(live.base + "/", cookies={live.cookie: TOKEN}, timeout=10)
        assert page.status_code == 200
        assert "Halt" in page.text and live.session.batch_id in page.text
        assert TOKEN not in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"

    await asyncio.to_thread(visit)


async def test_actions_from_another_origin_are_refused(live: LiveParts) -> None:
    def post(origin: str) -> requests.Response:
        return requests.post(
            live.base + "/api/control",
            json={"cmd": "halt"},
            headers={"Authorization": f"Bearer {TOKEN}", "Origin": origin},
            timeout=10,
        )

    refused = await asyncio.to_thread(post, "http://evil.example")
    assert refused.status_code == 403
    assert live.account.halted == HALT_NONE
    allowed = await asyncio.to_thread(post, live.base)
    assert allowed.status_code == 200 and allowed.json()["ok"]
    assert live.account.halted != HALT_NONE


METRICS_TOKEN = "metrics-test-token-abcdefghij"


@pytest.mark.parametrize("live", [{"metrics_token": METRICS_TOKEN}], indirect=True)
async def test_metrics_has_its_own_token_when_set(live: LiveParts) -> None:
    def check() -> None:
        get = requests.get
        own = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        assert get(live.base + "/metrics", headers=own, timeout=10).status_code == 200
        assert get(live.base + "/metrics", params={"token": METRICS_TOKEN}, timeout=10).status_code == 200
        assert get(live.base + "/metrics", params={"token": TOKEN}, timeout=10).status_code == 200
        assert get(live.base + "/", headers=own, timeout=10).status_code == 401  # only /metrics
        assert get(live.base + "/api/state", headers=own, timeout=10).status_code == 401
        assert get(live.base + "/metrics", params={"token": WRONG}, timeout=10).status_code == 401

    await asyncio.to_thread(check)
    assert METRICS_TOKEN not in live.printed


@pytest.mark.parametrize("live", [{"metrics_token": False}], indirect=True)
async def test_metrics_token_false_opens_metrics_only(live: LiveParts) -> None:
    def check() -> None:
        assert requests.get(live.base + "/metrics", timeout=10).status_code == 200
        assert requests.get(live.base + "/", timeout=10).status_code == 401
        assert requests.get(live.base + "/api/state", timeout=10).status_code == 401

    await asyncio.to_thread(check)


@pytest.mark.parametrize("live", [{"host": "127.0.0.2"}], indirect=True)
async def test_a_non_local_bind_says_so_at_start_and_still_needs_the_token(live: LiveParts) -> None:
    assert live.base.startswith("http://127.0.0.2:")
    assert "not only this machine: every request needs the token" in live.printed

    def check() -> None:
        assert requests.get(live.base + "/api/state", timeout=10).status_code == 401
        assert requests.get(live.base + "/api/state", params={"token": TOKEN}, timeout=10).status_code == 200

    await asyncio.to_thread(check)
