"""What stopping does to calls: counted in flight, refused once draining, waited for, and past
the deadline cut off with an answer (Unavailable, retryable) rather than dropped.

Mixed into the Service. A call counts from the moment its request is read in full (`call`),
so a client stalled mid-body holds nothing. The scoring part of a call runs inside
`cut_off_point`: `abandon()` cancels exactly those tasks and each one answers Unavailable,
while a caller that goes away on its own still cancels as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from edgerank.errors import Unavailable

#: the answer of a call still being scored when the drain deadline passed
CUT_OFF = (
    "the server is shutting down and the drain timeout passed before this request was "
    "scored; retry on another replica"
)


class Drain:
    """Mixed into the Service, which sets `state` and calls `_init_drain()`."""

    state: str

    def _init_drain(self) -> None:
        self.calls = 0  # RPCs inside a handler, streaming ones included
        #: monotonic time of the drain, or of the last call it refused or answered since
        self._last_knock = 0.0
        self._idle: asyncio.Event | None = None
        #: the tasks scoring a call right now, and those abandon() cut off
        self._running: set[asyncio.Task] = set()
        self._cut: set[asyncio.Task] = set()
        self._abandoned = False

    def require_ready(self) -> None:  # the Service's
        raise NotImplementedError

    def drain(self) -> None:
        """Refuse new calls from now on; the ones already inside still finish."""
        if self.state in ("serving", "warming"):
            self.state = "draining"
            self._last_knock = time.monotonic()

    def accepting(self) -> None:
        """Refuse (UNAVAILABLE) unless serving: checked before a request is even read."""
        if self.state == "draining":
            self._last_knock = time.monotonic()
            raise Unavailable("the server is draining for shutdown; retry on another replica")
        self.require_ready()

    def begin_call(self) -> None:
        """A call whose request is read in full: the drain waits for it (one still receiving
        its request is not counted, so a client stalled mid-body cannot hold SIGTERM)."""
        self.accepting()
        self.calls += 1

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        self.begin_call()
        try:
            yield
        finally:
            self.end_call()

    def end_call(self) -> None:
        """A call answered. While draining its client is the likeliest to send the next
        call at once: that call must meet a refusal, not the listener's close, so an answer
        restarts the quiet window as a refusal does (wait_quiet)."""
        self.calls -= 1
        if self.state == "draining":
            self._last_knock = time.monotonic()
        if self.calls == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """After drain(): wait until every accepted call has answered. False on timeout."""
        if self.calls == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def wait_quiet(self, quiet_s: float, timeout: float) -> None:
        """After drain(): linger while clients still send calls (each refused UNAVAILABLE,
        which a balancing client retries on another replica) until none came and none was
        answered for `quiet_s`, at most `timeout`. Closing the listener sooner makes grpc
        cancel (CANCELLED, not retryable) the calls that race the close, such as the one a
        client sends the moment its last call is answered; lingering also gives
        health-checking clients time to see NOT_SERVING."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            left = self._last_knock + quiet_s - time.monotonic()
            if left <= 0 or loop.time() >= end:
                return
            await asyncio.sleep(min(left, end - loop.time()))

    def abandon(self) -> int:
        """Past the drain deadline: every call still being scored is answered Unavailable
        (retryable) at once and its queued work dropped; the running batch is not touched.
        Returns how many calls were cut off."""
        self._abandoned = True
        for task in self._running:
            if not task.done() and task not in self._cut:
                self._cut.add(task)
                task.cancel("the drain timeout passed")
        return len(self._cut)

    @contextlib.contextmanager
    def cut_off_point(self) -> Iterator[None]:
        """Around a call's scoring: abandon() turns it into Unavailable, and after abandon()
        no scoring starts."""
        task = asyncio.current_task()
        if self._abandoned or task is None:
            raise Unavailable(CUT_OFF)
        self._running.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._cut:
                raise  # the caller went away
            if hasattr(task, "uncancel"):  # Python 3.11+: this cancel is handled here
                task.uncancel()
            raise Unavailable(CUT_OFF) from None
        finally:
            self._running.discard(task)
            self._cut.discard(task)
