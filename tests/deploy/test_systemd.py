"""systemd/edgerank.service under a real systemd as PID 1 (deploy/systemd/check.sh: Debian
booted in a container with podman --systemd=always), issue 30 part 2. The script runs once
for the module; each test reads the lines of its step. The watchdog step waits out the
unit's own WatchdogSec (2 min): the check runs the unit as shipped."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.deploy import first_index, json_after, lines, requires_container, run_script

pytestmark = requires_container


@pytest.fixture(scope="module")
def booted(image) -> dict[str, list[str]]:
    run = run_script("deploy/systemd/check.sh", "--no-build")
    out = lines(run.stdout)
    assert "DONE" in out, run.stderr[-4000:]  # the script went through every step
    return out


def journal(out: dict[str, list[str]]) -> str:
    return "\n".join(out.get("JOURNAL", []))


def test_systemd_is_pid_1(booted) -> None:
    assert "PID 1 is systemd" in booted["BOOT"][0]


def test_start_returns_once_ready_and_the_socket_answers(booted) -> None:
    # Type=notify: active (not activating) the moment `systemctl start` returns, with the
    # STATUS= the daemon sent beside READY=1
    (start,) = booted["START"]
    assert "active/running" in start and "status: serving" in start, start
    assert first_index(json_after(booted["RERANK"][0])) == 1  # the router document


def test_dynamic_user_owns_the_store_and_the_socket(booted) -> None:
    uid = int(re.search(r"uid (\d+)", booted["DAEMON"][0]).group(1))
    assert uid not in (0, 10001)  # allocated by DynamicUser=, not a static user
    store = {s.split()[-1].strip("'"): s.split()[0] for s in booted["STORE"]}
    private = [owner for path, owner in store.items() if path.startswith("/var/lib/private")]
    assert private and all(owner.startswith(f"{uid}:") for owner in private), store
    socket = booted["SOCKET"][0].split()
    assert socket[0].startswith(f"{uid}:") and socket[1] == "660"
    # a member of the service's (static) group may use the socket, another user may not
    assert booted["SOCKET_ACCESS"] == ["alice (in edgerank-clients): ok; bob: refused"]


def test_memory_max_from_the_catalog_is_the_cgroup_limit_and_holds_the_peak(booted) -> None:
    sizing = booted["MEMORY_SIZING"][0]
    memory_max = int(re.search(r"MemoryMax=(\d+)M", sizing).group(1)) << 20
    (memory,) = booted["MEMORY"]
    assert f"limit_in_bytes={memory_max}" in memory
    peak, limit = map(int, re.search(r"(\d+) MiB of (\d+) MiB", booted["MEMORY_PEAK"][0]).groups())
    assert limit << 20 == memory_max and peak < limit
    assert json_after(booted["MEMORY_PEAK"][0])["lost"] == 0


def test_memory_max_is_enforced(booted) -> None:
    # the kernel kills an allocation past MemoryMax= in the unit's cgroup (128 + SIGKILL) ...
    assert booted["OOM_HOG"][0].startswith("exit 137"), booted["OOM_HOG"]
    assert "daemon active" in booted["OOM_HOG"][0]
    # ... and under a MemoryMax= below its need the daemon refuses in one line
    assert "MemoryMax=48M: exit-code" in booted["OOM_SMALL"][0]
    assert "budget" in journal(booted)
    assert booted["RESTORED"][0].startswith("active")


def test_the_hardening_as_applied(booted) -> None:
    found = re.search(r"exposure level for edgerank.service: ([\d.]+)", booted["SECURITY"][0])
    exposure = float(found.group(1))
    assert exposure <= 2.0, booted["SECURITY"]


def test_the_watchdog_restarts_a_stopped_daemon(booted) -> None:
    (line,) = booted["WATCHDOG"]
    assert "restarts 0 -> 1" in line, line
    log = journal(booted)
    assert "Watchdog timeout" in log and "Failed with result 'watchdog'" in log
    assert booted["RERANK_AFTER_RESTART"] == ["ok"]


def test_stop_with_requests_in_flight_loses_none(booted) -> None:
    stop = json.loads(booted["STOP_TRAFFIC"][0])
    assert stop["lost"] == 0, stop
    assert stop["in_flight_at_mark"] >= 1
    assert stop["in_flight_answered"] == stop["in_flight_at_mark"]
    # a clean exit: SIGTERM sufficed, systemd never had to kill (within TimeoutStopSec)
    assert "result success, exit 1/0" in booted["STOP"][0], booted["STOP"]
    assert "timed out" not in journal(booted)
    # no call reached the drain deadline (the journal line says how far it stayed from it)
    assert "every accepted call answered in" in journal(booted)
    assert "drain timeout" not in journal(booted)


def test_reload_with_requests_in_flight_loses_none(booted) -> None:
    """The SIGHUP contract (ExecReload=/bin/kill -HUP $MAINPID, RELOADING=1 then READY=1,
    token and TLS files read again, calls in flight untouched)."""
    assert "RELOAD" in booted and "unsupported" not in booted["RELOAD"][0], booted["RELOAD"]
    (reload,) = booted["RELOAD"]
    pids = re.search(r"pid (\d+) -> (\d+)", reload).groups()
    assert pids[0] == pids[1] and "restarts 0" in reload, reload
    traffic = json.loads(booted["RELOAD_TRAFFIC"][0])
    assert traffic["lost"] == 0 and traffic["refused"] == 0, traffic
    assert traffic["in_flight_at_mark"] >= 1
    assert traffic["in_flight_answered"] == traffic["in_flight_at_mark"]
    log = journal(booted)
    assert log.index("RELOADING=1") < log.rindex("READY=1")
    assert booted["TOKEN_BEFORE"] == ["token-one: ok, token-two: refused"]
    assert booted["TOKEN_AFTER"] == ["token-one: refused, token-two: ok"]
