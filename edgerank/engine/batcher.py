"""The dynamic batcher: one inference worker thread per backend, fed from one queue.

A request arrives as a job of already-tokenized items. On submit, rank.plan_batches cuts
the job exactly as rank.score_documents would (length-sorted, within the token budget), and
those planned chunks join one FIFO queue. The worker waits at most `wait_s` after the
oldest queued chunk for the queue to hold a budget's worth, then packs whole consecutive
chunks into one batch while the padded size (items x longest) stays within the budget:
small concurrent requests share a batch, a big request runs as its own planned batches
(never refused for being larger than one), and a request alone gets the very batches the
direct path would, hence the same scores. Scores land back in each job by position.

Only this thread calls backend.score: onnxruntime releases the GIL while it runs, and
llama.cpp contexts are not re-entrant. Cancelled or expired jobs leave the queue unscored.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgerank.backends.base import Backend, Encoded
from edgerank.backends.padding import plan_batches
from edgerank.errors import BackendFailure, Cancelled, EdgerankError, Expired, Unavailable

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One request's items, and where their scores go. Only the worker writes scores."""

    items: Sequence[Encoded]
    #: time.monotonic() after which the job's unscored items are dropped
    deadline: float | None = None
    #: called once, from the worker thread (or submit/cancel/stop), when the job settles
    on_done: Callable[[Job], None] | None = None
    scores: np.ndarray = field(init=False)
    error: BaseException | None = None
    enqueued: float = 0.0
    started: float | None = None  # first batch carrying this job began
    inference_s: float = 0.0  # sum of the batches that carried it
    remaining: int = field(init=False)
    settled: bool = False

    def __post_init__(self) -> None:
        self.scores = np.full(len(self.items), np.nan, dtype=np.float32)
        self.remaining = len(self.items)

    @property
    def queue_s(self) -> float:
        return (self.started if self.started is not None else self.enqueued) - self.enqueued


@dataclass
class Stats:
    batches: int = 0
    items: int = 0
    tokens: int = 0
    dropped: int = 0  # items removed unscored (cancelled, expired, failed job)
    #: tokens/s while scoring, smoothed; tells refused callers when to retry
    rate: float = 0.0


@dataclass(eq=False)
class _Chunk:
    """One planned batch of one job, waiting in the queue."""

    job: Job
    items: list[int]  # indices into job.items
    tokens: int
    longest: int


class Batcher:
    def __init__(
        self,
        backend: Backend,
        token_budget: int = 8192,
        max_batch: int | None = None,
        wait_s: float = 0.002,
    ):
        self.backend = backend
        self.token_budget = token_budget
        self.max_batch = max_batch or None
        self.wait_s = wait_s
        self.stats = Stats()
        self._cond = threading.Condition()
        self._queue: collections.deque[_Chunk] = collections.deque()
        self._queued_tokens = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: when the running batch began (None = idle); the watchdog's stall detector
        self.busy_since: float | None = None
        self.last_done: float | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Batcher:
        self._thread = threading.Thread(target=self._run, name="edgerank-infer", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop the worker; with drain, after the queued work. True if it has exited."""
        with self._cond:
            self._stopping = True
            if not drain:
                while self._queue:
                    chunk = self._queue.popleft()
                    self._settle(chunk.job, Unavailable("the server is shutting down"))
                self._queued_tokens = 0
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- callers ----------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue a job as the batches plan_batches gives it; never blocks."""
        lengths = [it.n_tokens for it in job.items]
        chunks = [
            _Chunk(job, batch, sum(lengths[i] for i in batch), max(lengths[i] for i in batch))
            for batch in plan_batches(lengths, self.token_budget, self.max_batch)
        ]
        with self._cond:
            if self._stopping:
                raise Unavailable("the server is shutting down")
            job.enqueued = time.monotonic()
            if not job.items:
                self._settle(job, None)
                return job
            self._queue.extend(chunks)
            self._queued_tokens += sum(lengths)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop a job's queued items now (the caller went away)."""
        with self._cond:
            if job.settled:
                return
            self._drop(job)
            self._settle(job, Cancelled("cancelled by the caller"))

    @property
    def queued(self) -> tuple[int, int]:
        """(items, tokens) waiting for the worker."""
        with self._cond:
            return sum(len(c.items) for c in self._queue), self._queued_tokens

    def stalled(self, limit_s: float) -> bool:
        """True when one batch has been running for longer than `limit_s` (a hung backend)."""
        since = self.busy_since
        return since is not None and time.monotonic() - since > limit_s

    # -- worker -----------------------------------------------------------------------

    def _drop(self, job: Job) -> None:
        """Remove a job's queued chunks (lock held)."""
        mine = [c for c in self._queue if c.job is job]
        if mine:
            self._queue = collections.deque(c for c in self._queue if c.job is not job)
            self._queued_tokens -= sum(c.tokens for c in mine)
            self.stats.dropped += sum(len(c.items) for c in mine)

    def _settle(self, job: Job, error: BaseException | None) -> None:
        if job.settled:
            return
        job.settled = True
        job.error = error
        if job.on_done is not None:
            try:
                job.on_done(job)
            except Exception:  # a broken callback must not kill the worker
                log.exception("job callback failed")

    def _fits(self, window: list[_Chunk], chunk: _Chunk) -> bool:
        count = sum(len(c.items) for c in window) + len(chunk.items)
        longest = max([chunk.longest, *(c.longest for c in window)])
        if self.max_batch is not None and count > self.max_batch:
            return False
        return count * longest <= self.token_budget

    def _take(self) -> list[_Chunk]:
        """Pop whole chunks of live jobs that fit one batch together (lock held)."""
        now = time.monotonic()
        window: list[_Chunk] = []
        while self._queue:
            chunk = self._queue[0]
            job = chunk.job
            if job.deadline is not None and now > job.deadline and not job.settled:
                self._drop(job)
                self._settle(job, Expired("deadline passed while queued"))
                continue
            if window and not self._fits(window, chunk):
                break
            self._queue.popleft()
            self._queued_tokens -= chunk.tokens
            window.append(chunk)
        return window

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._stopping:
                        return
                    self._cond.wait()
                first = self._queue[0].job.enqueued
                while self._queued_tokens < self.token_budget and not self._stopping:
                    left = first + self.wait_s - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                window = self._take()
                entries = [(c.job, i) for c in window for i in c.items]
            if entries:
                self._run_batch(entries)

    def _run_batch(self, entries: list[tuple[Job, int]]) -> None:
        items = [job.items[i] for job, i in entries]
        start = time.monotonic()
        self.busy_since = start
        try:
            scores = np.asarray(self.backend.score(items), dtype=np.float32)
            if scores.shape != (len(items),):
                raise BackendFailure(
                    f"backend returned {scores.shape} scores for a batch of {len(items)}"
                )
            error: BaseException | None = None
        except EdgerankError as exc:
            error = exc
        except Exception as exc:  # the runtime's own exception types: not the caller's fault
            log.exception("backend.score failed")
            error = BackendFailure(f"scoring failed: {type(exc).__name__}: {exc}")
        end = time.monotonic()
        self.busy_since = None
        self.last_done = end
        tokens = sum(it.n_tokens for it in items)
        with self._cond:
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.tokens += tokens
            if end > start:
                rate = tokens / (end - start)
                self.stats.rate = (
                    rate if not self.stats.rate else 0.8 * self.stats.rate + 0.2 * rate
                )
            seen: set[int] = set()
            for k, (job, i) in enumerate(entries):
                if job.settled:
                    continue
                if id(job) not in seen:
                    seen.add(id(job))
                    job.inference_s += end - start
                    if job.started is None:
                        job.started = start
                if error is not None:
                    self._drop(job)
                    self._settle(job, error)
                    continue
                job.scores[i] = scores[k]
                job.remaining -= 1
                if job.remaining == 0:
                    self._settle(job, None)


async def run_job(batcher: Batcher, items: Sequence[Encoded], deadline: float | None = None) -> Job:
    """Submit from asyncio and wait without blocking the loop; cancelling drops the work."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Job] = loop.create_future()

    def resolve(job: Job) -> None:
        if not future.done():
            if job.error is not None:
                future.set_exception(job.error)
            else:
                future.set_result(job)

    def done(job: Job) -> None:  # any thread
        try:
            loop.call_soon_threadsafe(resolve, job)
        except RuntimeError:  # the loop is gone: nobody is waiting any more
            pass

    job = Job(items, deadline=deadline, on_done=done)
    batcher.submit(job)
    try:
        return await future
    except asyncio.CancelledError:
        batcher.cancel(job)
        raise
