"""The install's judge (convert/judge.py): intervals, rounds, the floor's noise band, heads.

Fake scorers stand in for onnxruntime wherever time would decide: the tests give the CPU
seconds, so nothing here depends on the machine's load.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgerank.backends.base import Encoded
from edgerank.convert import judge
from edgerank.models.serving import RequestShape
from edgerank.models.serving import judge as verdict_of

SHAPE = RequestShape(32, 128, 256)


class Fake:
    """A scorer whose CPU seconds per call come from a list (cycled)."""

    def __init__(self, seconds):
        self.seconds = list(seconds)
        self.calls = 0

    def cpu_seconds(self, batch) -> float:
        s = self.seconds[self.calls % len(self.seconds)]
        self.calls += 1
        return s


def _enc(n_groups=4, per=8, length=40):
    rng = np.random.default_rng(0)
    return [[Encoded(d, rng.integers(5, 900, length), np.zeros(length, np.int64))
             for d in range(per)] for _ in range(n_groups)]  # fmt: skip


def test_timing_rows_have_the_length_and_fill_the_batch():
    for length in (32, 128, 512, 2000):
        rows = judge.timing_rows(_enc(), length)
        assert all(r.n_tokens == min(length, 4 * 8 * 40) or r.n_tokens == length for r in rows)
        assert len(rows) == max(1, judge.TIMED_TOKENS // length)


def test_interval_is_order_statistics_around_the_median():
    assert judge._interval([1.0, 1.2, 1.1, 0.5, 9.0]) == (0.5, 9.0)  # 5 rounds: min..max
    lo, hi = judge._interval([1.0 + 0.01 * k for k in range(11)])
    assert (lo, hi) == (1.02, 1.08)  # 11 rounds: the 3rd from each end


def test_rounds_are_added_only_while_the_interval_straddles_the_cutoff():
    """A clear ratio stops at ROUNDS; a noisy one near the cut-off gets more rounds, up to
    MAX_ROUNDS, and never more."""
    enc = _enc()

    def decided(prof):
        s = verdict_of(prof, SHAPE, int8_mib=1, fp32_mib=2).speed
        return s.low >= 1.1 or s.high < 1.1

    clear = judge.Timer(Fake([2.0]), enc)
    prof, rounds = judge.measured_profile(clear, Fake([1.0]), [128, 256], None, decided)
    assert {len(v) for v in rounds.values()} == {judge.ROUNDS}
    assert prof.at(SHAPE).value == pytest.approx(2.0)
    noisy = judge.Timer(Fake([1.0]), enc)  # ratios 1.3, 0.9 and 1.1 at each length
    cand = Fake([1 / 1.3, 1 / 0.9, 1 / 1.1])
    prof, rounds = judge.measured_profile(noisy, cand, [128, 256], None, decided)
    assert {len(v) for v in rounds.values()} == {judge.MAX_ROUNDS}


def test_a_timed_length_is_not_timed_again():
    timer, cand = judge.Timer(Fake([2.0]), _enc()), Fake([1.0])
    _, first = judge.measured_profile(timer, cand, [128], None, lambda p: True)
    calls = cand.calls
    prof, both = judge.measured_profile(timer, cand, [64, 128], None, lambda p: True, first)
    assert both[128] == first[128]
    assert cand.calls - calls == judge.ROUNDS + 1  # 64 only: its warm-up and rounds
    assert [t.tokens for t in prof.timings] == [64, 128]


@pytest.mark.parametrize(
    "spearman, kept, want",
    [
        (0.9898, 140, "near"),  # the point: 0.0002 under, one standard error is 0.0015
        (0.9850, 140, "misses"),
        (0.9950, 140, "meets"),
        (0.9950, 136, "near"),  # 97.1%: within the binomial spread of 97% over 140 groups
        (0.9950, 132, "misses"),
        (0.9898, 130, "misses"),  # near on one figure, clearly under on the other
    ],
)
def test_a_figure_within_noise_of_the_floor_is_no_verdict(spearman, kept, want):
    fid = {"groups": 140, "spearman_mean": spearman, "spearman_se": 0.0015,
           "top1_kept": kept / 140}  # fmt: skip
    assert judge.against(fid, {"spearman_mean": 0.99, "top1_kept": 0.97}) == want


def test_heads_count_what_the_leader_first_rule_rescores_per_group_size():
    """Pools ordered own-group first: the leader and its near-ties sit in the first 8. The
    count is the served rule's (leader first, then what clears the best FP32 score so far
    minus margin / 2), not the whole head within the margin."""
    tail = [-3.0] * 96
    int8 = [np.array([5.0, 4.95, 1.0, 0.0] + tail)] * 2 + [np.array([5.0] + [-3.0] * 99)]
    fp32 = [
        np.array([5.0, 4.9, 1.0, 0.0] + tail),  # the leader's FP32 keeps 4.95 in the bar: 2
        np.array([5.1, 4.9, 1.0, 0.0] + tail),  # FP32 raises the bar past it: the leader, 1
        np.array([5.0] + [-3.0] * 99),  # the leader alone within the margin: none
    ]
    got = dict(judge.heads(fp32, int8, margin=0.1))
    assert got[8] == 1.0 and got[64] == 1.0  # (2 + 1 + 0) / 3
    assert set(got) == set(judge.POOL_SIZES)
    assert judge.rescored_counts(fp32, int8, 0.1) == [2, 1, 0]


def test_pools_take_their_own_group_then_their_language():
    probe = [(f"q{i}", [f"d{i}.{k}" for k in range(8)]) for i in range(40)]
    langs = ["en"] * 30 + ["fr"] * 10
    pools = judge.pools(probe, langs)
    assert len(pools) == judge.POOL_QUERIES
    for q, docs in pools:
        i = int(q[1:])
        assert docs[:8] == probe[i][1] and len(docs) == judge.POOL_SIZES[-1]
        same = [d for d in docs[8:38] if langs[int(d[1:].split(".")[0])] == langs[i]]
        if langs[i] == "en":
            assert len(same) == 30  # other English groups fill the pool first
