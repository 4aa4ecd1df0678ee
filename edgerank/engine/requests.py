"""What the service takes and gives: groups of passages under one query, and the outcome of
scoring them (scores, usage, stage times). Transport-free, so every face converts to these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgerank.backends.base import ScoreOptions
from edgerank.engine.rank import Ranked


@dataclass(frozen=True)
class Group:
    """Passages sharing one query and one set of options (one backend.encode call)."""

    query: str
    passages: Sequence[str]
    options: ScoreOptions = ScoreOptions()
    #: where each passage's score goes in the answer; None = 0..len-1
    positions: Sequence[int] | None = None

    def where(self) -> np.ndarray:
        """The answer's positions of this group's passages."""
        if self.positions is None:
            return np.arange(len(self.passages))
        return np.asarray(self.positions, dtype=np.int64)


@dataclass(frozen=True)
class Outcome:
    raw: np.ndarray  # one raw score per position
    windows: np.ndarray  # model inputs per position (> 1 where chunking split a passage)
    tokens: int
    items: int
    chars: int
    tokenization_ns: int
    queue_ns: int
    inference_ns: int
    total_ns: int
    #: positions answered from the score cache (memory or Redis), not by the model
    cached: int = 0
    #: (pairs, inputs, tokens) the model ran for this call; None = all of the above
    scored: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Reranked:
    ranked: list[Ranked]
    outcome: Outcome


def group_pairs(triples: Sequence[tuple[str, str, ScoreOptions]]) -> list[Group]:
    """Group (query, passage, options) by query and options, remembering each position."""
    by_key: dict[tuple[str, ScoreOptions], tuple[list[str], list[int]]] = {}
    for pos, (query, passage, options) in enumerate(triples):
        passages, positions = by_key.setdefault((query, options), ([], []))
        passages.append(passage)
        positions.append(pos)
    return [Group(q, ps, o, pos) for (q, o), (ps, pos) in by_key.items()]
