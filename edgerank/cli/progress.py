"""Progress of long commands on a terminal, and their one-line summaries.

A bar (counts, rate, elapsed) where the size of the work is known (pairs to score), a status
line with the elapsed time where it is not (an import's stages); both on stderr, redrawn in
place, and only when stderr is a terminal and the command prints no JSON: a pipe, a log or a
script gets the plain lines and the summary, never carriage returns.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

#: redraws at most this often (a terminal needs no more, and each costs a write)
REDRAW_S = 0.1
BAR_WIDTH = 24


def interactive(as_json: bool = False, stream: TextIO | None = None) -> bool:
    """Whether to draw: stderr is a terminal, no JSON was asked for, TERM is not dumb."""
    stream = stream or sys.stderr
    if as_json or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def rate(count: float, seconds: float) -> str:
    return f"{count / seconds:,.1f}" if seconds > 0 else "-"


class Bar:
    """``done`` of ``total`` units, drawn in place: `label [####....] 120/200 inputs 35/s 3 s`."""

    def __init__(
        self, label: str, total: int, unit: str, *, enabled: bool, stream: TextIO | None = None
    ):
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._drawn = 0.0
        self._width = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if self.enabled and (now - self._drawn >= REDRAW_S or done >= self.total):
            self._drawn = now
            self._draw(now - self.start)

    def _draw(self, elapsed: float) -> None:
        share = self.done / self.total if self.total else 1.0
        filled = int(share * BAR_WIDTH)
        line = (
            f"edgerank: {self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
            f"{self.done}/{self.total} {self.unit} {rate(self.done, elapsed)}/s {elapsed:.1f} s"
        )
        self._write(line)

    def _write(self, line: str) -> None:
        pad = max(0, self._width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = len(line)

    def close(self) -> float:
        """Erase the bar; the seconds it ran."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        return time.perf_counter() - self.start

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Status:
    """Progress lines of work of unknown size (an import's stages). Each message is printed
    as a line; on a terminal the last one stays below them with the elapsed time ticking."""

    def __init__(
        self, label: str, *, enabled: bool, stream: TextIO | None = None,
        hold: Callable[[str], bool] = lambda message: False,
    ):  # fmt: skip
        """``hold(message)``: whether that stage draws its own bar (downloads): the status
        line then waits for the next message."""
        self.label, self.enabled, self.hold = label, enabled, hold
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self._current = ""
        self._width = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if enabled:
            self._ticker = threading.Thread(target=self._tick, name="edgerank-status", daemon=True)
            self._ticker.start()

    def __call__(self, message: str) -> None:
        with self._lock:
            self._erase()
            self.stream.write(f"edgerank: {message}\n")
            self._current = message
            self._draw()
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._draw()
                self.stream.flush()

    def _draw(self) -> None:
        if not (self.enabled and self._current) or self.hold(self._current):
            return
        elapsed = int(time.perf_counter() - self.start)
        line = f"edgerank: {self.label} {elapsed // 60}:{elapsed % 60:02d} ... {self._current}"
        width = _columns(self.stream) - 1
        line = line if len(line) <= width else line[: width - 3] + "..."
        self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
        self._width = len(line)

    def _erase(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0

    def close(self) -> float:
        """Stop ticking and erase the status line; the seconds it ran."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            self._erase()
            self.stream.flush()
        return time.perf_counter() - self.start

    def __enter__(self) -> Status:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, AttributeError, ValueError):
        return 80
