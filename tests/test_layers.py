"""Import layering of `liu/`: no module imports a module above its layer, and no module imports itself back.

Layers, bottom to top (a module may import its own layer and below):

1. events, messages, hooks, clock, transport, stats, errors: what every part shares; no logic above it.
2. brokers, features, bars, plan, sources, store, plugins: building blocks, each usable on its own.
3. strategy, scanner, runner, orders, risk, producer, consumer: one process's event path.
4. daemon, backtest, engine, cli, control, progress (and the test kit): what wires the parts together.

`ml` and `analysis` sit on the side: they may import layers 1-3 and each other, and only layer 4 imports
them, so the core never pays for (or depends on) onnxruntime, scikit-learn or pandas. The ML commands
(`ml.cli`, `ml.train`, `ml.signal_backtest`) drive the backtester, so they are layer 4 themselves.

Every import counts: module level, inside functions, and under `TYPE_CHECKING` (a type-only import is
still a dependency on that layer). A module missing from `LAYERS` fails too, so a new module gets a
layer when it is written.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "liu"
SIDE = 0  # the `ml` / `analysis` packages: importable from layer 4 only, may import layers 1-3
TOP = 4

# Module (or package) → layer; the longest matching prefix wins.
LAYERS: dict[str, int] = {
    "liu": 1,  # the package itself (empty)
    "liu.events": 1,
    "liu.messages": 1,
    "liu.hooks": 1,
    "liu.clock": 1,
    "liu.transport": 1,
    "liu.stats": 1,
    "liu.errors": 1,
    "liu.commands": 1,  # main → consumer requests beyond Start/Assign/Stop (cancel one order), answers
    "liu.logs": 1,  # the logging queue: children's records printed by the main process
    "liu.shard": 1,  # symbol → consumer (shard_of), shared by the producer and the Alpaca gateway
    "liu.brokers": 2,
    "liu.features": 2,
    "liu.bars": 2,
    "liu.plan": 2,
    "liu.sources": 2,
    "liu.store": 2,
    "liu.plugins": 2,
    "liu.ticks": 2,
    "liu.corporate": 2,
    "liu.strategy": 3,
    "liu.scanner": 3,
    "liu.runner": 3,
    "liu.risk": 3,
    "liu.orders": 3,
    "liu.producer": 3,
    "liu.consumer": 3,
    "liu.daemon": 4,
    "liu.alerts": 4,  # the session's alerts: wired by the daemon
    "liu.market": 4,  # Alpaca as the source, main-process side: keys, universe, calendar session, warm-up size
    "liu.backtest": 4,
    "liu.engine": 4,
    "liu.cli": 4,
    "liu.control": 4,
    "liu.progress": 4,
    "liu.cancel": 4,  # the control channel's cancel, routed to the consumer owning the order
    "liu.dashboard": 4,  # the web dashboard and /metrics (FastAPI, uvicorn, prometheus-client)
    "liu.testing": 4,  # the test kit for strategy authors: nothing in liu imports it
    "liu.watchdog": 4,  # the daemon's watchdog process: nothing outlives the daemon
    "liu.ml": SIDE,
    "liu.ml.cli": 4,
    "liu.ml.train": 4,
    "liu.ml.signal_backtest": 4,
    "liu.analysis": SIDE,
}

# Known upward imports in files their owner still has to change: (importer, imported) → why it is here.
# An entry that no longer occurs fails the test, so this list only shrinks.
ALLOWED: dict[tuple[str, str], str] = {}
# Known cycles (each as the sorted tuple of its modules) → why it is here; same rule as ALLOWED.
ALLOWED_CYCLES: dict[tuple[str, ...], str] = {}


def layer_name(layer: int) -> str:
    return "side (ml/analysis)" if layer == SIDE else str(layer)


def layer_of(module: str) -> int | None:
    """The layer of `module` by its longest prefix in LAYERS; None when it has none."""
    if module == "liu":
        return LAYERS["liu"]
    parts = module.split(".")
    for n in range(len(parts), 1, -1):  # not "liu" itself: a new module has no layer until given one
        layer = LAYERS.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    return None


def allowed(importer: int, imported: int) -> bool:
    if importer == SIDE:
        return imported == SIDE or imported < TOP
    if imported == SIDE:
        return importer == TOP
    return imported <= importer


# -- reading the source ---------------------------------------------------------------------------


def source_modules(root: Path = ROOT) -> dict[str, str]:
    """Every module under `root` (a package directory named liu) → its source."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path.read_text()
    return out


def _is_package(module: str, modules: Mapping[str, str]) -> bool:
    prefix = module + "."
    return any(m.startswith(prefix) for m in modules)


def imports_of(module: str, source: str, modules: Mapping[str, str]) -> Iterator[tuple[str, int]]:
    """(imported liu module, line) for every import in `source`, wherever it is in the file.

    `from liu.x import y` names the module liu.x.y when that is a module, else liu.x.
    Relative imports are resolved against `module` (whose package is itself when it is a package).
    """
    package = module if _is_package(module, modules) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "liu" or alias.name.startswith("liu."):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if not (base == "liu" or base.startswith("liu.")):
                continue
            targets = {f"{base}.{a.name}" for a in node.names}
            for target in sorted({t if t in modules else base for t in targets}):
                yield target, node.lineno


def upward_imports(modules: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(importer, imported, message) for each import that breaks the layering (or has no layer)."""
    out = []
    for module, source in modules.items():
        mine = layer_of(module)
        if mine is None:
            out.append((module, "", f"{module} has no layer: add it to LAYERS in tests/test_layers.py"))
            continue
        for target, line in imports_of(module, source, modules):
            theirs = layer_of(target)
            if theirs is None:
                out.append((module, target, f"{module} imports {target} (line {line}), which has no layer"))
            elif not allowed(mine, theirs):
                out.append(
                    (
                        module,
                        target,
                        f"{module} (layer {layer_name(mine)}) imports {target} "
                        f"(layer {layer_name(theirs)}) at line {line}",
                    )
                )
    return out


def import_cycles(modules: Mapping[str, str]) -> list[tuple[str, ...]]:
    """Groups of modules that import each other, directly or through others (Tarjan's SCCs)."""
    graph = {
        m: sorted({t for t, _ in imports_of(m, s, modules) if t in modules and t != m})
        for m, s in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(tuple(sorted(group)))

    for m in graph:
        if m not in index:
            visit(m)
    return sorted(out)


# -- the checks on liu/ ---------------------------------------------------------------------------


def test_no_module_imports_above_its_layer() -> None:
    found = upward_imports(source_modules())
    bad = [msg for importer, imported, msg in found if (importer, imported) not in ALLOWED]
    assert not bad, "upward imports:\n  " + "\n  ".join(bad)
    stale = set(ALLOWED) - {(importer, imported) for importer, imported, _ in found}
    assert not stale, (
        f"allowed upward imports that no longer occur (remove them from ALLOWED): {sorted(stale)}"
    )


def test_no_import_cycles() -> None:
    found = import_cycles(source_modules())
    bad = [c for c in found if c not in ALLOWED_CYCLES]
    assert not bad, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in bad)
    stale = set(ALLOWED_CYCLES) - set(found)
    assert not stale, (
        f"allowed cycles that no longer occur (remove them from ALLOWED_CYCLES): {sorted(stale)}"
    )


def test_every_layer_entry_names_a_module() -> None:
    modules = source_modules()
    missing = [m for m in LAYERS if m not in modules and not _is_package(m, modules)]
    assert not missing, f"LAYERS names modules that do not exist: {missing}"


# -- the checker itself can fail ------------------------------------------------------------------


def test_an_upward_import_is_named_with_both_layers() -> None:
    modules = {
        "liu": "",
        "liu.events": "from liu.runner import StrategyRunner\n",
        "liu.runner": "from liu.events import Bar\n",
    }
    assert upward_imports(modules) == [
        ("liu.events", "liu.runner", "liu.events (layer 1) imports liu.runner (layer 3) at line 1")
    ]


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n    from liu.ml.inference import scorer_of\n",  # inside a function
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from liu.ml.inference import ModelScorer\n",
        "import liu.ml.inference as inf\n",
        "from liu.ml import inference\n",  # the submodule, not the package
        "from .ml import inference\n",  # relative
    ],
)
def test_the_core_importing_ml_fails_however_it_is_written(source: str) -> None:
    modules = {"liu": "", "liu.consumer": source, "liu.ml": "", "liu.ml.inference": ""}
    found = upward_imports(modules)
    assert [(a, b) for a, b, _ in found] == [("liu.consumer", "liu.ml.inference")]
    assert "liu.consumer (layer 3) imports liu.ml.inference (layer side (ml/analysis))" in found[0][2]


def test_side_packages_are_imported_only_from_the_top_and_import_only_the_core() -> None:
    modules = {
        "liu": "",
        "liu.engine": "from liu.ml.inference import attach_models\n",  # top → side: fine
        "liu.ml": "",
        "liu.ml.inference": "from liu.events import Bar\nfrom liu.analysis import trades\n",  # fine
        "liu.ml.spec": "from liu.backtest import run_backtest\n",  # side → top: no
        "liu.analysis": "",
        "liu.analysis.trades": "",
        "liu.backtest": "",
        "liu.events": "",
    }
    assert [(a, b) for a, b, _ in upward_imports(modules)] == [("liu.ml.spec", "liu.backtest")]


def test_a_module_without_a_layer_fails() -> None:
    found = upward_imports({"liu": "", "liu.newthing": "from liu.nowhere import x\n"})
    assert [m for _, _, m in found] == [
        "liu.newthing has no layer: add it to LAYERS in tests/test_layers.py",
    ]
    found = upward_imports({"liu": "", "liu.events": "from liu.nowhere import x\n"})
    assert [m for _, _, m in found] == ["liu.events imports liu.nowhere (line 1), which has no layer"]


def test_a_cycle_is_found_even_through_a_function_level_import() -> None:
    modules = {
        "liu": "",
        "liu.backtest": "from liu.engine import build_runner\n",
        "liu.engine": "def f():\n    from liu.ml import signal_backtest\n",
        "liu.ml": "",
        "liu.ml.signal_backtest": "def g():\n    from liu.backtest import run_backtest\n",
        "liu.events": "",
    }
    assert import_cycles(modules) == [("liu.backtest", "liu.engine", "liu.ml.signal_backtest")]


def test_no_test_file_imports_another_test_file() -> None:
    """Shared test helpers live in conftest.py or a helper module: a test file imported by another runs its
    module-level code twice and ties the two files' fixtures together."""
    tests = ROOT.parent / "tests"
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            found += [
                f"{path.relative_to(tests.parent)} imports {n}"
                for n in names
                if n.startswith("tests") and n.rsplit(".", 1)[-1].startswith("test_")
            ]
    assert found == []
