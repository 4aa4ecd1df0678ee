"""Does a quantized model rank like its reference? One harness for every comparison edgerank
makes (install-time checks, calibration, tests, benchmarks); torch-free, so `pull` can check on
edge boxes.

The figures are the ones the acceptance criteria use: mean Spearman per query group, the
share of groups whose reference top-1 stays top-1, and the largest gap between a pair
scored alone and the same pair inside a mixed-length batch (batch-composition dependence).
A scorer is anything that maps (query, passage) pairs to raw scores: an open Backend
(`backend_scorer`) or a plain reference such as a torch model in a test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgerank.backends.base import Backend
from edgerank.backends.onnx import OnnxBackend
from edgerank.engine.agreement import rank_agreement
from edgerank.engine.rank import score_documents
from edgerank.quality.texts import probe_groups

#: (query, passage) pairs -> raw scores: an open Backend (backend_scorer) or a reference
PairScorer = Callable[[list[tuple[str, str]]], np.ndarray]


def measure(ref: PairScorer, cand: PairScorer, groups, gap_groups: int = 8) -> dict[str, float]:
    """Rank agreement of ``cand`` with ``ref`` per query group, and ``cand``'s batch gap: the
    largest |score alone - score inside the group's mixed-length batch| over the first
    ``gap_groups`` groups (every third pair)."""
    refs, cands = [], []
    for query, passages in groups:
        pairs = [(query, p) for p in passages]
        refs.append(np.asarray(ref(pairs), dtype=np.float64))
        cands.append(np.asarray(cand(pairs), dtype=np.float64))
    return {**rank_agreement(refs, cands), "batch_gap": batch_gap(cand, groups, gap_groups)}


def batch_gap(cand: PairScorer | Backend, groups, n_groups: int = 8) -> float:
    """Largest |score alone - score inside its group's mixed-length batch| (every third pair
    of the first ``n_groups`` groups): a score must not depend on its batch mates."""
    score = backend_scorer(cand) if isinstance(cand, Backend) else cand
    gap = 0.0
    for query, passages in groups[:n_groups]:
        pairs = [(query, p) for p in passages]
        together = np.asarray(score(pairs), dtype=np.float64)
        for j in range(0, len(pairs), 3):
            alone = float(np.asarray(score([pairs[j]]))[0])
            gap = max(gap, abs(alone - float(together[j])))
    return gap


def backend_scorer(backend: Backend) -> PairScorer:
    """An open Backend as a scorer of one query's pairs, batched the way the engine does."""

    def score(pairs: list[tuple[str, str]]) -> np.ndarray:
        query = pairs[0][0]
        return score_documents(backend, query, [p for _, p in pairs]).raw

    return score


def compare(ref: Backend, cand: Backend, groups=None) -> dict[str, float]:
    return measure(backend_scorer(ref), backend_scorer(cand), groups or probe_groups())


def compare_onnx(model_dir: Path, ref_file: Path, cand_file: str, max_length: int) -> dict:
    """Fidelity of model_dir/cand_file against an FP32 ONNX file, same tokenizer."""
    length = min(max_length, 256)
    ref = OnnxBackend.from_file(model_dir / ref_file, length, precision="fp32")
    cand = OnnxBackend.from_file(model_dir / cand_file, length, precision="int8")
    try:
        out = compare(ref, cand)
    finally:
        ref.close()
        cand.close()
    return {"reference": "onnx fp32", "probe": "synthetic, 24 groups x 10", **out}
