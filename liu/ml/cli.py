"""`trader train SPEC` and `trader model list [NAME] | promote NAME VERSION`.

The database comes from the tradeplan (`--plan`, before or after the subcommand); with no DSN there the
embedded PostgreSQL is started for the command and stopped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from liu.errors import ConfigError
from liu.plan import load_plan
from liu.store import plan_database


def add_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model from its spec and register its ONNX file")
    train.add_argument("spec", type=Path, help="model spec (TOML)")
    train.add_argument(
        "--plan",
        type=Path,
        default=argparse.SUPPRESS,
        help="tradeplan (database; [broker] for the signal backtest)",
    )
    train.add_argument(
        "--threshold",
        type=float,
        help="signal backtest: long when P(up) >= this (classifier, default 0.5) or prediction > this (regressor, 0)",
    )
    train.add_argument(
        "--allocation", type=float, help="signal backtest: fraction of the plan's cash in play (default 1)"
    )
    train.add_argument("--no-backtest", action="store_true", help="skip the per-fold signal backtest")
    model = sub.add_parser("model", help="model registry commands")
    model.add_argument("action", choices=["list", "promote"])
    model.add_argument("name", nargs="?")
    model.add_argument("version", nargs="?", type=int)
    model.add_argument("--plan", type=Path, default=argparse.SUPPRESS, help="tradeplan (for the database)")


def _fmt(x) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.4f}"
    return str(x)


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.2f}"


def _window(start, end) -> str:
    """Test window, short enough to keep the table on one line: the end drops what it shares."""
    fmt = (
        "%H:%M"
        if end.date() == start.date()
        else "%m-%d %H:%M"
        if end.year == start.year
        else "%Y-%m-%d %H:%M"
    )
    return f"{start:%Y-%m-%d %H:%M}→{end.strftime(fmt)}"


BT_COLUMNS = (("signal %", "signal_return_pct"), ("trips", "round_trips"), ("B&H %", "buy_hold_return_pct"))


def fold_table(result) -> Table:
    """Per-fold metrics of a TrainResult as a rich table."""
    classify = result.classes is not None
    t = Table(title=f"{result.spec.name}: walk-forward folds ({result.rows} labelled rows)")
    for col in ("fold", "train rows", "test rows", "test window (UTC)"):
        t.add_column(col, justify="right" if "rows" in col or col == "fold" else "left")
    keys = ["accuracy", "roc_auc", "log_loss"] if classify else ["r2", "mae", "rmse"]
    for k in keys:
        t.add_column(k, justify="right")
    if classify:
        names = "/".join(str(c) for c in result.classes)
        t.add_column(f"precision {names}", justify="right")
        t.add_column(f"recall {names}", justify="right")
    bt = result.backtest is not None
    if bt:
        for col, _ in BT_COLUMNS:
            t.add_column(col, justify="right")
        t.caption = (
            f"signal: {result.backtest.describe(not classify)}, the plan's paper broker, filled at the next "
            "bar's open · B&H: equal weight, first open to last close"
        )
    extra = (2 if classify else 0) + (len(BT_COLUMNS) if bt else 0)
    for f in result.folds:
        m = f.metrics
        window = _window(f.test_start, f.test_end)
        row = [str(f.fold), str(f.train_rows), str(f.test_rows), window]
        if "skipped" in m:
            t.add_row(*row, *(["-"] * (len(keys) + extra)))
            continue
        row += [_fmt(m[k]) for k in keys]
        if classify:
            row.append(" ".join(f"{m['precision'][str(c)]:.2f}" for c in result.classes))
            row.append(" ".join(f"{m['recall'][str(c)]:.2f}" for c in result.classes))
        if bt:
            row += [_pct(m.get(k)) if k.endswith("_pct") else str(m.get(k, "-")) for _, k in BT_COLUMNS]
        t.add_row(*row)
    mean = result.summary_metrics()["mean"]
    t.add_section()
    tail = [""] * (2 if classify else 0)
    if bt:
        tail += [
            _pct(mean.get(k, math.nan)) if k.endswith("_pct") else f"{mean.get(k, math.nan):.1f}"
            for _, k in BT_COLUMNS
        ]
    t.add_row("mean", "", "", "", *[_fmt(mean.get(k, math.nan)) for k in keys], *tail)
    return t


def _settings(settings, args: argparse.Namespace):
    """The spec's [backtest] settings with the command line's overrides (checked like the spec's)."""
    from pydantic import ValidationError

    from liu.ml.spec import BacktestSettings

    update = {"enabled": False} if args.no_backtest else {}
    for key in ("threshold", "allocation"):
        if getattr(args, key) is not None:
            update[key] = getattr(args, key)
    try:
        return BacktestSettings.model_validate(settings.model_dump() | update)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"trader train --{key}: given {err.get('input')!r}, {err['msg'].lower()}") from None


def _train(args: argparse.Namespace, console: Console) -> int:
    from liu.ml.export import to_onnx
    from liu.ml.registry import Registry
    from liu.ml.spec import load_spec
    from liu.ml.train import backtest_settings, train_model

    spec = load_spec(args.spec)
    settings = _settings(backtest_settings(spec), args)
    plan = load_plan(args.plan)
    with plan_database(plan) as dsn:
        result = train_model(spec, dsn=dsn, console=console, broker=plan.broker, backtest=settings)
        console.print(fold_table(result))
        onnx_bytes = to_onnx(result.estimator, result.pipeline.width, result.onnx_metadata())
        registry = Registry(spec.registry_root, dsn)
        version = asyncio.run(
            registry.register(spec, onnx_bytes, result.summary_metrics(), result.metric_value)
        )
        rows = {r["version"]: r for r in asyncio.run(registry.list(spec.name))}
    metric = f"{result.metric_name} = {_fmt(result.metric_value)}"
    row = rows.get(version)
    if row is None:
        console.print(
            f"[yellow]{spec.name} v{version}[/] ({metric}) is not among the best {spec.registry.keep}: not kept"
        )
    else:
        best = "[green]best[/]" if row["is_best"] else "not best"
        serving = ", serving" if row["serving"] else ""
        console.print(
            f"registered [bold]{spec.name} v{version}[/] ({metric}): {best}{serving}  {row['path']}"
        )
    return 0


def _model(args: argparse.Namespace, console: Console) -> int:
    from liu.ml.registry import Registry

    if args.action == "promote" and (args.name is None or args.version is None):
        raise ConfigError("trader model promote: expected NAME VERSION")
    plan = load_plan(args.plan)
    with plan_database(plan) as dsn:
        registry = Registry(plan.path(".liu/models"), dsn)
        if args.action == "promote":
            asyncio.run(registry.promote(args.name, args.version))
            console.print(
                f"promoted [bold]{args.name} v{args.version}[/]: consumers switch to it at their next event"
            )
            return 0
        rows = asyncio.run(registry.list(args.name))
    t = Table(title="models" if args.name is None else f"model {args.name}")
    for col in (
        "name",
        "version",
        "metric",
        "value",
        "best",
        "serving",
        "promoted",
        "created",
        "width",
        "spec hash",
        "path",
    ):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["name"],
            str(r["version"]),
            r["metric_name"],
            _fmt(r["metric_value"]),
            "yes" if r["is_best"] else "",
            "yes" if r["serving"] else "",
            f"{r['promoted_at']:%Y-%m-%d %H:%M:%S}" if r["promoted_at"] else "",
            f"{r['created_at']:%Y-%m-%d %H:%M:%S}",
            str(r["input_width"]),
            r["spec_hash"][:12],
            r["path"],
        )
    console.print(t if rows else "no models registered" + (f" under {args.name!r}" if args.name else ""))
    return 0


def run_command(args: argparse.Namespace, console: Console) -> int:
    if args.command == "train":
        return _train(args, console)
    return _model(args, console)
