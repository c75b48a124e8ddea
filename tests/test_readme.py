"""README's Python examples run: each strategy in it trades in a backtest, each scanner picks symbols."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from liu.backtest import run_backtest
from liu.plan import parse_plan
from liu.scanner import ScanContext, Scanner, SymbolInfo
from liu.strategy import Strategy
from liu.testing import make_bars

README = Path(__file__).resolve().parent.parent / "README.md"


def _examples() -> dict[str, tuple[str, type]]:
    """Class name → (the code block's source, the class) for every class a README python block defines."""
    found = {}
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        for name in re.findall(r"^class (\w+)\(", block, re.M):
            found[name] = (block, namespace[name])
    return found


EXAMPLES = _examples()
STRATEGIES = [n for n, (_, cls) in EXAMPLES.items() if issubclass(cls, Strategy)]


def test_readme_has_its_examples():
    assert {"Dip", "Breakout"} <= set(STRATEGIES)
    assert issubclass(EXAMPLES["CheapLiquid"][1], Scanner)


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_example_trades_in_a_backtest(tmp_path, name):
    source, _ = EXAMPLES[name]
    (tmp_path / "example.py").write_text(source)
    text = f"""
[source]
bars = "stream"
[[strategies]]
name = "example"
file = "{tmp_path / "example.py"}"
class = "{name}"
"""
    plan = parse_plan(tomllib.loads(text), "tradeplan.toml", tmp_path)
    bars = make_bars("A", 3000, seed=7) + make_bars("B", 3000, seed=8, price=50.0)
    bars.sort(key=lambda b: (b[2], b[1]))
    result = run_backtest(plan, events=[bars])
    assert result.counts["strategy_errors"] == 0
    assert result.fills, f"README's {name} example never traded"


def test_scanner_example_picks_cheap_liquid_symbols():
    _, cls = EXAMPLES["CheapLiquid"]
    universe = {
        "A": SymbolInfo(price=50.0, avg_volume=1_000),
        "B": SymbolInfo(price=500.0, avg_volume=9_000),
        "C": SymbolInfo(price=20.0, avg_volume=5_000),
    }
    picks = cls("cheap", cls.Config(top=5)).scan(ScanContext(universe=universe, now=0))
    assert picks == ["C", "A"]
