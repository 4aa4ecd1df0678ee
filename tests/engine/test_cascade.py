"""The cascade: which passages are rescored in FP32 (leader first), that the rule keeps FP32's
top-1, and that the one-off path and the daemon apply it alike (fake backends; the real files are in
tests/convert/test_backoff.py and tests/quality/)."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from edgerank.engine.cascade import Cascade, head, leader_first, with_fp32_head
from edgerank.engine.rank import score_documents
from edgerank.engine.service import Service
from edgerank.server.settings import Settings
from tests.engine.test_batcher import FakeBackend, docs


class Shifted(FakeBackend):
    """A "reference" that scores like FakeBackend plus a constant, so rescored positions
    are told apart from the others in the answer."""

    def __init__(self, shift: float = 10.0):
        super().__init__()
        self.shift = shift
        self.closed = False

    def score(self, batch):
        return super().score(batch) + np.float32(self.shift)

    def close(self):
        self.closed = True


def test_head_is_the_leaders_near_ties_or_nothing():
    raw = np.array([0.1, 2.0, 1.95, -3.0, 1.2], dtype=np.float32)
    assert sorted(head(raw, 0.1)) == [1, 2]
    assert sorted(head(raw, 0.9)) == [1, 2, 4]
    assert len(head(raw, 0.01)) == 0  # the leader alone: nothing to rescore
    assert len(head(np.array([5.0]), 100.0)) == 0
    assert len(head(np.array([]), 1.0)) == 0


def test_a_margin_of_twice_the_error_always_keeps_fp32s_top1():
    """The reason for 2e: when no score moves by more than e, FP32's best passage lies
    within 2e of the INT8 leader, so rescoring that head in FP32 puts it first. A margin of
    e alone is not enough, and this test sees it fail."""
    rng = np.random.default_rng(0)
    missed = {1.0: 0, 2.0: 0}
    for _ in range(4000):
        n = int(rng.integers(2, 60))
        fp32 = rng.normal(0.0, 1.0, n)
        e = float(rng.uniform(0.01, 0.5))
        int8 = fp32 + rng.uniform(-e, e, n)
        for k in missed:
            h = head(int8, k * e)
            served = int8.copy()
            served[h] = fp32[h]
            missed[k] += int(np.argmax(served) != np.argmax(fp32))
    assert missed[2.0] == 0
    assert missed[1.0] > 0


class Jittered(FakeBackend):
    """A "reference" that scores like FakeBackend moved by a fixed pseudo-random amount in
    [-e, e] per item: an FP32 graph whose INT8 twin errs by at most e. Records its calls."""

    def __init__(self, e: float):
        super().__init__()
        self.e = e
        self.calls: list[list[int]] = []

    def score(self, batch):
        self.calls.append([int(it.ids[0]) for it in batch])
        jitter = [np.cos(float(it.ids.sum()) * 7.3) * self.e for it in batch]
        return super().score(batch) + np.asarray(jitter, dtype=np.float32)


def test_leader_first_keeps_fp32s_top1_with_fewer_rescored():
    """The same guarantee as rescoring the whole 2e head, seen on random groups whose INT8
    scores err by at most e: FP32's top-1 always comes first, and the rule never asks for
    more than the head, usually far less."""
    rng = np.random.default_rng(1)
    asked = whole = 0
    for _ in range(4000):
        n = int(rng.integers(2, 60))
        fp32 = rng.normal(0.0, 1.0, n)
        e = float(rng.uniform(0.01, 0.5))
        int8 = fp32 + rng.uniform(-e, e, n)
        served, k = with_fp32_head(int8, fp32, 2 * e)
        assert np.argmax(served) == np.argmax(fp32)
        h = head(int8, 2 * e)
        assert k <= len(h) and (k == 0) == (len(h) == 0)
        asked, whole = asked + k, whole + len(h)
    assert asked < 0.8 * whole


def test_leader_first_asks_the_leader_then_what_clears_the_bar():
    int8 = np.array([1.0, 3.0, 2.9, 2.7, 0.0, 2.2])
    fp32 = np.array([1.0, 2.95, 3.1, 2.6, 0.0, 2.2])
    rounds = []

    def ask(pos):
        rounds.append(list(pos))
        return fp32[pos]

    pos, got = leader_first(int8, 1.0, ask)  # e = 0.5; the head is 1, 2, 3, 5 (>= 2.0)
    # the leader (1) scores 2.95: bar 2.45 takes 2 and 3; 2 scores 3.1: bar 2.6, 5 is below
    assert rounds == [[1], [2, 3]]
    np.testing.assert_allclose(got, fp32[pos])
    assert len(leader_first(np.array([3.0, 1.0]), 1.0, ask)[0]) == 0  # the leader alone


def test_rescore_runs_each_groups_rule_with_the_groups_rounds_together():
    be, ref = FakeBackend(), Jittered(e=0.15)
    cascade = Cascade(ref, margin=0.3)
    a, b = docs(1, 9), docs(2, 7)
    items = be.encode("q w", a, _opts()) + [
        dataclasses.replace(it, doc=it.doc + len(a)) for it in be.encode("q w", b, _opts())
    ]
    raw = np.concatenate([score_documents(be, "q w", a).raw, score_documents(be, "q w", b).raw])
    groups = [np.arange(len(a)), np.arange(len(a), len(a) + len(b))]
    fp32 = np.concatenate([
        score_documents(Jittered(0.15), "q w", a).raw, score_documents(Jittered(0.15), "q w", b).raw
    ])  # fmt: skip
    got = cascade.rescore(items, raw, groups)
    want, count, rounds = raw.copy(), 0, 0
    for g in groups:
        served, n = with_fp32_head(raw[g], fp32[g], 0.3)
        want[g], count = served, count + n
        rounds = max(rounds, len(_rounds(raw[g], fp32[g], 0.3)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert cascade.rescored == count > 2
    # both groups' leaders come first (one round), then what clears each group's bar
    first = [m for call in ref.calls for m in call][:2]
    assert sorted(first) == [1, 2] and rounds > 1
    # each group has its own leader: one group's near-ties are not measured from another's
    split = [np.arange(3), np.arange(3, 6)]
    raw = np.array([3.0, 2.9, 0.0, 1.0, 0.95, -1.0], dtype=np.float32)
    assert sorted(Cascade(ref, 0.2).heads(raw, split)) == [0, 1, 3, 4]
    assert sorted(Cascade(ref, 0.2).heads(raw)) == [0, 1]


def _rounds(int8, fp32, margin) -> list:
    rounds: list = []
    leader_first(int8, margin, lambda p: (rounds.append(p), fp32[p])[1])
    return rounds


def test_chunked_passages_take_the_references_max_over_windows():
    be = FakeBackend()
    passages = docs(3, 6, words=40)
    opts = _opts(truncation="chunk", max_tokens_per_doc=8)
    int8 = score_documents(be, "q", passages, opts)
    # every passage is in the head, and 0.5 up stays within e = 5 of the leader's 0.5 up
    cascade = Cascade(Shifted(0.5), margin=10.0)
    got = score_documents(be, "q", passages, opts, cascade=cascade)
    assert int8.items > len(passages)  # windows, really
    np.testing.assert_allclose(got.raw, int8.raw + 0.5, rtol=0, atol=1e-5)


def test_the_head_is_scored_unpadded_and_within_the_budget():
    """A head is a few passages of unlike length: padded to the longest they cost the FP32
    graph up to twice their own tokens, so each length is its own batch; a long passage's
    equal-length windows share one, as far as the token budget allows."""

    class Batches(Shifted):
        def __init__(self):
            super().__init__()
            self.widths: list[list[int]] = []

        def score(self, batch):
            self.widths.append([it.n_tokens for it in batch])
            return super().score(batch)

    be, ref = FakeBackend(), Batches()
    ref.shift = 0.5  # within e of the leader: every passage is asked for
    words = [3, 9, 5, 40, 40]  # the last two are chunked into equal windows
    passages = [" ".join(["w"] * n) for n in words]
    opts = _opts(truncation="chunk", max_tokens_per_doc=12)
    items = be.encode("q", passages, opts)
    got = score_documents(be, "q", passages, opts, token_budget=48, cascade=Cascade(ref, 99))
    assert len(ref.widths) > 3
    assert sorted(n for w in ref.widths for n in w) == sorted(it.n_tokens for it in items)
    for w in ref.widths:
        assert len(set(w)) == 1 and sum(w) <= max(48, w[0])
    assert any(len(w) > 1 for w in ref.widths)  # equal windows batched together
    plain = score_documents(be, "q", passages, opts).raw
    np.testing.assert_allclose(got.raw, plain + 0.5, rtol=0, atol=1e-5)


def test_the_daemon_answers_what_the_one_off_path_does():
    settings = Settings(max_documents=50, batch_wait_ms=0.5)

    async def scenario():
        service = Service(settings.engine())
        ref = Shifted()
        await service.start(FakeBackend(), cascade=Cascade(ref, margin=0.4))
        passages = docs(4, 30)
        got = await service.rerank("a b", passages)
        direct = score_documents(FakeBackend(), "a b", passages, cascade=Cascade(Shifted(), 0.4))
        served = np.empty(len(passages), dtype=np.float32)
        for r in got.ranked:
            served[r.index] = r.raw
        np.testing.assert_allclose(served, direct.raw, rtol=0, atol=1e-5)
        plain = score_documents(FakeBackend(), "a b", passages).raw
        _, n_first = with_fp32_head(plain, plain + 10.0, 0.4)
        assert len(head(plain, 0.4)) > 1 and n_first == 1  # the leader, 10 up, stands alone
        # pairs of two queries, interleaved: each query's passages are their own group
        pairs = [(q, p) for p in docs(5, 6) for q in ("x y", "z")]
        outcome = await service.score_pairs(pairs)
        count = n_first
        for q in ("x y", "z"):
            pos = [i for i, (qq, _) in enumerate(pairs) if qq == q]
            alone = score_documents(FakeBackend(), q, [pairs[i][1] for i in pos]).raw
            want, n = with_fp32_head(alone, alone + 10.0, 0.4)
            np.testing.assert_allclose(outcome.raw[pos], want, rtol=0, atol=1e-5)
            count += n
        text, _ = service.metrics.render()
        line = next(ln for ln in text.decode().splitlines() if ln.startswith("edgerank_cascade"))
        assert float(line.split()[-1]) == service.cascade.rescored == count
        service.close()
        assert ref.closed

    asyncio.run(scenario())


def _opts(**kw):
    from edgerank.backends.base import ScoreOptions

    return ScoreOptions(**kw)


@pytest.mark.parametrize("recipe, margin", [({}, None), ({"cascade": {"margin": 0.25}}, 0.25)])
def test_margin_comes_from_the_recipe(recipe, margin):
    from edgerank.engine.cascade import margin_of

    assert margin_of(recipe) == margin


def test_a_real_entry_serves_its_cascade_in_the_daemon(tiny_bert_hf, tmp_path):
    """A tiny model installed with the cascade, opened as `serve` opens it: the daemon's
    answer is the one-off path's, and the rescored positions carry the FP32 graph's scores."""
    from edgerank.backends.onnx import OnnxBackend
    from edgerank.install.store import ModelStore
    from edgerank.models.manifest import Manifest
    from edgerank.startup.load import load
    from tests.support.install import any_int8

    d = ModelStore(tmp_path / "home").import_onnx("t", tiny_bert_hf, policy=any_int8(True))
    passages = [f"passage {i} about " + " ".join(["rivers"] * (i % 5 + 1)) for i in range(12)]

    async def scenario():
        loaded = load(str(d), threads=1)
        assert loaded.cascade is not None
        service = Service(Settings(batch_wait_ms=0.5).engine())
        await service.start(loaded.backend, cascade=loaded.cascade)
        got = await service.rerank("which river", passages)
        service.close()
        return {r.index: r.raw for r in got.ranked}

    served = asyncio.run(scenario())
    loaded = load(str(d), threads=1)
    direct = score_documents(loaded.backend, "which river", passages, cascade=loaded.cascade)
    int8 = score_documents(loaded.backend, "which river", passages).raw
    loaded.close()
    np.testing.assert_allclose([served[i] for i in range(12)], direct.raw, rtol=0, atol=1e-6)
    m = Manifest.read(d)
    fp32 = OnnxBackend.from_file(d / m.recipe["reference_file"], m.max_length)
    ref = score_documents(fp32, "which river", passages).raw
    margin = m.recipe["cascade"]["margin"]
    assert len(head(int8, margin)) > 1
    want, n = with_fp32_head(int8, ref, margin)
    assert n >= 1
    np.testing.assert_allclose(direct.raw, want, rtol=0, atol=1e-5)
