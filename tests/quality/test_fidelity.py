from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from edgerank.engine.agreement import rank_agreement, spearman
from edgerank.quality.texts import probe_groups


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=12).astype(float)  # many ties
    b = a + rng.normal(0, 1.5, size=12)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_rank_agreement_figures():
    ref = [np.array([3.0, 2.0, 1.0]), np.array([0.0, 1.0, 2.0])]
    cand = [np.array([3.1, 1.0, 2.0]), np.array([2.0, 1.0, 0.0])]
    out = rank_agreement(ref, cand)
    assert out["groups"] == 2
    assert out["spearman_mean"] == pytest.approx((0.5 + -1.0) / 2)
    assert out["spearman_se"] == pytest.approx(0.75)  # |0.5 - -1| / sqrt(2), over sqrt(2)
    assert out["top1_kept"] == 0.5
    assert out["max_abs_diff"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        rank_agreement(ref, cand[:1])


def test_probe_groups_are_deterministic_and_mixed_length():
    a, b = probe_groups(seed=3), probe_groups(seed=3)
    assert a == b and len(a) == 24 and all(len(ps) == 10 for _, ps in a)
    lengths = [len(p.split()) for _, ps in a for p in ps]
    assert min(lengths) < 20 and max(lengths) > 80
