from pathlib import Path

import pytest

from liu.errors import ConfigError
from liu.plan import load_plan, parse_plan

REPO = Path(__file__).resolve().parent.parent


def test_shipped_tradeplan_is_valid():
    plan = load_plan(REPO / "tradeplan.toml")
    assert plan.source.kind == "sim"
    assert plan.strategies[0].label == "sma_cross"
    assert plan.scanners[0].target_strategies == ["sma_cross"]
    assert plan.session.duration > 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"source": {"ratee": 5}}, "[source] unknown key 'ratee'"),
        ({"source": {"rate": "fast"}}, "[source] rate: given 'fast', expected a valid number"),
        ({"session": {"duration": "5 parsecs"}}, "[session] duration: given '5 parsecs'"),
        ({"consumers": {"count": 0}}, "count=0 must be >= 1"),
        ({"source": {"kind": "replay"}}, "kind='replay' needs path"),
        ({"broker": {"cash": -1}}, "[broker] cash: given -1"),
        ({"strategies": [{"file": "a.py"}]}, "[strategies.0] missing key 'class'"),
        (
            {"scanners": [{"file": "s.py", "class": "S", "target_strategies": ["nope"]}]},
            "targets strategy 'nope'",
        ),
        ({"risk": {"max_order_notionl": 1}}, "[risk] unknown key 'max_order_notionl'"),
        ({"risk": {"max_order_notional": 0}}, "[risk] max_order_notional: given 0, expected greater than 0"),
        ({"risk": {"max_position_notional": -5}}, "[risk] max_position_notional: given -5"),
        (
            {"risk": {"max_gross_exposure": "lots"}},
            "[risk] max_gross_exposure: given 'lots', expected a valid number",
        ),
        ({"risk": {"max_open_orders": 2.5}}, "[risk] max_open_orders: given 2.5, expected a valid integer"),
        (
            {"risk": {"max_open_orders": True}},
            "[risk] max_open_orders: given True, expected a positive number",
        ),
        ({"risk": {"max_orders_per_minute": 0}}, "[risk] max_orders_per_minute: given 0"),
        ({"risk": {"price_band_bps": -1}}, "[risk] price_band_bps: given -1"),
        ({"risk": {"max_daily_loss": -5000}}, "[risk] max_daily_loss: given -5000, expected greater than 0"),
        ({"risk": {"on_breach": "panic"}}, "[risk] on_breach: given 'panic', expected 'halt' or 'flatten'"),
        (
            {"broker": {"max_participation": 0}},
            "[broker] max_participation: given 0, expected greater than 0",
        ),
        (
            {"broker": {"max_participation": 1.5}},
            "[broker] max_participation: given 1.5, expected less than or equal",
        ),
        ({"broker": {"max_participation": True}}, "[broker] max_participation: given True"),
    ],
)
def test_bad_plan_gives_one_clear_message(raw, expected):
    with pytest.raises(ConfigError) as err:
        parse_plan(raw, source="tp.toml")
    assert expected in str(err.value)
    assert str(err.value).startswith("tp.toml: ")
    assert "\n" not in str(err.value)


def test_risk_limits_default_to_none_and_parse_when_given():
    plan = parse_plan({})
    assert plan.risk.model_dump() == {
        "max_order_notional": None,
        "max_position_notional": None,
        "max_gross_exposure": None,
        "max_open_orders": None,
        "max_orders_per_minute": None,
        "price_band_bps": None,
        "max_daily_loss": None,
        "on_breach": "halt",
    }
    assert plan.broker.max_participation is None
    raw = {
        "risk": {
            "max_order_notional": 10_000,
            "max_open_orders": 5,
            "max_orders_per_minute": 30,
            "price_band_bps": 250,
            "max_daily_loss": 2_500.5,
            "on_breach": "flatten",
        },
        "broker": {"max_participation": 1},
    }
    plan = parse_plan(raw)
    assert (plan.risk.max_order_notional, plan.risk.max_open_orders, plan.risk.on_breach) == (
        10_000.0,
        5,
        "flatten",
    )
    assert (plan.risk.max_daily_loss, plan.risk.max_position_notional) == (2_500.5, None)
    assert plan.broker.max_participation == 1.0


def test_durations_accept_units():
    plan = parse_plan({"session": {"duration": "2m"}, "consumers": {"stale_after": "250ms"}})
    assert plan.session.duration == 120.0
    assert plan.consumers.stale_after == 0.25


def test_dsn_env_must_be_set(monkeypatch):
    monkeypatch.delenv("LIU_TEST_DSN", raising=False)
    plan = parse_plan({"database": {"dsn_env": "LIU_TEST_DSN"}})
    with pytest.raises(ConfigError, match="LIU_TEST_DSN"):
        plan.database.resolve_dsn()
    monkeypatch.setenv("LIU_TEST_DSN", "postgresql://x@h/db")
    assert plan.database.resolve_dsn() == "postgresql://x@h/db"


def test_invalid_toml_names_the_file(tmp_path):
    p = tmp_path / "tp.toml"
    p.write_text("[session\nduration=1")
    with pytest.raises(ConfigError, match=r"tp.toml: not valid TOML"):
        load_plan(p)


def _model_plan(tmp_path, *models_per_strategy):
    (tmp_path / "m.toml").write_text("name = 'm'\n")
    return {
        "strategies": [
            {"name": f"s{i}", "file": "a.py", "class": "A", "models": models}
            for i, models in enumerate(models_per_strategy)
        ]
    }


def test_strategy_models_resolve_relative_to_the_plan(tmp_path):
    raw = _model_plan(
        tmp_path, [{"spec": "m.toml"}, {"spec": str(tmp_path / "m2.toml"), "version": 3, "weight": 0.5}]
    )
    (tmp_path / "m2.toml").write_text("name = 'm2'\n")
    plan = parse_plan(raw, source="tp.toml", base_dir=tmp_path)
    a, b = plan.strategies[0].models
    assert (a.version, a.weight, plan.path(a.spec)) == (None, 1.0, tmp_path / "m.toml")
    assert (b.version, b.weight) == (3, 0.5)


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ([[{"spec": "m.toml", "versoin": 2}]], "[strategies.0.models.0] unknown key 'versoin'"),
        ([[{"spec": "m.toml", "version": 0}]], "[strategies.0.models.0] version: given 0"),
        ([[{"spec": "m.toml", "weight": -1}]], "[strategies.0.models.0] weight: given -1"),
        ([[{"spec": "nope.toml"}]], "strategies.0.models.0: spec file"),
        ([[{"spec": "m.toml"}, {"spec": "m.toml"}]], "spec 'm.toml' is listed twice"),
        (
            [[{"spec": "m.toml"}], [{"spec": "m.toml", "version": 2}]],
            "strategy 's1' uses m.toml at version 2",
        ),
    ],
)
def test_bad_model_entries_give_one_clear_message(tmp_path, models, expected):
    with pytest.raises(ConfigError) as err:
        parse_plan(_model_plan(tmp_path, *models), source="tp.toml", base_dir=tmp_path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
