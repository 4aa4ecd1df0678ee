"""Batch shapes: the grid within a memory limit, the natural-text request, and a timer that
times each distinct batching once (structure only: no assertion here depends on speed)."""

from __future__ import annotations

import pytest

from edgerank.backends.base import ScoreOptions
from edgerank.backends.onnx import OnnxBackend
from edgerank.quality import shapes
from tests.engine.test_batcher import FakeBackend, docs


def test_grid_keeps_to_the_memory_limit():
    caps = shapes.CAPS
    assert shapes.grid() == [(8192, None), (4096, None), (2048, None), (1024, None)] + [
        (8192, c) for c in caps
    ]
    assert shapes.grid(5000) == [(4096, None), (2048, None), (1024, None)] + [
        (4096, c) for c in caps
    ]
    assert shapes.grid(512) == []


def test_request_is_probe_text_of_mixed_lengths_and_the_same_every_time(tiny_onnx_dir):
    be = OnnxBackend.from_dir(tiny_onnx_dir, threads=1)
    try:
        lengths = [it.n_tokens for it in shapes.request(be)]
        assert len(lengths) == shapes.PASSAGES
        assert lengths == [it.n_tokens for it in shapes.request(be)]
        assert lengths[:40] == [it.n_tokens for it in shapes.request(be, 40)]
        longest = min(shapes.LONGEST, be.info().max_length)  # 128 for the tiny model
        assert shapes.SHORTEST <= min(lengths) < 24 and max(lengths) == longest
        assert len(set(lengths)) > 40  # spread, not a handful of lengths
    finally:
        be.close()


def test_shapes_that_cut_alike_are_timed_once():
    be = FakeBackend()
    items = be.encode("a query", docs(1, 10), ScoreOptions())
    cut = [(8192, None), (4096, None), (8192, 4)]  # both budgets hold all 10 in one batch
    got = shapes.time_shapes(be, items, cut, rounds=3)
    assert set(got) == {"8192x0", "4096x0", "8192x4"}
    assert got["8192x0"] == got["4096x0"] > 0 and got["8192x4"] > 0
    assert sorted(map(len, be.batches)) == sorted([10] * 3 + [4, 4, 2] * 3)


@pytest.mark.parametrize(("rate", "want"), [(1e6, 100), (10.0, 32), (27 * 60 / 4, 60)])
def test_a_slow_backend_gets_a_shorter_request_not_fewer_rounds(rate, want):
    assert shapes.passages_for(rate, seconds=4.0, shapes=9) == want
