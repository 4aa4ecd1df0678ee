"""Thin gRPC servicers: edgerank.v1.Reranker and TEI's tei.v1.Rerank / tei.v1.Info.

Each method converts its message into a Service call and the result back; errors are
mapped by status.mapped, never here.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

import edgerank
from edgerank.backends.base import ScoreOptions
from edgerank.engine.rank import Ranked, normalise
from edgerank.engine.requests import Group, Outcome, group_pairs
from edgerank.engine.service import Service
from edgerank.errors import InvalidInput, TooLarge
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc
from edgerank.proto.tei.v1 import tei_pb2 as tei
from edgerank.proto.tei.v1 import tei_pb2_grpc as tei_grpc
from edgerank.server import tei as tei_rules
from edgerank.server.decoding import Undecodable, decoded
from edgerank.server.status import mapped
from edgerank.server.transport import Token

TRUNCATION = {
    pb.TRUNCATION_UNSPECIFIED: "truncate",
    pb.TRUNCATION_TRUNCATE: "truncate",
    pb.TRUNCATION_CHUNK: "chunk",
}
DIRECTION = {
    pb.DIRECTION_UNSPECIFIED: "right",
    pb.DIRECTION_RIGHT: "right",
    pb.DIRECTION_LEFT: "left",
}
TEI_DIRECTION = {tei.TRUNCATION_DIRECTION_RIGHT: "right", tei.TRUNCATION_DIRECTION_LEFT: "left"}


# -- converters ------------------------------------------------------------------------


def _enum(table: dict[int, str], value: int, what: str) -> str:
    try:
        return table[value]
    except KeyError:
        raise InvalidInput(f"unknown {what} value {value}") from None


def options_from(msg: pb.RerankRequest | pb.ScoreRequest) -> ScoreOptions:
    return ScoreOptions(
        truncation=_enum(TRUNCATION, msg.truncation, "truncation"),  # type: ignore[arg-type]
        direction=_enum(DIRECTION, msg.direction, "direction"),  # type: ignore[arg-type]
        instruction=msg.instruction if msg.HasField("instruction") else None,
        max_tokens_per_doc=msg.max_tokens_per_doc if msg.HasField("max_tokens_per_doc") else None,
    )


def _timings(outcome: Outcome) -> dict[str, int]:
    """The stage times both APIs report, under the field names they share."""
    return {
        "tokenization_time_ns": outcome.tokenization_ns,
        "queue_time_ns": outcome.queue_ns,
        "inference_time_ns": outcome.inference_ns,
        "total_time_ns": outcome.total_ns,
    }


def metadata_to(outcome: Outcome) -> pb.Metadata:
    return pb.Metadata(tokens=outcome.tokens, inputs=outcome.items, **_timings(outcome))


def results_to(
    ranked: Sequence[Ranked], documents: Sequence[str] | None, raw_scores: bool
) -> list[pb.Result]:
    out = []
    for r in ranked:
        result = pb.Result(
            index=r.index,
            score=r.raw if raw_scores else r.score,
            normalised_score=r.score,
            raw_score=r.raw,
        )
        if documents is not None:
            result.document = documents[r.index]
        out.append(result)
    return out


def tei_metadata_to(outcome: Outcome) -> tei.Metadata:
    return tei.Metadata(
        compute_chars=outcome.chars, compute_tokens=outcome.tokens, **_timings(outcome)
    )


#: BackendInfo fields that edgerank.v1's Info reports, under the same names
SERVED = ("model", "backend", "precision", "device", "max_length", "threads", "normalise")
#: settings that edgerank.v1's Limits reports, under the same names (besides the batch shape)
LIMITS = (
    "max_documents",
    "max_document_chars",
    "max_message_bytes",
    "max_queue_pairs",
    "max_queue_tokens",
    "batch_wait_ms",
)


def info_to(service: Service) -> pb.InfoResponse:
    """What is served and under which limits; `probe` carries the hardware summary. The batch
    shape is the one the batcher runs with, not the settings' 0 = auto."""
    info, s = service.info, service.config
    tokens, pairs = service.batch_shape
    limits = {name: getattr(s, name) for name in LIMITS}
    return pb.InfoResponse(
        **{name: getattr(info, name) for name in SERVED},
        limits=pb.Limits(**limits, max_batch_tokens=tokens, max_batch_pairs=pairs or 0),
        probe=service.hardware,
        details={k: str(v) for k, v in info.details.items()},
        version=edgerank.__version__,
        load=pb.Load(**service.load()),
    )


def tei_info_to(service: Service) -> tei.InfoResponse:
    """TEI's Info (server/tei.py's facts, as GET /info reports them), a reranker."""
    facts = tei_rules.info(service)
    return tei.InfoResponse(model_type=tei.MODEL_TYPE_RERANKER, **dataclasses.asdict(facts))


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on time.monotonic()'s clock (None = the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


# -- shared guard ----------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def handler(method: F) -> F:
    """Every unary RPC: errors mapped, bearer token checked, counted for the shutdown drain."""

    @functools.wraps(method)
    async def wrapper(self: _Guarded, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._guard(context)
        if isinstance(request, Undecodable):
            raise request.refuse()
        with self.service.call():
            return await method(self, request, context)

    return mapped(wrapper)  # type: ignore[return-value]


def stream_handler(method: F) -> F:
    """A client-streaming RPC: like `handler`, but the method counts itself in flight
    (self.service.call()) only once the stream is read: a stalled sender holds no drain."""

    @functools.wraps(method)
    async def wrapper(self: _Guarded, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._guard(context)
        self.service.accepting()
        return await method(self, decoded(requests), context)

    return mapped(wrapper)  # type: ignore[return-value]


async def authorise(token: Token, context: grpc.aio.ServicerContext) -> None:
    """Bearer token for TCP peers (Unix-socket peers are trusted by file mode)."""
    if context.peer().startswith("unix:"):
        return
    sent = dict(context.invocation_metadata() or ()).get("authorization", "")
    if not token.ok(sent):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


class _Guarded:
    def __init__(self, service: Service, token: Token | None = None):
        self.service = service
        self.token = token if token is not None else Token()

    async def _guard(self, context: grpc.aio.ServicerContext) -> None:
        await authorise(self.token, context)

    def _check_size(self, nbytes: int) -> None:
        limit = self.service.config.max_message_bytes
        if nbytes > limit:
            raise TooLarge(f"request of {nbytes} bytes, over max_message_bytes ({limit})")

    def _check_count(self, n: int, what: str, setting: str) -> None:
        """A client stream may not carry more items than one request may (max_documents)."""
        limit = self.service.config.max_documents
        if n > limit:
            raise TooLarge(f"more than {limit} {what} in the stream ({setting})")

    async def _bounded(self, messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """A client stream's messages, refused once their bytes pass max_message_bytes."""
        nbytes = 0
        async for msg in messages:
            nbytes += msg.ByteSize()
            self._check_size(nbytes)
            yield msg


# -- edgerank.v1 -----------------------------------------------------------------------


class Reranker(_Guarded, pb_grpc.RerankerServicer):
    async def _rerank(
        self, msg: pb.RerankRequest, documents: Sequence[str], context: grpc.aio.ServicerContext
    ) -> pb.RerankResponse:
        model = msg.model if msg.HasField("model") else None
        reranked = await self.service.rerank(
            msg.query,
            documents,
            top_n=msg.top_n,
            options=options_from(msg),
            model=model,
            deadline=deadline_of(context),
        )
        return pb.RerankResponse(
            results=results_to(
                reranked.ranked, documents if msg.return_documents else None, msg.raw_scores
            ),
            metadata=metadata_to(reranked.outcome),
            model=self.service.served_name(model),  # the name asked for, as HTTP answers
        )

    @handler
    async def Rerank(self, request: pb.RerankRequest, context) -> pb.RerankResponse:
        self._check_size(request.ByteSize())
        return await self._rerank(request, list(request.documents), context)

    @stream_handler
    async def RerankStream(
        self, request_iterator: AsyncIterator[pb.RerankRequest], context
    ) -> pb.RerankResponse:
        first: pb.RerankRequest | None = None
        documents: list[str] = []
        async for msg in self._bounded(request_iterator):
            first = first or msg
            documents.extend(msg.documents)
            self._check_count(len(documents), "documents", "max_documents")
        if first is None:
            raise InvalidInput("empty stream: no query and no documents")
        with self.service.call():
            return await self._rerank(first, documents, context)

    @handler
    async def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        self._check_size(request.ByteSize())
        model = request.model if request.HasField("model") else None
        outcome = await self.service.score_pairs(
            [(p.query, p.passage) for p in request.pairs],
            options=options_from(request),
            model=model,
            deadline=deadline_of(context),
        )
        return pb.ScoreResponse(
            raw_scores=outcome.raw.tolist(),
            normalised_scores=normalise(outcome.raw, self.service.info.normalise).tolist(),
            metadata=metadata_to(outcome),
            model=self.service.served_name(model),
        )

    @handler
    async def Info(self, request: pb.InfoRequest, context) -> pb.InfoResponse:
        return info_to(self.service)


# -- tei.v1 ----------------------------------------------------------------------------


def _tei_options(truncate: bool, direction: int) -> ScoreOptions:
    return tei_rules.options(truncate, _enum(TEI_DIRECTION, direction, "truncation_direction"))


class TeiRerank(_Guarded, tei_grpc.RerankServicer):
    async def _answer(
        self,
        groups: list[Group],
        texts: Sequence[str],
        raw_scores: bool,
        return_text: bool,
        context: grpc.aio.ServicerContext,
    ) -> tei.RerankResponse:
        outcome, ranks = await tei_rules.answer(
            self.service,
            groups,
            texts,
            raw_scores=raw_scores,
            return_text=return_text,
            deadline=deadline_of(context),
        )
        return tei.RerankResponse(
            ranks=[tei.Rank(**dataclasses.asdict(r)) for r in ranks],
            metadata=tei_metadata_to(outcome),
        )

    @handler
    async def Rerank(self, request: tei.RerankRequest, context) -> tei.RerankResponse:
        self._check_size(request.ByteSize())
        texts = list(request.texts)
        tei_rules.check_request(self.service, request.query, texts)
        options = _tei_options(request.truncate, request.truncation_direction)
        group = Group(request.query, texts, options)
        return await self._answer([group], texts, request.raw_scores, request.return_text, context)

    @stream_handler
    async def RerankStream(
        self, request_iterator: AsyncIterator[tei.RerankStreamRequest], context
    ) -> tei.RerankResponse:
        first: tei.RerankStreamRequest | None = None
        triples: list[tuple[str, str, ScoreOptions]] = []
        async for msg in self._bounded(request_iterator):
            first = first or msg
            self.service.check_text(f"query {len(triples)}", msg.query, empty_ok=False)
            self.service.check_text(f"text {len(triples)}", msg.text)
            options = _tei_options(msg.truncate, msg.truncation_direction)
            triples.append((msg.query, msg.text, options))
            self._check_count(len(triples), "texts", "max_client_batch_size")
        if first is None:
            raise InvalidInput("empty stream: no query and no texts")
        texts = [t for _, t, _ in triples]
        with self.service.call():
            return await self._answer(
                group_pairs(triples), texts, first.raw_scores, first.return_text, context
            )


class TeiInfo(_Guarded, tei_grpc.InfoServicer):
    @handler
    async def Info(self, request: tei.InfoRequest, context) -> tei.InfoResponse:
        return tei_info_to(self.service)
