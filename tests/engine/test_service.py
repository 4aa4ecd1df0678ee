"""The transport-free service on the fake backend: states, drain, health, pair grouping."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import numpy as np
import pytest

from edgerank.backends.base import ScoreOptions
from edgerank.engine.rank import score_documents
from edgerank.engine.requests import group_pairs
from edgerank.engine.service import Service
from edgerank.errors import InvalidInput, ModelNotFound, TooLarge, Unavailable
from edgerank.server.settings import Settings
from tests.engine.test_batcher import FakeBackend, docs

SETTINGS = Settings(max_documents=20, max_document_chars=200, batch_wait_ms=0.5)


def run(coro):
    return asyncio.run(coro)


async def started(backend=None, settings=SETTINGS) -> Service:
    service = Service(settings.engine())
    await service.start(backend or FakeBackend(), aliases=["alias-name"])
    return service


def test_states_loading_serving_draining():
    async def scenario():
        service = Service(SETTINGS.engine())
        with pytest.raises(Unavailable, match="loading"):
            service.begin_call()
        await service.start(FakeBackend())
        service.begin_call()
        service.drain()
        with pytest.raises(Unavailable, match="draining"):
            service.begin_call()
        # the call that was already inside still completes, then the service is idle
        waiter = asyncio.ensure_future(service.wait_idle(5))
        await asyncio.sleep(0)
        assert not waiter.done()
        result = await service.rerank("q", docs(1, 3))
        service.end_call()
        assert await waiter and len(result.ranked) == 3
        service.close()

    run(scenario())


def test_rerank_equals_direct_and_validates():
    async def scenario():
        service = await started()
        passages = docs(3, 12)
        got = await service.rerank("a b c", passages, top_n=4)
        raw = score_documents(FakeBackend(), "a b c", passages).raw
        assert [r.index for r in got.ranked] == sorted(range(12), key=lambda i: -raw[i])[:4]
        assert got.outcome.items == 12 and got.outcome.tokens > 12
        for bad, error in [
            (dict(query=" ", documents=["a"]), InvalidInput),
            (dict(query="q", documents=[]), InvalidInput),
            (dict(query="q", documents=["a"] * 21), TooLarge),
            (dict(query="q", documents=["a" * 201]), TooLarge),
            (dict(query="q", documents=["a\x00"]), InvalidInput),
            (dict(query="q", documents=["a"], top_n=-2), InvalidInput),
            (dict(query="q", documents=["a"], model="other"), ModelNotFound),
            (
                dict(query="q", documents=["a"], options=ScoreOptions(instruction="x\x00")),
                InvalidInput,
            ),
        ]:
            with pytest.raises(error):
                await service.rerank(**bad)
        # aliases and the backend's own name are accepted
        await service.rerank("q", ["a"], model="alias-name")
        await service.rerank("q", ["a"], model="fake-model")
        assert service.admission.pairs == 0 and service.in_flight == 0
        service.close()

    run(scenario())


def test_score_pairs_groups_by_query_and_keeps_order():
    triples = [
        ("q1", "a", ScoreOptions()),
        ("q2", "b", ScoreOptions()),
        ("q1", "c", ScoreOptions()),
    ]
    groups = group_pairs(triples)
    assert [(g.query, list(g.passages), list(g.positions)) for g in groups] == [
        ("q1", ["a", "c"], [0, 2]),
        ("q2", ["b"], [1]),
    ]

    async def scenario():
        service = await started()
        pairs = [("x y", "1 one"), ("z", "2 two two"), ("x y", "3 three")]
        outcome = await service.score_pairs(pairs)
        for i, (q, p) in enumerate(pairs):
            assert outcome.raw[i] == score_documents(FakeBackend(), q, [p]).raw[0]
        service.close()

    run(scenario())


def test_health_probe_and_stall():
    gate = threading.Event()
    gate.set()
    backend = FakeBackend(gate=gate)

    async def scenario():
        service = await started(backend)
        assert await service.healthy(stall_s=5)  # idle: the probe goes through the worker
        gate.clear()
        backend.entered.clear()
        held = asyncio.ensure_future(service.rerank("q", docs(1, 2)))
        await asyncio.to_thread(backend.entered.wait, 5)
        await asyncio.sleep(0.02)
        assert not await service.healthy(stall_s=0.01)  # one batch stuck too long
        assert await service.healthy(stall_s=30)  # busy but within its allowance
        gate.set()
        await held
        service.close()

    try:
        run(scenario())
    finally:
        gate.set()


def test_a_failing_backend_fails_the_probe():
    backend = FakeBackend()

    async def scenario():
        service = await started(backend)
        backend.fail = True
        assert not await service.healthy()
        service.close()

    run(scenario())


def test_nan_scores_fail_the_probe():
    class NaN(FakeBackend):
        def score(self, batch):
            return np.full(len(batch), np.nan, dtype=np.float32)

    async def scenario():
        service = Service(SETTINGS.engine())
        await service.start(FakeBackend())
        service.batcher.backend = NaN()
        assert not await service.healthy()
        service.close()

    run(scenario())


@pytest.mark.parametrize(
    ("settings", "planned", "want"),
    [
        ({}, (4096, 3), (4096, 3)),  # 0 = auto: the planner's shape
        ({}, None, (8192, None)),  # a model the planner knows nothing of
        ({"max_batch_pairs": 5}, (4096, 3), (4096, 5)),  # an explicit setting wins
        ({"max_batch_tokens": 30}, (4096, 3), (30, 3)),
    ],
)
def test_batch_settings_at_0_take_the_planned_shape_and_explicit_ones_win(settings, planned, want):
    backend = FakeBackend()

    async def scenario():
        service = Service(dataclasses.replace(SETTINGS, **settings).engine())
        await service.start(backend, **({"shape": planned} if planned else {}))
        assert service.batch_shape == want
        assert (service.batcher.token_budget, service.batcher.max_batch) == want
        backend.batches.clear()
        await service.rerank("q", docs(1, 12))
        service.close()

    run(scenario())
    assert max(map(len, backend.batches)) == (want[1] or 12)
