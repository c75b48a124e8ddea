"""The control channel: a real ControlServer on a real Unix socket, a real shared Account, the real CLI."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pytest

from liu.brokers.account import HALT_MANUAL, HALT_NONE, HALT_RISK, Account
from liu.cli import main
from liu.control import AccountControl, ControlError, ControlServer, control_path, send_command
from liu.plan import load_plan

TRADER = Path(sys.executable).parent / "trader"
HALTED = "halted: orders that open or grow a position are refused; reducing orders pass"


@pytest.fixture
def account() -> Account:
    """Shared like the daemon's: 100k cash, two consumer slots with 6k gross, 4k net, 3 open orders."""
    acc = Account(100_000.0, shared=True, ctx=mp.get_context("spawn"), slots=2)
    acc.publish(0, 5_000.0, 5_000.0, 2)
    acc.publish(1, -1_000.0, 1_000.0, 1)
    return acc


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "control.sock"


@contextmanager
def serving(path: Path, handler) -> Iterator[ControlServer]:
    """Run a ControlServer on its own event loop in a thread (as the daemon's main process would)."""
    box: dict = {}
    ready = threading.Event()

    async def run() -> None:
        server = box["server"] = ControlServer(path, handler)
        try:
            await server.start()
        except BaseException as e:
            box["error"] = e
            ready.set()
            return
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await box["stop"].wait()
        await server.close()

    t = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    t.start()
    assert ready.wait(10), "control server did not start"
    if "error" in box:
        t.join()
        raise box["error"]
    try:
        yield box["server"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        t.join(10)
        assert not t.is_alive(), "control server did not stop"


# -- the commands, over the socket ---------------------------------------------------------------------------
def test_halt_sets_a_manual_halt_and_says_what_it_did(sock, account):
    with serving(sock, AccountControl(account)):
        answer = send_command(sock, "halt")
        assert account.halted == HALT_MANUAL
        again = send_command(sock, "halt")
    assert answer["ok"] is True and answer["changed"] is True
    assert answer["message"] == f"{HALTED} (equity 104,000.00, 3 open orders)"
    assert answer["halted"] is True and answer["halt_reason"] == "manual"
    assert again["ok"] is True and again["changed"] is False
    assert again["message"] == "already halted (manual); nothing changed"


def test_halt_keeps_a_risk_halt_and_names_it(sock, account):
    account.halt(HALT_RISK)
    with serving(sock, AccountControl(account)):
        answer = send_command(sock, "halt")
    assert answer["message"] == "already halted (risk); nothing changed"
    assert account.halted == HALT_RISK


def test_resume_lifts_the_halt(sock, account):
    account.halt(HALT_RISK)
    with serving(sock, AccountControl(account)):
        answer = send_command(sock, "resume")
        assert account.halted == HALT_NONE
        again = send_command(sock, "resume")
    assert answer["ok"] is True
    assert answer["message"] == (
        "resumed: the risk halt is lifted; strategies may open positions again (equity 104,000.00, 3 open orders)"
    )
    assert answer["halted"] is False
    assert again["message"] == "not halted; nothing to resume" and again["changed"] is False


def test_flatten_halts_first_then_asks_every_consumer_to_flatten(sock, account):
    with serving(sock, AccountControl(account)):
        first = send_command(sock, "flatten")
        assert (account.halted, account.flatten_generation) == (HALT_MANUAL, 1)
        second = send_command(sock, "flatten")
        assert account.flatten_generation == 2
    assert first["ok"] is True and first["flatten_generation"] == 1
    assert first["message"] == (
        "flattening: halted; every consumer cancels its open orders and closes its positions at market "
        "(flatten #1; gross exposure 6,000.00, 3 open orders); `trader resume` lets strategies trade again"
    )
    assert second["message"].startswith("flattening: already halted (manual); every consumer cancels")
    assert "(flatten #2;" in second["message"]


def test_status_is_the_account_view(sock, account):
    with serving(sock, AccountControl(account)):
        trading = send_command(sock, "status")
        account.halt(HALT_MANUAL)
        halted = send_command(sock, "status")
    view = asdict(account.view())
    assert {k: halted[k] for k in view} == view
    assert (halted["open_orders"], halted["flatten_generation"]) == (3, 0)
    assert trading["message"] == (
        "trading: equity 104,000.00, cash 100,000.00, buying power 100,000.00, gross exposure 6,000.00, "
        "day P&L +4,000.00, 3 open orders"
    )
    assert halted["message"].startswith("halted (manual): equity 104,000.00,")
    assert account.flatten_generation == 0  # status changes nothing


def _consumer(account: Account, conn) -> None:
    conn.recv()
    conn.send((account.halted, account.flatten_generation))


def test_a_flatten_reaches_a_consumer_process(sock, account):
    """The halt flag and flatten generation are what consumers read: another process sees them."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_consumer, args=(account, child))
    proc.start()
    try:
        with serving(sock, AccountControl(account)):
            assert send_command(sock, "flatten")["ok"]
        parent.send("read")
        assert parent.poll(30), "consumer process did not answer"
        assert parent.recv() == (HALT_MANUAL, 1)
    finally:
        proc.join(10)
        if proc.exitcode is None:
            proc.kill()


def test_cancel_is_not_supported_without_a_callback(sock, account):
    with serving(sock, AccountControl(account)):
        answer = send_command(sock, "cancel", client_order_id="o-17")
        missing = send_command(sock, "cancel")
    assert answer["ok"] is False
    assert answer["message"] == "cancel: not supported yet (order o-17 untouched)"
    assert missing == {"ok": False, "message": "cancel needs a client_order_id"}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_cancel_goes_to_the_callback_which_answers(sock, account, kind):
    asked: list[str] = []

    def sync_cancel(coid: str) -> dict:
        asked.append(coid)
        return {"ok": True, "message": f"cancel requested for {coid}"}

    async def async_cancel(coid: str) -> dict:
        return sync_cancel(coid)

    handler = AccountControl(account, cancel=sync_cancel if kind == "sync" else async_cancel)
    with serving(sock, handler):
        answer = send_command(sock, "cancel", client_order_id="o-17")
    assert asked == ["o-17"]
    assert answer["ok"] is True and answer["message"] == "cancel requested for o-17"
    assert answer["open_orders"] == 3


def test_bad_requests_are_answered_and_the_connection_stays_usable(sock, account):
    with serving(sock, AccountControl(account)), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(b'nonsense\n[1, 2]\n{"cmd": "fly"}\n{"cmd": "halt"}\n')
        f = s.makefile("rb")
        answers = [json.loads(f.readline()) for _ in range(4)]
    assert [a["ok"] for a in answers] == [False, False, False, True]
    assert answers[0]["message"] == "bad request: not JSON"
    assert answers[1]["message"] == 'bad request: expected {"cmd": "<command>", ...}'
    assert answers[2]["message"] == (
        "unknown command 'fly'; expected one of halt, resume, flatten, status, cancel"
    )
    assert account.halted == HALT_MANUAL


def test_a_failing_handler_answers_and_the_server_keeps_serving(sock, account):
    calls = []

    async def handler(request: dict) -> dict:
        calls.append(request["cmd"])
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {"ok": True, "message": "fine"}

    with serving(sock, handler):
        failed = send_command(sock, "status")
        fine = send_command(sock, "status")
    assert failed == {"ok": False, "message": "status failed: RuntimeError: boom"}
    assert fine["message"] == "fine"


def test_requests_before_the_handler_is_set_are_told_to_wait(sock, account):
    with serving(sock, None) as server:
        early = send_command(sock, "halt")
        assert account.halted == HALT_NONE
        server.handler = AccountControl(account)
        late = send_command(sock, "halt")
    assert early == {"ok": False, "message": "the trader is still starting; try again in a moment"}
    assert late["ok"] is True and account.halted == HALT_MANUAL


# -- the socket file ---------------------------------------------------------------------------------------
def test_the_socket_is_private_and_removed_on_close(sock, account):
    with serving(sock, AccountControl(account)):
        mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert not sock.exists()
    with pytest.raises(ControlError, match="^no running trader: nothing listens on "):
        send_command(sock, "status")


async def test_close_drops_idle_connections_and_spares_a_replaced_socket(sock, account):
    server = ControlServer(sock, AccountControl(account))
    await server.start()
    reader, writer = await asyncio.open_unix_connection(str(sock))  # an idle dashboard, say
    sock.unlink()
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(sock))  # another daemon's socket now sits at the path
    try:
        await asyncio.wait_for(server.close(), 10)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)  # not ours: left in place
    finally:
        writer.close()
        other.close()


async def test_a_second_server_on_a_live_socket_is_refused(sock, account):
    with serving(sock, AccountControl(account)):
        with pytest.raises(ControlError) as refused:
            await ControlServer(sock, AccountControl(account)).start()
        assert sock.exists()
        assert send_command(sock, "halt")["ok"] is True  # the first still serves
    assert "another trader is running on this plan: it answers on" in str(refused.value)
    assert str(refused.value).endswith("stop it first, or give this plan another [database] data_dir")
    assert account.halted == HALT_MANUAL


def test_a_stale_socket_file_is_replaced(sock, account):
    crashed = socket.socket(socket.AF_UNIX)
    crashed.bind(str(sock))  # bound, then gone without unlinking: what a crashed daemon leaves
    crashed.close()
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    with pytest.raises(ControlError, match="^no running trader"):
        send_command(sock, "status")
    with serving(sock, AccountControl(account)):
        assert send_command(sock, "halt")["ok"] is True
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert account.halted == HALT_MANUAL


async def test_a_file_that_is_not_a_socket_is_left_alone(sock, account):
    sock.write_text("keep me")
    with pytest.raises(ControlError, match="exists and is not a socket; move it away"):
        await ControlServer(sock, AccountControl(account)).start()
    assert sock.read_text() == "keep me"


def test_a_path_too_long_for_a_unix_socket_is_named(tmp_path, account):
    long = tmp_path / ("d" * 120) / "control.sock"
    with pytest.raises(ControlError, match=r"more than the 107 a Unix socket allows; set a shorter"):
        send_command(long, "status")
    with pytest.raises(ControlError, match=r"more than the 107 a Unix socket allows"):
        asyncio.run(ControlServer(long, AccountControl(account)).start())


def test_a_daemon_that_never_answers_times_out(sock):
    with socket.socket(socket.AF_UNIX) as mute:
        mute.bind(str(sock))
        mute.listen(1)  # accepts into the backlog, never reads or writes
        with pytest.raises(ControlError, match=r"did not answer 'status' within 0\.2s"):
            send_command(sock, "status", timeout=0.2)


def test_control_path_is_next_to_the_data_directory(tmp_path):
    (tmp_path / "a.toml").write_text("")
    (tmp_path / "b.toml").write_text("[database]\ndata_dir = 'state/pg'\n")
    assert control_path(load_plan(tmp_path / "a.toml")) == tmp_path / ".liu" / "control.sock"
    assert control_path(load_plan(tmp_path / "b.toml")) == tmp_path / "state" / "control.sock"


# -- the CLI ---------------------------------------------------------------------------------------------
@pytest.fixture
def plan(tmp_path: Path) -> Path:
    path = tmp_path / "tradeplan.toml"
    path.write_text("")  # defaults: the socket is <plan dir>/.liu/control.sock
    return path


def test_trader_halt_reaches_the_server_and_prints_what_it_did(plan, account, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with serving(tmp_path / ".liu" / "control.sock", AccountControl(account)):
        proc = subprocess.run(
            [TRADER, "halt", "--plan", plan], cwd=elsewhere, capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == f"{HALTED} (equity 104,000.00, 3 open orders)\n"
    assert account.halted == HALT_MANUAL


def test_trader_without_a_running_daemon_prints_one_line_and_exits_1(plan, tmp_path):
    proc = subprocess.run([TRADER, "flatten"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == "error: no running trader: nothing listens on .liu/control.sock\n"
    assert "Traceback" not in proc.stderr


def test_trader_commands_in_process(plan, account, tmp_path, capsys):
    with serving(tmp_path / ".liu" / "control.sock", AccountControl(account)):
        assert main(["--plan", str(plan), "flatten"]) == 0
        assert (account.halted, account.flatten_generation) == (HALT_MANUAL, 1)
        assert main(["status", "--plan", str(plan)]) == 0
        assert main(["resume", "--plan", str(plan)]) == 0
        assert account.halted == HALT_NONE
        assert main(["resume", "--plan", str(plan)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("flattening: halted; every consumer cancels its open orders")
    assert out[1].startswith("halted (manual): equity 104,000.00, cash 100,000.00,")
    assert out[2].startswith("resumed: the manual halt is lifted;")
    assert out[3] == "not halted; nothing to resume"
    assert len(out) == 4


def test_trader_exits_1_with_the_message_when_the_daemon_refuses(plan, tmp_path, capsys):
    with serving(tmp_path / ".liu" / "control.sock", None):  # a daemon still starting
        assert main(["halt", "--plan", str(plan)]) == 1
    assert capsys.readouterr().out == "error: the trader is still starting; try again in a moment\n"
