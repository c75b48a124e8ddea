"""`trader train` and `trader model` (placeholder until the ML path lands)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from liu.errors import LiuError


def add_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model from its spec and register its ONNX file")
    train.add_argument("spec", type=Path, help="model spec (TOML)")
    model = sub.add_parser("model", help="model registry commands")
    model.add_argument("action", choices=["list", "promote"])
    model.add_argument("name", nargs="?")
    model.add_argument("version", nargs="?", type=int)


def run_command(args: argparse.Namespace, console: Console) -> int:
    raise LiuError(f"`trader {args.command}` is not available yet")
