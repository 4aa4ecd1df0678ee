"""The pair-score cache on the deterministic fake backend: the LRU, hits, coalescing.

Redis and the real model are in test_cache_redis.py; here the service runs the in-process
tier only, and the fake backend records every batch, so "scored once" is counted, not timed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import tracemalloc

import numpy as np
import pytest

from edgerank.backends.base import ScoreOptions
from edgerank.engine.cache import MemoryLRU
from edgerank.engine.cache_entries import Scores, pack
from edgerank.engine.service import Service
from edgerank.errors import Expired
from edgerank.server.settings import Settings
from tests.engine.test_batcher import FakeBackend, docs

SETTINGS = Settings(max_documents=50, max_document_chars=400, batch_wait_ms=0.5)


class Known(FakeBackend):
    """The fake backend with a model identity, so the service turns its cache on."""

    def __init__(self, *args, identity: str = "fake-v1", **kwargs):
        super().__init__(*args, **kwargs)
        self.identity = identity

    def info(self):
        return dataclasses.replace(super().info(), identity=self.identity)

    def scored(self) -> int:
        return sum(map(len, self.batches))


def run(coro):
    return asyncio.run(coro)


async def started(backend, settings=SETTINGS) -> Service:
    service = Service(settings.engine())
    await service.start(backend)
    backend.batches.clear()  # the warm-up's
    return service


def sample(service: Service, name: str, labels: dict | None = None) -> float:
    return service.metrics.registry.get_sample_value(name, labels or {}) or 0.0


# -- the LRU -----------------------------------------------------------------------------


def test_lru_evicts_least_recently_used_first():
    one = MemoryLRU.cost(b"k" * 16, b"v" * 12)
    lru = MemoryLRU(3 * one)
    for k in (b"a", b"b", b"c"):
        lru.put(k.ljust(16), b"v" * 12)
    assert lru.get(b"a".ljust(16)) is not None  # a is now the most recent
    assert lru.put(b"d".ljust(16), b"v" * 12) == 1
    assert lru.get(b"b".ljust(16)) is None and len(lru) == 3
    assert lru.bytes == 3 * one and lru.evictions == 1
    assert MemoryLRU(one - 1).put(b"a".ljust(16), b"v" * 12) == 0  # too small to hold one


def test_lru_byte_bound_holds_for_the_memory_it_really_takes():
    limit = 1 << 20
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        lru = MemoryLRU(limit)
        for i in range(40_000):  # ~4x what fits
            key = i.to_bytes(16, "little")
            lru.put(key, pack(Scores(np.array([i], np.float32), [1], [7]))[0])
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert lru.bytes <= limit and lru.evictions > 25_000
    assert used <= limit, f"the LRU holds {used} bytes for a bound of {limit}"
    assert used >= 0.5 * limit  # the accounting is not wildly pessimistic either


# -- the service with the in-process tier ----------------------------------------------


def test_hit_is_bit_identical_and_skips_the_model():
    backend = Known()

    async def scenario():
        service = await started(backend)
        passages = docs(3, 12)
        miss = await service.rerank("a b c", passages)
        assert backend.scored() == 12 and miss.outcome.cached == 0
        hit = await service.rerank("a b c", passages)
        assert backend.scored() == 12  # nothing went to the model
        assert hit.outcome.cached == 12
        assert hit.outcome.raw.tobytes() == miss.outcome.raw.tobytes()
        assert [(r.index, r.raw, r.score) for r in hit.ranked] == [
            (r.index, r.raw, r.score) for r in miss.ranked
        ]
        # usage is the same answer either way; the work counters say what really ran
        assert (hit.outcome.tokens, hit.outcome.items) == (miss.outcome.tokens, miss.outcome.items)
        assert sample(service, "edgerank_pairs_scored_total") == 2 + 12  # warm-up + the miss
        assert sample(service, "edgerank_cache_hits_total", {"tier": "memory"}) == 12
        assert sample(service, "edgerank_cache_misses_total") == 12
        for outcome in ("hit", "miss"):
            labels = {"outcome": outcome}
            assert sample(service, "edgerank_cache_request_seconds_count", labels) == 1
        assert sample(service, "edgerank_cache_entries") == 12
        assert sample(service, "edgerank_cache_bytes") == 12 * MemoryLRU.cost(b"k" * 16, b"v" * 12)
        service.close()

    run(scenario())


def test_partial_hits_score_only_the_missing_pairs_in_one_group():
    backend = Known()

    async def scenario():
        service = await started(backend)
        old, new = docs(3, 6), docs(4, 5)
        await service.rerank("q", old)
        mixed = [new[0], old[0], new[1], old[1], new[2], new[3], new[4], old[2]]
        backend.batches.clear()
        got = await service.rerank("q", mixed)
        assert sorted(m for batch in backend.batches for m in batch) == [4] * 5
        fresh = Known()
        direct = await started(fresh, dataclasses.replace(SETTINGS, cache_bytes=0))
        assert direct.cache is None
        want = await direct.rerank("q", mixed)
        assert got.outcome.raw.tobytes() == want.outcome.raw.tobytes()
        assert got.outcome.cached == 3
        assert sample(service, "edgerank_cache_request_seconds_count", {"outcome": "partial"}) == 1
        # score_pairs: positions scattered over groups come back in place
        pairs = [("q", old[3]), ("z y", new[0]), ("q", old[0]), ("z y", new[0])]
        outcome = await service.score_pairs(pairs)
        alone = await direct.score_pairs(pairs)
        assert outcome.raw.tobytes() == alone.raw.tobytes()
        service.close()
        direct.close()

    run(scenario())


def test_options_and_chunking_are_cached_apart():
    backend = Known()

    async def scenario():
        service = await started(backend)
        long = ["7 " + " ".join(f"w{i}" for i in range(40))]
        chunk = ScoreOptions("chunk", max_tokens_per_doc=8)
        chunked = await service.rerank("q", long, options=chunk)
        cut = await service.rerank("q", long, options=ScoreOptions(max_tokens_per_doc=8))
        assert chunked.outcome.windows[0] > 1 and cut.outcome.windows[0] == 1
        assert backend.scored() == chunked.outcome.windows[0] + 1
        again = await service.rerank("q", long, options=chunk)
        assert again.outcome.cached == 1 and backend.scored() == chunked.outcome.windows[0] + 1
        assert again.outcome.windows.tolist() == chunked.outcome.windows.tolist()  # TEI's check
        assert again.outcome.raw.tobytes() == chunked.outcome.raw.tobytes()
        service.close()

    run(scenario())


def test_duplicates_in_one_request_are_scored_once():
    backend = Known()

    async def scenario():
        service = await started(backend)
        p = docs(5, 3)
        got = await service.rerank("q", [p[0], p[1], p[0], p[2], p[0]])
        assert backend.scored() == 3
        assert got.outcome.raw[0] == got.outcome.raw[2] == got.outcome.raw[4]
        service.close()

    run(scenario())


def test_off_when_size_is_zero_or_the_model_has_no_identity():
    async def scenario():
        for backend, settings in [
            (Known(), dataclasses.replace(SETTINGS, cache_bytes=0)),
            (FakeBackend(), SETTINGS),  # no identity: nothing safe to key on
        ]:
            service = Service(settings.engine())
            await service.start(backend)
            assert service.cache is None
            backend.batches.clear()
            await service.rerank("q", docs(1, 4))
            await service.rerank("q", docs(1, 4))
            assert sum(map(len, backend.batches)) == 8
            service.close()

    run(scenario())


def test_identical_requests_in_flight_are_scored_once():
    gate = threading.Event()
    gate.set()  # open for the warm-up
    backend = Known(gate=gate)

    async def scenario():
        service = await started(backend)
        gate.clear()
        backend.entered.clear()
        passages = docs(6, 10)
        first = asyncio.ensure_future(service.rerank("q", passages))
        await asyncio.to_thread(backend.entered.wait, 5)  # the first holds the worker
        others = [asyncio.ensure_future(service.rerank("q", passages)) for _ in range(4)]
        overlap = asyncio.ensure_future(service.rerank("q", passages[5:] + docs(7, 2)))
        await asyncio.sleep(0.05)
        gate.set()
        answers = await asyncio.gather(first, *others)
        part = await overlap
        assert sorted(m for batch in backend.batches for m in batch) == [6] * 10 + [7] * 2
        for a in answers:
            assert a.outcome.raw.tobytes() == answers[0].outcome.raw.tobytes()
        assert part.outcome.raw[:5].tobytes() == answers[0].outcome.raw[5:].tobytes()
        assert sample(service, "edgerank_cache_coalesced_total") == 4 * 10 + 5
        assert sample(service, "edgerank_cache_misses_total") == 12
        service.close()

    try:
        run(scenario())
    finally:
        gate.set()


def test_a_cancelled_owner_hands_its_pairs_to_the_waiters():
    gate = threading.Event()
    gate.set()  # open for the warm-up
    backend = Known(gate=gate)

    async def scenario():
        service = await started(backend)
        gate.clear()
        backend.entered.clear()
        blocker = asyncio.ensure_future(service.rerank("block", docs(1, 1)))
        await asyncio.to_thread(backend.entered.wait, 5)  # the worker is held
        owner = asyncio.ensure_future(service.rerank("q", docs(2, 3)))
        await asyncio.sleep(0.01)
        waiter = asyncio.ensure_future(service.rerank("q", docs(2, 3)))
        await asyncio.sleep(0.01)
        owner.cancel()  # its client went away while its pairs were queued
        await asyncio.sleep(0.01)
        gate.set()
        got = await waiter
        await blocker
        assert owner.cancelled()
        assert got.outcome.cached == 0 and len(got.ranked) == 3
        assert sorted(m for batch in backend.batches for m in batch) == [1, 2, 2, 2]
        service.close()

    try:
        run(scenario())
    finally:
        gate.set()


def test_a_waiter_keeps_its_own_deadline():
    gate = threading.Event()
    gate.set()  # open for the warm-up
    backend = Known(gate=gate)

    async def scenario():
        service = await started(backend)
        gate.clear()
        backend.entered.clear()
        owner = asyncio.ensure_future(service.rerank("q", docs(2, 3)))
        await asyncio.to_thread(backend.entered.wait, 5)
        with pytest.raises(Expired, match="identical request"):
            await service.rerank("q", docs(2, 3), deadline=time.monotonic() + 0.05)
        gate.set()
        assert len((await owner).ranked) == 3
        service.close()

    try:
        run(scenario())
    finally:
        gate.set()
