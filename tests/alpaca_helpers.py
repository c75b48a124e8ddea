"""Test helpers for `trader` against liu's local exchange with Alpaca keys: the keys, the environment that
carries them, and `trader` as a subprocess whose output is read as it comes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

from tests.helpers import kill_tree, trader_command

KEY, SECRET = "PKLIUTESTKEY", "zq7-secret-never-printed-4471"


def env(secret: str | None = SECRET, key: str | None = KEY) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("APCA_")}
    if key is not None:
        e["APCA_API_KEY_ID"] = key
    if secret is not None:
        e["APCA_API_SECRET_KEY"] = secret
    return e


class Trader:
    """`trader` as a subprocess, its output read as it comes; the whole tree is killed on exit."""

    def __init__(self, tmp_path: Path, plan: str, *args: str, environ: dict[str, str] | None = None) -> None:
        (tmp_path / "tradeplan.toml").write_text(plan)
        self.summary = tmp_path / "summary.json"
        self.proc = subprocess.Popen(
            trader_command(
                "--plan", str(tmp_path / "tradeplan.toml"), "--summary-json", str(self.summary), *args
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=environ if environ is not None else env(),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _pump(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    @property
    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def wait(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
            raise AssertionError(
                f"trader did not finish within {timeout:g}s; it said:\n{self.text[-3000:]}"
            ) from None
        for t in self._readers:
            t.join(10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait()

    def json(self) -> dict:
        return json.loads(self.summary.read_text())
