"""The real daemon as a process, for tests that need real signals and sockets.

`python -m tests.support.daemon [serve flags]` runs daemon.run() (SIGHUP's settings reload
included) around the tiny model behind a test double:

- TEST_DOUBLE_SLOW_S: every batch sleeps that long first (a big model on a small CPU);
- TEST_DOUBLE_GATE: while that file exists, batches wait (the test holds calls in flight);
- TEST_DOUBLE_STUCK: a batch holding the query "stuck" touches that file, then runs the real
  onnxruntime session over and over and never returns (a hung batch, inside the runtime).

`DaemonProcess` starts it with a real sd_notify socket, its log in a file, and the addresses
it bound (port 0) read from its "listening on" line.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Notifications:
    """A NOTIFY_SOCKET the way systemd offers it: an AF_UNIX datagram socket."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.seen: list[str] = []

    def wait_for(self, field: str, timeout: float = 60) -> list[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.seen.append(message)
            if field in message.split("\n"):
                return self.seen
        raise AssertionError(f"no {field} within {timeout}s; got {self.seen}")

    def close(self) -> None:
        self.sock.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGERANK_", "WATCHDOG_"))}
    env.pop("NOTIFY_SOCKET", None)
    # a script's own directory comes first on sys.path, not the cwd: import this checkout's
    # edgerank, not whichever one an editable install points at
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class DaemonProcess:
    def __init__(self, tmp_path: Path, *flags: str, **doubles: str):
        self.notify = Notifications(tmp_path / "notify.sock")
        self.log = tmp_path / "daemon.log"
        env = clean_env(NOTIFY_SOCKET=str(self.notify.path), **doubles)
        cmd = [sys.executable, "-m", "tests.support.daemon", "--threads", "1", *flags]
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=err)
        self.grpc = self.http = ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> DaemonProcess:
        try:
            self.notify.wait_for("READY=1", timeout)
        except AssertionError:
            raise AssertionError(f"not ready:\n{self.text()}") from None
        line = next(x for x in self.text().splitlines() if "listening on" in x)
        if m := re.search(r"tcp port (\d+)", line):
            self.grpc = f"127.0.0.1:{m.group(1)}"
        if m := re.search(r"(https?://[\d.]+:\d+)", line):
            self.http = m.group(1)
        return self

    def wait_log(self, fragment: str, timeout: float = 60) -> str:
        """The first log line holding `fragment` (a hang guard, not a time limit)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.text().splitlines():
                if fragment in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        rc = self.proc.poll()
        raise AssertionError(f"no log line with {fragment!r} (exit {rc}):\n{self.text()}")

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the daemon did not exit:\n{self.text()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()


# -- the process side ------------------------------------------------------------------------


class Double:
    """The real backend, slowed down or stuck on request (see the module docstring)."""

    def __init__(self, inner, slow_s: float, stuck: str, gate: str):
        from edgerank.backends.base import ScoreOptions

        self.inner = inner
        self.slow_s = slow_s
        self.stuck = Path(stuck) if stuck else None
        self.gate = Path(gate) if gate else None
        self.marker = inner.encode("stuck", ["x"], ScoreOptions())[0].ids.tolist()[:3]

    def encode(self, *args):
        return self.inner.encode(*args)

    def score(self, batch):
        if self.stuck is not None and any(it.ids.tolist()[:3] == self.marker for it in batch):
            self.stuck.touch()
            while True:  # inside onnxruntime nearly all the time, for as long as it lives
                self.inner.score(batch)
        while self.gate is not None and self.gate.exists():
            time.sleep(0.01)
        time.sleep(self.slow_s)
        return self.inner.score(batch)

    def info(self):
        return self.inner.info()

    def close(self):
        self.inner.close()


def main() -> None:
    import click

    from edgerank.backends.onnx import OnnxBackend
    from edgerank.server import daemon
    from edgerank.server.settings import click_options, load

    def factory(settings):
        inner = OnnxBackend.from_dir(settings.model, threads=1)
        slow = float(os.environ.get("TEST_DOUBLE_SLOW_S", "0"))
        env = os.environ.get
        double = Double(inner, slow, env("TEST_DOUBLE_STUCK", ""), env("TEST_DOUBLE_GATE", ""))
        return double, [], {}

    @click.command()
    @click_options
    def serve(**flags) -> None:
        sys.exit(daemon.run(load(flags), factory, fresh=lambda: load(flags)))

    serve()


if __name__ == "__main__":
    main()
