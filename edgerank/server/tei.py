"""TEI's rerank rules, once for both faces: tei.v1 over gRPC, POST /rerank and GET /info over HTTP.

TEI refuses an input longer than the model's window unless the request says truncate=true.
edgerank scores a truncate=false request in chunk mode, which never cuts a passage: one that
did not fit shows up as more than one window, and is refused afterwards (a cached answer
carries its window count too). A query is never chunked, so whether it reaches the model
whole is asked of the backend's tokenizer before any scoring. Both refusals are TooLarge
(HTTP 413, gRPC INVALID_ARGUMENT, the same metric reason on both faces).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import edgerank
from edgerank.backends.base import ScoreOptions
from edgerank.engine.rank import rank
from edgerank.engine.requests import Group, Outcome
from edgerank.engine.service import Service
from edgerank.errors import TooLarge

DIRECTIONS = ("right", "left")


@dataclass(frozen=True)
class TeiRank:
    """One entry of TEI's answer: best first; `score` raw or normalised as asked."""

    index: int
    score: float
    text: str | None = None


@dataclass(frozen=True)
class TeiInfo:
    """TEI's Info, the same facts on both faces (the wire names are TEI's)."""

    model_id: str
    model_dtype: str
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    tokenization_workers: int
    version: str


def options(truncate: bool, direction: str = "right") -> ScoreOptions:
    """truncate=false is chunk mode, checked afterwards (`answer`); true cuts on `direction`."""
    return ScoreOptions(
        truncation="truncate" if truncate else "chunk",
        direction=direction,  # type: ignore[arg-type]
    )


def check_request(service: Service, query: str, texts: Sequence[str]) -> None:
    """What a TEI body must hold, checked before any work (the stream checks per message)."""
    service.check_text("query", query, empty_ok=False)
    service.check_count(len(texts), "texts")
    for i, text in enumerate(texts):
        service.check_text(f"text {i}", text)


async def answer(
    service: Service,
    groups: Sequence[Group],
    texts: Sequence[str],
    *,
    raw_scores: bool,
    return_text: bool,
    deadline: float | None = None,
    top_n: int = 0,
) -> tuple[Outcome, list[TeiRank]]:
    """Score TEI's groups, refuse what TEI would refuse, and rank the rest (the best
    `top_n`, 0 = all: an HTTP extension)."""
    strict = [g for g in groups if g.options.truncation == "chunk"]
    for g in strict:
        if not await service.query_fits(g.query, g.options):
            raise TooLarge(
                f"the query is too long for the model's maximum of {service.info.max_length} "
                "tokens (it would be cut); set truncate=true"
            )
    outcome = await service.score_groups(groups, len(texts), deadline)
    too_long = [i for i, w in enumerate(outcome.windows) if w > 1]
    if too_long:
        raise TooLarge(
            f"text {too_long[0]} is longer than the model's maximum of "
            f"{service.info.max_length} tokens; set truncate=true"
        )
    ranks = [
        TeiRank(
            index=r.index,
            score=r.raw if raw_scores else r.score,
            text=texts[r.index] if return_text else None,
        )
        for r in rank(outcome.raw, service.info.normalise, top_n or None)
    ]
    return outcome, ranks


def info(service: Service) -> TeiInfo:
    """What both Info answers report: the first served name, the shape the batcher runs."""
    backend, s = service.info, service.config
    tokens, pairs = service.batch_shape
    return TeiInfo(
        model_id=service.served_name(None),
        model_dtype=backend.precision,
        max_concurrent_requests=s.max_queue_pairs,
        max_input_length=backend.max_length,
        max_batch_tokens=tokens,
        max_batch_requests=pairs,
        max_client_batch_size=s.max_documents,
        tokenization_workers=service.tokenization_workers,
        version=edgerank.__version__,
    )
