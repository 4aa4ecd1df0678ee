"""A real, private redis-server for the score cache's tests and benchmark (Debian's
`redis-server`).

Each server runs in its own temporary directory with persistence off, on a Unix socket (the
default) or a free TCP port, and is killed when closed. Tests can kill it or freeze it
(SIGSTOP) mid-run to play an outage or a hung Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edgerank.testing.procs import free_port


class RedisServer:
    def __init__(self, tcp: bool = False):
        binary = shutil.which("redis-server")
        if binary is None:  # a hard failure: CI installs it (.ci/run)
            raise RuntimeError("redis-server is not installed: `apt-get install redis-server`")
        # a short path: a Unix socket path must fit in 108 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="er-redis-"))
        self.socket = self.dir / "redis.sock"
        self.port = free_port() if tcp else 0
        self.url = f"redis://127.0.0.1:{self.port}/0" if tcp else f"unix://{self.socket}"
        args = [binary, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        if not tcp:
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        self._args = args
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        proc = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = proc
        self._wait_ready()
        return proc

    def restart(self) -> None:
        """A fresh, empty server at the same address (after kill())."""
        self.kill()
        self.socket.unlink(missing_ok=True)
        self._spawn()

    def _connect(self) -> socket.socket:
        if self.port:
            return socket.create_connection(("127.0.0.1", self.port), timeout=1)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect(str(self.socket))
        return s

    def command(self, *args: str | bytes) -> bytes:
        """One command in RESP, the raw reply (enough for PING, DBSIZE, FLUSHALL, KEYS)."""
        parts = [a.encode() if isinstance(a, str) else a for a in args]
        wire = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with self._connect() as s:
            s.sendall(wire)
            return s.recv(65536)

    def dbsize(self) -> int:
        return int(self.command("DBSIZE").strip()[1:])

    def _wait_ready(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{log}")
            try:
                if self.command("PING").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING in time")

    def kill(self) -> None:
        """SIGKILL: connections drop, new ones are refused (an outage)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung Redis)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.thaw()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
