"""The HTTP face: the rerank shapes RAG tools already speak, TEI's /info, /health, /metrics.

    POST /v2/rerank   Cohere: {model?, query, documents: [str], top_n?, max_tokens_per_doc?,
                      return_documents?} -> {id, results: [{index, relevance_score}], meta}
    POST /v1/rerank   Jina and Cohere v1: {model?, query, documents: [str | {text}], top_n?,
                      return_documents? (Jina's default: true), max_tokens_per_doc?}
                      -> {id, model, usage, results: [{index, relevance_score, document}], meta}
    POST /rerank      TEI: {query, texts: [str], truncate?, truncation_direction?, raw_scores?,
                      return_text?} -> [{index, score, text?}] (a bare array); or the
                      Cohere-style body Infinity and vLLM take there (documents) -> Cohere's
    GET  /info        TEI's model info (a reranker), plus the served model names
    GET  /health      200 {"status": "serving"}; 503 while loading, warming up, draining, or
                      when the inference worker fails its check (Service.healthy)
    GET  /metrics     Prometheus text (OpenMetrics when the scraper asks), see engine/metrics.py

Scores: `relevance_score` (Cohere, Jina) is always the normalised 0..1 score (sigmoid of the
logit; (cos+1)/2 for the bi-encoder); TEI's `score` is that same normalised score unless
raw_scores=true, then the model's raw logit. Clients must not apply a sigmoid again. Results
are best first, cut to top_n (0 or absent = all), and always carry the document's index in
the request. max_tokens_per_doc caps each model input below the model's own maximum.

Long documents: chunked, max kept (Cohere) on /v2/rerank; truncated on /v1/rerank; on /rerank
refused (413) unless truncate=true, cut on the side truncation_direction names (TEI).

Errors come from status.py's one table (400 invalid input, 408 body not sent within
read_timeout_s, 413 too many or too large, 429 overloaded with Retry-After, 503 loading or
draining, 500 a bug), as JSON {"error": text, "error_type": reason, "message": text}:
`error` is TEI's key, `message` Cohere's; on /rerank `error_type` is TEI's own value. The
body limit (max_message_bytes) is enforced from Content-Length before the body is read (and
before "100 Continue"), and while reading a chunked one. A call counts in flight (the
shutdown drain waits for it) only once its body is read.

Security: on TCP, every endpoint but /health needs `Authorization: Bearer <token>` when a
token is configured (the gRPC setting); Unix-socket peers are trusted by the socket's file
mode (0660). With no host, `http` binds 127.0.0.1. The TLS certificate of the gRPC listener,
when set, serves HTTPS here too.

Why aiohttp: it runs on the asyncio loop grpc.aio already owns (one process, one loop,
one Service: the batcher and admission are shared by construction); its HTTP/1.1 parser is
C (llhttp), it handles keep-alive, chunked bodies, Expect and pipelining correctly, and its
dependency tree is small and pure asyncio (multidict, yarl, frozenlist, aiosignal...) with no
ASGI server, no framework and no pydantic. A hand-written HTTP/1.1 server would be smaller
still, but request parsing is where servers get security bugs; an ASGI stack (uvicorn +
starlette/FastAPI) adds a second event-loop owner and more layers for no gain here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError

from edgerank.backends.base import ScoreOptions
from edgerank.engine.requests import Group, Reranked
from edgerank.engine.service import Service
from edgerank.errors import EdgerankError, InvalidInput, ReadTimeout, TooLarge
from edgerank.server import tei as tei_rules
from edgerank.server import transport
from edgerank.server.http_fields import (
    TEI_ERROR_TYPES,
    cohere_body,
    direction_of,
    get_field,
    jina_body,
    kind_of,
    no_surrogates,
    result_items,
    string_list,
    tei_info,
    top_n_of,
)
from edgerank.server.http_peers import ConnectionGuard
from edgerank.server.status import BUG, GONE, lookup, retry_after_s
from edgerank.server.transport import Token

log = logging.getLogger(__name__)

#: route path -> endpoint label in edgerank_requests_total; only these are counted
ENDPOINTS = {"/v2/rerank": "cohere", "/v1/rerank": "jina", "/rerank": "tei"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- request fields --------------------------------------------------------------------


def _dumps(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # allow_nan=False: NaN and Infinity are not JSON; the service never lets one through,
    # and should one come, it is a 500 (a bug), never an answer no client can parse
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return web.Response(
        body=body.encode(), status=status, headers=headers, content_type="application/json"
    )


def _error(status: int, message: str, reason: str, headers: dict[str, str] | None = None):
    body = {"error": message, "error_type": reason, "message": message}
    return _dumps(body, status, headers)


# -- the application -------------------------------------------------------------------


class Api:
    """The handlers, around one Service; a `token` of '' = no check."""

    def __init__(self, service: Service, token: Token | None = None, read_timeout_s: float = 30.0):
        self.service = service
        self.token = token if token is not None else Token()
        self._limit = service.config.max_message_bytes
        self._read_timeout = read_timeout_s
        #: the open connections (set once the server exists: start())
        self.guard: ConnectionGuard | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._edge], client_max_size=self._limit + 1)
        for path, shape in (
            ("/v2/rerank", self.cohere),
            ("/v1/rerank", self.jina),
            ("/rerank", self.rerank),
        ):
            app.router.add_post(path, self._endpoint(shape), expect_handler=self._expect)
        app.router.add_get("/info", self.info)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app

    # -- edge: auth, errors, metrics, drain accounting ----------------------------------

    def _authorised(self, request: web.Request) -> bool:
        if transport.unix_peer(request.transport):
            return True
        return self.token.ok(request.headers.get("Authorization", ""))

    @web.middleware
    async def _edge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = self.guard
        if guard is None:
            return await self._answer(request, handler)
        guard.begin(request.protocol)
        try:
            return await self._answer(request, handler)
        finally:
            guard.end(request.protocol)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        endpoint = ENDPOINTS.get(request.path)
        reason: str | None = None
        try:
            if request.path != "/health" and not self._authorised(request):
                reason = "unauthenticated"
                response: web.StreamResponse = _error(
                    401,
                    "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                    reason,
                    {"WWW-Authenticate": "Bearer"},
                )
            else:
                if endpoint is not None:
                    self.service.accepting()  # counted in flight once its body is read
                response = await handler(request)
        except EdgerankError as exc:
            row = lookup(exc)
            assert row is not None  # EdgerankError is in the table
            reason = row.reason
            headers = None
            if (wait := retry_after_s(exc)) is not None:
                headers = {"Retry-After": str(max(1, math.ceil(wait)))}
            kind = TEI_ERROR_TYPES.get(reason, "Backend") if endpoint == "tei" else reason
            response = _error(row.http, str(exc) or type(exc).__name__, kind, headers)
        except web.HTTPException as exc:  # aiohttp's own: unknown path, wrong method
            if exc.status < 400:
                raise
            reason = exc.reason.lower().replace(" ", "_")
            response = _error(exc.status, f"{exc.reason}: {request.method} {request.path}", reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except asyncio.CancelledError:  # the client went away (handler_cancellation)
            if endpoint is not None:
                self.service.metrics.answered(
                    "http", endpoint, str(GONE.http), GONE.reason, time.perf_counter() - t0
                )
            raise
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            reason = BUG.reason
            response = _error(500, "internal error; the server log has the details", reason)
        if endpoint is not None:
            self.service.metrics.answered(
                "http", endpoint, str(response.status), reason, time.perf_counter() - t0
            )
        return response

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """Refuse an oversized body before the client sends it, else "100 Continue"."""
        if self.guard is not None:  # its headers are in (the middleware runs only later)
            self.guard.begin(request.protocol)
            self.guard.end(request.protocol)
        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            return _error(417, "only 'Expect: 100-continue' is understood", "expectation_failed")
        if (request.content_length or 0) > self._limit:
            return _error(413, self._too_large(request.content_length or 0), "too_large")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    def _too_large(self, nbytes: int) -> str:
        return f"request body of {nbytes} bytes, over max_message_bytes ({self._limit})"

    async def _body(self, request: web.Request) -> dict[str, Any]:
        declared = request.content_length
        if declared is not None and declared > self._limit:
            raise TooLarge(self._too_large(declared))
        try:
            # chunked: cut at client_max_size; a client that stalls mid-body is cut off
            raw = await asyncio.wait_for(request.read(), self._read_timeout)
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge(f"request body over max_message_bytes ({self._limit})") from None
        except asyncio.TimeoutError:
            raise ReadTimeout(
                f"the request body did not arrive within read_timeout_s ({self._read_timeout:g} s)"
            ) from None
        except (web.RequestPayloadError, HttpProcessingError) as exc:
            # a body that does not match its Content-Encoding, a broken chunked encoding
            lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
            encoding = request.headers.get("Content-Encoding", "")
            raise InvalidInput(
                f"cannot read the body{f' (Content-Encoding: {encoding})' if encoding else ''}: "
                f"{lines[-1] if lines else type(exc).__name__}"
            ) from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise InvalidInput(f"the body must be a JSON object, got {kind_of(data)}")
            if b"\\ud" in raw.lower():  # only a \uD800-\uDFFF escape yields a lone surrogate
                no_surrogates(data)
        except ValueError as exc:  # JSONDecodeError and bad UTF-8 alike
            if "int_max_str_digits" in str(exc):  # not the interpreter's advice to a client
                raise InvalidInput("the body holds an integer with more than 4300 digits") from None
            raise InvalidInput(f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidInput("the body is not valid JSON here: nested too deeply") from None
        return data

    async def _rerank(
        self, data: dict[str, Any], documents: Sequence[str], options: ScoreOptions
    ) -> Reranked:
        query = get_field(data, "query", str)
        max_tokens = get_field(data, "max_tokens_per_doc", int, None)
        if max_tokens is not None:
            options = dataclasses.replace(options, max_tokens_per_doc=max_tokens)
        return await self.service.rerank(
            query,
            documents,
            top_n=top_n_of(data),
            options=options,
            model=get_field(data, "model", str, None) or None,
        )

    def _endpoint(self, shape: Callable[[dict[str, Any]], Awaitable[web.Response]]) -> Handler:
        """Read the body, then answer in `shape`, counted in flight only from then on."""

        async def handle(request: web.Request) -> web.Response:
            data = await self._body(request)
            with self.service.call():
                return await shape(data)

        return handle

    # -- endpoints -------------------------------------------------------------------

    async def cohere(self, data: dict[str, Any], objects: bool = False) -> web.Response:
        """Cohere v2 (and, with `objects`, Infinity's / vLLM's /rerank body): chunks, max kept."""
        documents = string_list(data, "documents", objects=objects)
        reranked = await self._rerank(data, documents, ScoreOptions(truncation="chunk"))
        results = result_items(
            reranked, documents, get_field(data, "return_documents", bool, False)
        )
        model = self.service.served_name(get_field(data, "model", str, None))
        return _dumps(cohere_body(model, reranked.outcome.tokens, results))

    async def jina(self, data: dict[str, Any]) -> web.Response:
        """Jina (and Cohere v1, which shares the path): truncation; documents returned unless
        return_documents=false (Jina's default; Cohere v1 clients ignore the extra field)."""
        documents = string_list(data, "documents", objects=True)
        reranked = await self._rerank(data, documents, ScoreOptions(truncation="truncate"))
        results = result_items(reranked, documents, get_field(data, "return_documents", bool, True))
        model = self.service.served_name(get_field(data, "model", str, None))
        return _dumps(jina_body(model, reranked.outcome.tokens, results))

    async def rerank(self, data: dict[str, Any]) -> web.Response:
        """/rerank: TEI's body (`texts`), or the Cohere-style one Infinity and vLLM take
        there (`documents`), answered in the shape the body asked for."""
        if "texts" not in data and "documents" in data:
            return await self.cohere(data, objects=True)
        if "texts" not in data:
            raise InvalidInput("missing field 'texts' (TEI's body) or 'documents' (Cohere-style)")
        return await self.tei(data)

    async def tei(self, data: dict[str, Any]) -> web.Response:
        """TEI's body: server/tei.py's rules, the same as tei.v1.Rerank over gRPC."""
        query, texts = get_field(data, "query", str), string_list(data, "texts")
        self.service.require_ready()
        self.service.check_model(get_field(data, "model", str, None) or None)
        tei_rules.check_request(self.service, query, texts)
        options = tei_rules.options(get_field(data, "truncate", bool, False), direction_of(data))
        max_tokens = get_field(data, "max_tokens_per_doc", int, None)
        if max_tokens is not None:
            options = dataclasses.replace(options, max_tokens_per_doc=max_tokens)
            self.service.check_options(options)
        _, ranks = await tei_rules.answer(
            self.service,
            [Group(query, texts, options)],
            texts,
            raw_scores=get_field(data, "raw_scores", bool, False),
            return_text=get_field(data, "return_text", bool, False),
            top_n=top_n_of(data),
        )
        out = []
        for r in ranks:
            item: dict[str, Any] = {"index": r.index, "score": r.score}
            if r.text is not None:
                item["text"] = r.text
            out.append(item)
        return _dumps(out)

    async def info(self, request: web.Request) -> web.Response:
        self.service.require_ready()  # TEI's GET /info: TEI clients read it first
        return _dumps(tei_info(self.service))

    async def health(self, request: web.Request) -> web.Response:
        state = self.service.state
        if state != "serving":
            return _dumps({"status": state}, 503)
        if not await self.service.healthy():
            return _dumps({"status": "unhealthy"}, 503)
        return _dumps({"status": "serving", "model": self.service.info.model})

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.service.metrics.render(request.headers.get("Accept", ""))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response
