"""The [dashboard] table: tokens checked without ever echoing them, no open /metrics on a non-local bind."""

from __future__ import annotations

import pytest

from liu.errors import ConfigError
from liu.plan import parse_plan

GOOD = "a-good-token-0123456789"


def test_defaults_listen_locally_on_a_free_port_with_a_new_token_each_start() -> None:
    d = parse_plan({}).dashboard
    assert (d.enabled, d.host, d.port, d.linger, d.local) == (True, "127.0.0.1", 0, 0.0, True)
    assert d.resolve_token() is None and d.resolve_metrics_token() is None


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"token": "short-secret-15"}, "token must be at least 16 characters"),
        ({"token": "spaces are not ok here at all"}, "letters, digits and -._~"),
        ({"token": GOOD, "token_env": "X"}, "give token or token_env, not both"),
        ({"metrics_token": "tiny-secret"}, "metrics_token must be at least 16"),
        (
            {"host": "0.0.0.0", "metrics_token": False},
            "/metrics without a token is allowed on a local bind only",
        ),
        ({"port": 70000}, "port: given 70000"),
    ],
)
def test_bad_tables_say_what_is_wrong_without_the_secret(table: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_plan({"dashboard": table}, source="tradeplan.toml")
    assert expected in str(e.value)
    assert str(e.value).startswith("tradeplan.toml: [dashboard]")
    for key in ("token", "metrics_token"):
        if isinstance(table.get(key), str):
            assert table[key] not in str(e.value)


def test_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    d = parse_plan({"dashboard": {"token_env": "LIU_T", "metrics_token_env": "LIU_M"}}).dashboard
    with pytest.raises(ConfigError, match="token_env='LIU_T': that environment variable is not set"):
        d.resolve_token()
    monkeypatch.setenv("LIU_T", "too-short")
    with pytest.raises(ConfigError) as e:
        d.resolve_token()
    assert "at least 16" in str(e.value) and "too-short" not in str(e.value)
    monkeypatch.setenv("LIU_T", GOOD)
    monkeypatch.setenv("LIU_M", GOOD + "-m")
    assert (d.resolve_token(), d.resolve_metrics_token()) == (GOOD, GOOD + "-m")


def test_a_printed_plan_hides_the_tokens() -> None:
    plan = parse_plan({"dashboard": {"token": GOOD, "metrics_token": GOOD + "-m", "host": "0.0.0.0"}})
    assert GOOD not in repr(plan) and GOOD not in str(plan.model_dump())
    assert plan.dashboard.resolve_token() == GOOD and not plan.dashboard.local
    assert parse_plan({"dashboard": {"metrics_token": False}}).dashboard.resolve_metrics_token() is False
