"""sd_notify on a real AF_UNIX datagram socket, the gated watchdog, and the unit file."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgerank.server import systemd
from edgerank.server.daemon import CLOSE_S
from edgerank.server.transport import FLUSH_S

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edgerank.service"
SETTINGS = UNIT.with_name("edgerank.toml")
#: beyond the daemon's own bound on SIGTERM -> exit: the interpreter's exit on a loaded box
EXIT_SPARE_S = 5.0


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, {"NOTIFY_SOCKET": str(path)}
    sock.close()


def test_no_socket_no_message():
    assert systemd.notify("READY=1", env={}) is False


def test_ready_status_stopping_arrive(listener):
    sock, env = listener
    assert systemd.ready("serving tiny", env=env)
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving tiny"
    assert systemd.status("loading", env=env)
    assert sock.recv(4096) == b"STATUS=loading"
    assert systemd.stopping("draining 3", env=env)
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining 3"


def test_abstract_address():
    name = f"edgerank-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_unreachable_socket_is_not_fatal(tmp_path):
    assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval():
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2500000"}) == 2.5
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert systemd.watchdog_interval(mine) == 1.0
    other = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert systemd.watchdog_interval(other) is None


def test_watchdog_pings_only_while_healthy(listener):
    sock, env = listener
    sock.setblocking(False)
    answers = [True, True, False, True, False, False]
    calls = []

    async def healthy():
        calls.append(None)
        if len(calls) > len(answers):
            raise asyncio.CancelledError  # stop the loop after the scripted answers
        return answers[len(calls) - 1]

    async def run():
        with pytest.raises(asyncio.CancelledError):
            await systemd.watchdog_loop(healthy, interval_s=0.002, env=env)

    asyncio.run(run())
    pings = []
    while True:
        try:
            pings.append(sock.recv(4096))
        except BlockingIOError:
            break
    assert pings == [b"WATCHDOG=1"] * answers.count(True)


def test_a_crashing_health_check_withholds_the_ping(listener):
    sock, env = listener
    sock.setblocking(False)
    calls = []

    async def healthy():
        calls.append(None)
        if len(calls) == 3:
            raise asyncio.CancelledError
        raise RuntimeError("backend hung")

    async def run():
        with pytest.raises(asyncio.CancelledError):
            await systemd.watchdog_loop(healthy, interval_s=0.002, env=env)

    asyncio.run(run())
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def _unit_with_real_exec(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this checkout's entry point.

    verify checks that the binary exists; the shipped path (/opt/edgerank) is an install
    location, so only that path is swapped.
    """
    exe = shutil.which("edgerank") or str(Path(sys.executable).parent / "edgerank")
    text = UNIT.read_text().replace("/opt/edgerank/bin/edgerank", exe)
    unit = tmp_path / "edgerank.service"
    unit.write_text(text)
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_unit_file_verifies_and_reports_exposure(tmp_path):
    unit = _unit_with_real_exec(tmp_path)
    exec_line = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
    assert Path(exec_line.removeprefix("ExecStart=").split()[0]).exists()
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == ""
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert match, security.stdout[-500:]
    print(f"systemd-analyze security exposure: {match.group(1)}")
    assert float(match.group(1)) <= 2.0  # "OK" band; the hardening must not regress


def test_unit_file_has_the_required_directives():
    text = UNIT.read_text()
    directives = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    assert directives["Type"] == "notify"
    assert directives["DynamicUser"] == "yes"
    for key in ("StateDirectory", "RuntimeDirectory", "WatchdogSec", "CapabilityBoundingSet"):
        assert key in directives
    assert directives["Restart"] == "on-failure"
    assert directives["ProtectSystem"] == "strict"
    assert directives["CapabilityBoundingSet"] == ""
    assert "@system-service" in text


def test_the_shipped_drain_fits_inside_timeout_stop_sec():
    """systemd SIGKILLs what still runs at TimeoutStopSec, and a killed drain loses every
    call it held: the daemon's bound on SIGTERM -> exit (the shipped drain_timeout_s, then
    the answers' flush and the worker's close) must sit inside it, with room to spare."""
    directives = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    stop_s = float(directives["TimeoutStopSec"])
    drain_s = tomllib.loads(SETTINGS.read_text())["drain_timeout_s"]
    assert drain_s + FLUSH_S + CLOSE_S + EXIT_SPARE_S <= stop_s, (drain_s, stop_s)
