"""Does a quantized model rank like its reference? Torch-free, so `pull` can check on edge boxes.

The figures are the ones the acceptance criteria use: mean Spearman per query group, the
share of groups whose reference top-1 stays top-1, and the largest gap between a pair
scored alone and the same pair inside a mixed-length batch (batch-composition dependence).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgerank.backends.base import Backend, ScoreOptions
from edgerank.engine.rank import score_documents

TOPICS = [
    "sleep cat night dream rest nap bed tired",
    "market stock price bank money trade fund rate",
    "river ocean ship harbour island water coast boat",
    "doctor hospital medicine health nurse fever care dose",
    "music piano guitar song concert band album tune",
    "school teacher student book exam class lesson grade",
    "rain storm cloud snow wind weather winter summer",
    "engine car road wheel fuel train travel speed",
]
FILLER = "the of and to in is was for on that with as by at from it an be this which".split()


def probe_groups(n_groups: int = 24, per_group: int = 10, seed: int = 7):
    """Synthetic (query, passages) groups with graded topical overlap and mixed lengths."""
    rng = random.Random(seed)
    groups = []
    for _ in range(n_groups):
        topic = rng.choice(TOPICS).split()
        query = " ".join(rng.sample(topic, 3))
        passages = []
        for _ in range(per_group):
            words = rng.choice(TOPICS).split() if rng.random() < 0.5 else topic
            n = rng.randint(6, 120)
            passages.append(" ".join(rng.choice(words + FILLER) for _ in range(n)))
        groups.append((query, passages))
    return groups


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
    return {
        "groups": len(rhos),
        "spearman_mean": float(np.mean(rhos)),
        "spearman_min": float(np.min(rhos)),
        "top1_kept": float(np.mean(kept)),
        "max_abs_diff": float(np.max(diffs)),
    }


def batch_gap(backend: Backend, groups, n_groups: int = 8) -> float:
    """Largest |score alone - score inside its group's mixed-length batch|."""
    gap = 0.0
    for query, passages in groups[:n_groups]:
        items = backend.encode(query, passages, ScoreOptions())
        together = backend.score(items)
        for i in range(0, len(items), 3):
            gap = max(gap, abs(float(backend.score([items[i]])[0]) - float(together[i])))
    return gap


def compare(ref: Backend, cand: Backend, groups=None) -> dict[str, float]:
    groups = groups or probe_groups()
    r = [score_documents(ref, q, ps).raw for q, ps in groups]
    c = [score_documents(cand, q, ps).raw for q, ps in groups]
    return {**rank_agreement(r, c), "batch_gap": batch_gap(cand, groups)}


def compare_onnx(model_dir: Path, ref_file: Path, cand_file: str, max_length: int) -> dict:
    """Fidelity of model_dir/cand_file against an FP32 ONNX file, same tokenizer."""
    from edgerank.backends.onnx import OnnxBackend
    from edgerank.manifest import Manifest

    def open_(rel: str | Path, precision: str) -> OnnxBackend:
        m = Manifest("probe", "onnx", precision, str(rel), min(max_length, 256))
        return OnnxBackend(model_dir, m, threads=1)

    ref, cand = open_(ref_file, "fp32"), open_(cand_file, "int8")
    try:
        out = compare(ref, cand)
    finally:
        ref.close()
        cand.close()
    return {"reference": "onnx fp32", "probe": "synthetic, 24 groups x 10", **out}
