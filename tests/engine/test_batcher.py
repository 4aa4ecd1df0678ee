"""The batcher on a deterministic fake backend: batching, merging, cancel, deadlines, stop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from edgerank.backends.base import BackendInfo, Encoded, ScoreOptions
from edgerank.engine.batcher import Batcher, Job, run_job
from edgerank.engine.rank import merge_max, score_documents
from edgerank.errors import BackendFailure, Cancelled, Expired, Unavailable


class FakeBackend:
    """Words become token ids; a score is a fixed function of one item's ids (batch-free).

    `gate` (when set) makes score() wait, so a test can hold the worker mid-batch; every
    batch is recorded as the list of its items' first ids (the passage marker).
    """

    def __init__(self, gate: threading.Event | None = None, fail: bool = False):
        self.gate = gate
        self.fail = fail
        self.batches: list[list[int]] = []
        self.entered = threading.Event()

    def encode(self, query, passages, options: ScoreOptions):
        q = [len(w) for w in query.split()]
        items = []
        for doc, text in enumerate(passages):
            words = text.split()
            marker = int(words[0]) if words and words[0].isdigit() else 0
            body = [marker] + [sum(map(ord, w)) % 1000 for w in words[1:]]
            limit = options.max_tokens_per_doc or 10_000
            pieces = [body[i : i + limit] for i in range(0, len(body), limit)] or [[marker]]
            if options.truncation == "truncate":
                pieces = pieces[:1]
            for piece in pieces:
                items.append(Encoded(doc=doc, ids=np.array([marker, *q, *piece], dtype=np.int64)))
        return items

    def score(self, batch):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append([int(it.ids[0]) for it in batch])
        return np.array(
            [np.sin(float((it.ids * np.arange(1, it.n_tokens + 1)).sum())) for it in batch],
            dtype=np.float32,
        )

    def info(self):
        return BackendInfo("fake", "fake-model", "fp32", "cpu", 512, 1)

    def close(self):
        pass


def docs(marker: int, n: int, words: int = 5) -> list[str]:
    """Passages tagged with `marker` as their first word, of growing length."""
    return [f"{marker} " + " ".join(f"w{i}x{j}" for j in range(words + i % 7)) for i in range(n)]


def submit_wait(batcher: Batcher, items, deadline=None) -> Job:
    done = threading.Event()
    job = Job(items, deadline=deadline, on_done=lambda _: done.set())
    batcher.submit(job)
    assert done.wait(10)
    return job


@pytest.fixture
def gate():
    event = threading.Event()
    yield event
    event.set()  # never leave a worker blocked


def test_one_job_equals_direct_scoring():
    backend = FakeBackend()
    batcher = Batcher(backend, token_budget=64, wait_s=0.001).start()
    try:
        passages = docs(7, 40)
        options = ScoreOptions(truncation="chunk", max_tokens_per_doc=4)
        items = backend.encode("a query here", passages, options)
        job = submit_wait(batcher, items)
        assert job.error is None
        raw = merge_max(items, job.scores, len(passages))
        direct = score_documents(FakeBackend(), "a query here", passages, options, token_budget=64)
        np.testing.assert_array_equal(raw, direct.raw)
        assert len(backend.batches) > 1  # a job bigger than one batch is split, not refused
    finally:
        batcher.stop()


def test_a_lone_request_runs_the_batches_the_direct_path_plans():
    """Same batches as score_documents, so even a batch-sensitive runtime gives equal scores."""

    class Recording(FakeBackend):
        def __init__(self):
            super().__init__()
            self.seen: list[list[tuple[int, ...]]] = []

        def score(self, batch):
            self.seen.append([tuple(it.ids) for it in batch])
            return super().score(batch)

    backend = Recording()
    batcher = Batcher(backend, token_budget=96, wait_s=0.001).start()
    try:
        items = backend.encode("some query", docs(4, 50), ScoreOptions())
        submit_wait(batcher, items)
        direct = Recording()
        score_documents(direct, "some query", docs(4, 50), token_budget=96)
        assert len(direct.seen) > 2
        assert backend.seen == direct.seen
    finally:
        batcher.stop()


def test_batches_respect_the_token_budget():
    backend = FakeBackend()
    batcher = Batcher(backend, token_budget=50, wait_s=0.001).start()
    try:
        items = backend.encode("q", docs(1, 30, words=3), ScoreOptions())
        lengths = {int(it.ids[0]): it.n_tokens for it in items}  # all share marker 1
        submit_wait(batcher, items)
        for batch in backend.batches:
            assert len(batch) * max(lengths.values()) <= 50 or len(batch) == 1
        assert sum(map(len, backend.batches)) == len(items)
    finally:
        batcher.stop()


def test_small_concurrent_jobs_share_a_batch(gate):
    backend = FakeBackend(gate=gate)
    batcher = Batcher(backend, token_budget=4096, wait_s=0.001).start()
    try:
        blocker = Job(backend.encode("q", docs(1, 1), ScoreOptions()))
        batcher.submit(blocker)
        assert backend.entered.wait(10)  # the worker holds the first batch
        events = []
        for marker in (2, 3, 4, 5):
            done = threading.Event()
            events.append(done)
            items = backend.encode("q", docs(marker, 3), ScoreOptions())
            batcher.submit(Job(items, on_done=lambda _, d=done: d.set()))
        gate.set()
        assert all(e.wait(10) for e in events)
        # everything queued behind the blocker went out in one batch, from four jobs
        assert len(backend.batches) == 2
        assert set(backend.batches[1]) == {2, 3, 4, 5}
    finally:
        batcher.stop()


def test_cancel_drops_queued_work(gate):
    backend = FakeBackend(gate=gate)
    batcher = Batcher(backend, token_budget=4096, wait_s=0.001).start()
    try:
        batcher.submit(Job(backend.encode("q", docs(1, 1), ScoreOptions())))
        assert backend.entered.wait(10)
        settled = []
        victim = Job(backend.encode("q", docs(9, 6), ScoreOptions()), on_done=settled.append)
        batcher.submit(victim)
        assert batcher.queued[0] == 6
        batcher.cancel(victim)
        assert batcher.queued == (0, 0)
        assert isinstance(victim.error, Cancelled) and settled == [victim]
        gate.set()
        after = submit_wait(batcher, backend.encode("q", docs(3, 2), ScoreOptions()))
        assert after.error is None
        assert all(9 not in batch for batch in backend.batches)
        assert batcher.stats.dropped == 6
    finally:
        batcher.stop()


def test_expired_work_is_dropped_unscored(gate):
    backend = FakeBackend(gate=gate)
    batcher = Batcher(backend, token_budget=4096, wait_s=0.001).start()
    try:
        batcher.submit(Job(backend.encode("q", docs(1, 1), ScoreOptions())))
        assert backend.entered.wait(10)
        done = threading.Event()
        late = Job(
            backend.encode("q", docs(8, 5), ScoreOptions()),
            deadline=time.monotonic() + 0.01,
            on_done=lambda _: done.set(),
        )
        batcher.submit(late)
        while time.monotonic() <= late.deadline:
            time.sleep(0.005)
        gate.set()
        assert done.wait(10)
        assert isinstance(late.error, Expired)
        assert all(8 not in batch for batch in backend.batches)
        assert batcher.stats.dropped == 5
    finally:
        batcher.stop()


def test_backend_failure_fails_the_job_not_the_worker():
    backend = FakeBackend(fail=True)
    batcher = Batcher(backend, token_budget=4096, wait_s=0.001).start()
    try:
        job = submit_wait(batcher, backend.encode("q", docs(1, 3), ScoreOptions()))
        assert isinstance(job.error, BackendFailure)
        assert "boom" in str(job.error)
        backend.fail = False
        ok = submit_wait(batcher, backend.encode("q", docs(2, 3), ScoreOptions()))
        assert ok.error is None and np.isfinite(ok.scores).all()
    finally:
        batcher.stop()


def test_wrong_number_of_scores_is_a_backend_failure():
    class Short(FakeBackend):
        def score(self, batch):
            return super().score(batch)[:-1]

    backend = Short()
    batcher = Batcher(backend, token_budget=4096, wait_s=0.001).start()
    try:
        job = submit_wait(batcher, backend.encode("q", docs(1, 3), ScoreOptions()))
        assert isinstance(job.error, BackendFailure)
    finally:
        batcher.stop()


def test_stop_drains_queued_jobs_then_refuses(gate):
    backend = FakeBackend(gate=gate)
    batcher = Batcher(backend, token_budget=16, wait_s=0.001).start()
    jobs = [Job(backend.encode("q", docs(m, 4), ScoreOptions())) for m in (1, 2, 3)]
    for job in jobs:
        batcher.submit(job)
    assert backend.entered.wait(10)
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    gate.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert all(j.settled and j.error is None and np.isfinite(j.scores).all() for j in jobs)
    with pytest.raises(Unavailable):
        batcher.submit(Job(backend.encode("q", docs(4, 1), ScoreOptions())))


def test_stop_without_drain_fails_queued_jobs(gate):
    backend = FakeBackend(gate=gate)
    batcher = Batcher(backend, token_budget=4096, wait_s=0.001).start()
    batcher.submit(Job(backend.encode("q", docs(1, 1), ScoreOptions())))
    assert backend.entered.wait(10)
    queued = Job(backend.encode("q", docs(2, 3), ScoreOptions()))
    batcher.submit(queued)
    assert not batcher.stop(drain=False, timeout=0)  # the worker is still in its batch
    assert isinstance(queued.error, Unavailable)
    gate.set()
    assert batcher.stop(timeout=10)
    assert all(2 not in batch for batch in backend.batches)


def test_stalled_while_a_batch_hangs(gate):
    backend = FakeBackend(gate=gate)
    batcher = Batcher(backend, token_budget=4096, wait_s=0.001).start()
    try:
        assert not batcher.stalled(0.0)  # idle is not stalled
        batcher.submit(Job(backend.encode("q", docs(1, 1), ScoreOptions())))
        assert backend.entered.wait(10)
        time.sleep(0.02)
        assert batcher.stalled(0.01)
        gate.set()
        submit_wait(batcher, backend.encode("q", docs(2, 1), ScoreOptions()))
        assert not batcher.stalled(0.01)
    finally:
        batcher.stop()


def test_run_job_from_asyncio_and_cancellation(gate):
    backend = FakeBackend(gate=gate)
    batcher = Batcher(backend, token_budget=4096, wait_s=0.001).start()

    async def scenario():
        blocker = asyncio.ensure_future(
            run_job(batcher, backend.encode("q", docs(1, 1), ScoreOptions()))
        )
        await asyncio.to_thread(backend.entered.wait, 10)
        victim = asyncio.ensure_future(
            run_job(batcher, backend.encode("q", docs(6, 4), ScoreOptions()))
        )
        await asyncio.sleep(0)  # let it submit
        assert batcher.queued[0] == 4
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert batcher.queued == (0, 0)
        gate.set()
        job = await blocker
        assert job.error is None and np.isfinite(job.scores).all()

    try:
        asyncio.run(scenario())
        assert all(6 not in batch for batch in backend.batches)
    finally:
        batcher.stop()


def test_many_threads_get_their_own_scores():
    backend = FakeBackend()
    batcher = Batcher(backend, token_budget=128, wait_s=0.002).start()
    results: dict[int, np.ndarray] = {}

    def client(k: int) -> None:
        passages = docs(k, 3 + k % 5)
        items = backend.encode(f"query {k}", passages, ScoreOptions())
        job = submit_wait(batcher, items)
        results[k] = merge_max(items, job.scores, len(passages))

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(1, 41)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        for k in range(1, 41):
            direct = score_documents(FakeBackend(), f"query {k}", docs(k, 3 + k % 5))
            np.testing.assert_array_equal(results[k], direct.raw)
        assert any(len(set(b)) > 1 for b in backend.batches)  # requests did share batches
    finally:
        batcher.stop()
