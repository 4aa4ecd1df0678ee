"""Length-bucketed batching, max-over-chunks merge, normalisation and top-n ranking.

Shared by one-off scoring (`edgerank score`) and the daemon's batcher, so both paths
produce identical scores for identical input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgerank.backends.base import Backend, Encoded, Normalise, ScoreOptions
from edgerank.backends.padding import plan_batches
from edgerank.errors import InvalidInput

if TYPE_CHECKING:
    from edgerank.engine.cascade import Cascade


def merge_max(items: Sequence[Encoded], scores: np.ndarray, n_docs: int) -> np.ndarray:
    """One raw score per document: the max over its windows (Cohere's rule for chunks)."""
    out = np.full(n_docs, -np.inf, dtype=np.float32)
    np.maximum.at(out, np.fromiter((it.doc for it in items), dtype=np.int64), scores)
    return out


def normalise(raw: np.ndarray, rule: Normalise) -> np.ndarray:
    """Raw score -> 0..1. Sigmoid for logits (BAAI's normalize=True); cosine maps [-1,1]."""
    raw = np.asarray(raw, dtype=np.float64)
    if rule == "sigmoid":
        return (1.0 / (1.0 + np.exp(-raw))).astype(np.float32)
    if rule == "cosine":
        return np.clip((raw + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown normalisation {rule!r}")


@dataclass(frozen=True)
class Ranked:
    index: int
    raw: float
    score: float  # normalised 0..1


def rank(raw: np.ndarray, rule: Normalise, top_n: int | None = None) -> list[Ranked]:
    """Best first; ties keep the original order. top_n=None or 0 means all."""
    if top_n is not None and top_n < 0:
        raise InvalidInput(f"top_n must be >= 0, got {top_n}")
    norm = normalise(raw, rule)
    order = sorted(range(len(raw)), key=lambda i: (-float(raw[i]), i))
    if top_n:
        order = order[:top_n]
    return [Ranked(i, float(raw[i]), float(norm[i])) for i in order]


@dataclass(frozen=True)
class Scored:
    raw: np.ndarray  # one per document
    tokens: int  # tokens actually run (without padding)
    items: int  # model inputs (more than documents when chunking)


def score_documents(
    backend: Backend,
    query: str,
    documents: Sequence[str],
    options: ScoreOptions = ScoreOptions(),
    token_budget: int = 8192,
    max_batch: int | None = None,
    cascade: Cascade | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Scored:
    """Tokenize once, bucket by length, score, merge windows: one raw score per document;
    with ``cascade`` (an INT8 entry's), the near-ties of the leader rescored in FP32.
    ``progress(done, total)`` hears of every batch scored (model inputs)."""
    items = backend.encode(query, documents, options)
    scores = np.empty(len(items), dtype=np.float32)
    done = 0
    for batch in plan_batches([it.n_tokens for it in items], token_budget, max_batch):
        scores[batch] = backend.score([items[i] for i in batch])
        done += len(batch)
        if progress is not None:
            progress(done, len(items))
    raw = merge_max(items, scores, len(documents))
    if cascade is not None:
        raw = cascade.rescore(items, raw, token_budget=token_budget)
    return Scored(raw=raw, tokens=sum(it.n_tokens for it in items), items=len(items))
