from __future__ import annotations

import numpy as np
import pytest

from edgerank.backends.base import BackendInfo, Encoded, ScoreOptions
from edgerank.engine.rank import merge_max, normalise, plan_batches, rank, score_documents
from edgerank.errors import InvalidInput


def test_plan_batches_sorts_by_length_and_respects_budget():
    lengths = [100, 5, 50, 6, 99, 7]
    batches = plan_batches(lengths, token_budget=150)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 150
    # short items are grouped together, the long ones apart
    assert set(batches[0]) == {1, 3, 5}


def test_plan_batches_item_over_budget_gets_its_own_batch():
    assert plan_batches([500, 3], token_budget=100) == [[1], [0]]


def test_plan_batches_max_batch():
    batches = plan_batches([4] * 10, token_budget=10_000, max_batch=4)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_plan_batches_max_padding_bounds_the_padded_share():
    lengths = [49, 236, 57, 512, 512, 114, 512, 65]
    unpadded = plan_batches(lengths, token_budget=8192, max_padding=1.0)
    assert sorted(map(sorted, unpadded)) == [[0], [1], [2], [3, 4, 6], [5], [7]]
    loose = plan_batches(lengths, token_budget=8192, max_padding=1.2)
    for b in loose:
        assert len(b) * max(lengths[i] for i in b) <= 1.2 * sum(lengths[i] for i in b)
    assert [0, 2, 7] in loose  # 49, 57 and 65 pad by 14%
    assert len(plan_batches(lengths, token_budget=8192)) == 1  # no bound: one batch
    # the budget still splits equal lengths
    assert [len(b) for b in plan_batches([512] * 5, 1024, max_padding=1.0)] == [2, 2, 1]


def test_merge_max_takes_best_window_per_document():
    items = [Encoded(doc=d, ids=np.zeros(1, dtype=np.int64)) for d in (0, 1, 1, 2, 1)]
    out = merge_max(items, np.array([0.5, -1.0, 3.0, 0.1, 2.0], dtype=np.float32), 3)
    assert out.tolist() == pytest.approx([0.5, 3.0, 0.1])


def test_normalise_rules():
    assert normalise(np.array([0.0]), "sigmoid")[0] == pytest.approx(0.5)
    assert normalise(np.array([4.0]), "sigmoid")[0] == pytest.approx(1 / (1 + np.exp(-4)))
    assert normalise(np.array([-1.0, 0.0, 1.0]), "cosine").tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        normalise(np.array([0.0]), "softmax")  # type: ignore[arg-type]


def test_rank_orders_ties_by_index_and_honours_top_n():
    raw = np.array([0.1, 2.0, 2.0, -3.0], dtype=np.float32)
    ranked = rank(raw, "sigmoid")
    assert [r.index for r in ranked] == [1, 2, 0, 3]
    assert ranked[0].score == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert [r.index for r in rank(raw, "sigmoid", top_n=2)] == [1, 2]
    assert len(rank(raw, "sigmoid", top_n=0)) == 4  # 0 = all, as in Cohere
    with pytest.raises(InvalidInput):
        rank(raw, "sigmoid", top_n=-1)


class CountingBackend:
    """Scores = token count of the item, and records the batches it sees."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def encode(self, query, passages, options):
        items = []
        for i, p in enumerate(passages):
            words = p.split()
            for start in range(0, max(len(words), 1), 4):  # 4-word windows
                items.append(Encoded(doc=i, ids=np.arange(len(words[start : start + 4]) + 1)))
        return items

    def score(self, batch):
        self.batches.append([it.n_tokens for it in batch])
        return np.array([it.n_tokens * 10 + it.doc for it in batch], dtype=np.float32)

    def info(self):
        return BackendInfo("fake", "fake", "fp32", "cpu", 16, 1)

    def close(self):
        pass


def test_score_documents_scatters_back_in_document_order():
    be = CountingBackend()
    docs = ["a b c d e f", "a", "a b c"]
    out = score_documents(be, "q", docs, ScoreOptions(), token_budget=6)
    # doc0 windows: 4 words (5 tokens) and 2 words (3 tokens): max is 5 tokens -> 50
    assert out.raw.tolist() == [50.0, 21.0, 42.0]
    assert out.items == 4
    for b in be.batches:
        assert len(b) * max(b) <= 6
