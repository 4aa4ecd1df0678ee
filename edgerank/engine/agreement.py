"""Does one scorer rank like another? The agreement figures every fidelity check reports
(install-time proof, calibration, the daemon's live fidelity watch): mean and worst Spearman
per query group (and the mean's standard error), the share of groups whose reference top-1
stays top-1, the largest score gap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(np.asarray(a)), _ranks(np.asarray(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 1.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as scipy.stats.rankdata does."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def rank_agreement(ref: Sequence[np.ndarray], cand: Sequence[np.ndarray]) -> dict[str, float]:
    pairs = list(zip(ref, cand, strict=True))
    rhos = [spearman(r, c) for r, c in pairs]
    kept = [int(np.argmax(r)) == int(np.argmax(c)) for r, c in pairs]
    diffs = [float(np.max(np.abs(np.asarray(r) - np.asarray(c)))) for r, c in pairs]
    # the standard error of the mean: how far from a bar a mean is still noise
    se = float(np.std(rhos, ddof=1) / np.sqrt(len(rhos))) if len(rhos) > 1 else 0.0
    return {
        "groups": len(rhos),
        "spearman_mean": float(np.mean(rhos)),
        "spearman_se": se,
        "spearman_min": float(np.min(rhos)),
        "top1_kept": float(np.mean(kept)),
        "max_abs_diff": float(np.max(diffs)),
    }
