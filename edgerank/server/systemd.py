"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, nothing when it is unset.

The watchdog ping is gated on a health check of the inference worker, so a hung backend
stops the pings and systemd restarts the service (WatchdogSec= in the unit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger(__name__)


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send 'KEY=value' lines to the service manager; True when a datagram went out."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %r is not a Unix socket path; not notifying", address)
        return False
    payload = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", env.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready(status: str = "serving", env: Mapping[str, str] | None = None) -> bool:
    return notify("READY=1", f"STATUS={status}", env=env)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    return notify(f"STATUS={text}", env=env)


def reloading(env: Mapping[str, str] | None = None) -> bool:
    """RELOADING=1 (READY=1 follows once the reload is done), with the monotonic time
    Type=notify-reload units need too."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading", env=env)


def stopping(status: str = "draining", env: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", f"STATUS={status}", env=env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between required pings (WATCHDOG_USEC), None when no watchdog is asked for.

    WATCHDOG_PID, when set, must be this process: a child must not ping for its parent.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6


async def watchdog_loop(
    healthy: Callable[[], Awaitable[bool]],
    interval_s: float,
    env: Mapping[str, str] | None = None,
) -> None:
    """Ping WATCHDOG=1 every interval/2 while `healthy()` says the worker is fine.

    Runs until cancelled. A failed or slow health check skips the ping; two missed pings
    in a row let systemd's timer run out.
    """
    period = interval_s / 2
    while True:
        try:
            ok = await asyncio.wait_for(healthy(), timeout=period)
        except asyncio.TimeoutError:
            ok = False
        except Exception:  # a crashing health check is a failed one, not a dead loop
            log.exception("health check failed")
            ok = False
        if ok:
            notify("WATCHDOG=1", env=env)
        else:
            log.warning("inference worker unhealthy: withholding the watchdog ping")
        await asyncio.sleep(period)
