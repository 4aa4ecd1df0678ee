"""A small client for a running daemon: `edgerank score --server ADDR` and `bench --server`.

ADDR is HOST:PORT or unix:/path/to/socket. Server errors come back as the same domain
errors a local run raises, so the CLI prints them the same way.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from edgerank import errors
from edgerank.backends.base import ScoreOptions
from edgerank.engine.rank import Ranked
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc

TOKEN_ENV = "EDGERANK_TOKEN"

#: status -> the domain error a caller sees (the inverse of server/status.py's table)
_ERRORS: dict[grpc.StatusCode, type[errors.EdgerankError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.FAILED_PRECONDITION: errors.BackendUnavailable,
    grpc.StatusCode.INTERNAL: errors.BackendFailure,
}


@dataclass(frozen=True)
class RemoteResult:
    ranked: list[Ranked]
    model: str  # "name (backend precision)", as the local path prints it
    documents: list[str] | None = None
    metadata: dict[str, int] = field(default_factory=dict)


def _request(
    query: str,
    documents: Sequence[str],
    top_n: int | None,
    options: ScoreOptions,
    model: str | None,
    return_documents: bool,
) -> pb.RerankRequest:
    req = pb.RerankRequest(
        query=query,
        documents=list(documents),
        top_n=top_n or 0,
        return_documents=return_documents,
        truncation=pb.TRUNCATION_CHUNK if options.truncation == "chunk" else pb.TRUNCATION_TRUNCATE,
        direction=pb.DIRECTION_LEFT if options.direction == "left" else pb.DIRECTION_RIGHT,
    )
    if options.instruction is not None:
        req.instruction = options.instruction
    if options.max_tokens_per_doc is not None:
        req.max_tokens_per_doc = options.max_tokens_per_doc
    if model:
        req.model = model
    return req


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    return (("authorization", f"Bearer {token}"),) if token else ()


def _credentials(root_cert: str | None) -> grpc.ChannelCredentials:
    pem = open(root_cert, "rb").read() if root_cert else None
    return grpc.ssl_channel_credentials(root_certificates=pem)


def _domain_error(exc: grpc.RpcError) -> errors.EdgerankError:
    code, details = exc.code(), exc.details() or ""
    cls = _ERRORS.get(code, errors.EdgerankError)
    return cls(f"server: {details} ({code.name})")


def _result(resp: pb.RerankResponse, info_line: str) -> RemoteResult:
    ranked = [Ranked(r.index, r.raw_score, r.normalised_score) for r in resp.results]
    docs = None
    if resp.results and resp.results[0].HasField("document"):
        docs = [r.document for r in resp.results]
    meta = {f.name: v for f, v in resp.metadata.ListFields()}
    return RemoteResult(ranked, info_line, docs, meta)


def rerank(
    address: str,
    query: str,
    documents: Sequence[str],
    *,
    top_n: int | None = None,
    options: ScoreOptions = ScoreOptions(),
    model: str | None = None,
    return_documents: bool = False,
    timeout: float | None = 60.0,
    token: str | None = None,
    tls: bool = False,
    root_cert: str | None = None,
) -> RemoteResult:
    """Rank on the daemon at `address`; raises the domain error the server reported."""
    req = _request(query, documents, top_n, options, model, return_documents)
    opts = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    if tls or root_cert:
        channel = grpc.secure_channel(address, _credentials(root_cert), options=opts)
    else:
        channel = grpc.insecure_channel(address, options=opts)
    with channel:
        stub = pb_grpc.RerankerStub(channel)
        try:
            resp = stub.Rerank(req, timeout=timeout, metadata=_metadata(token))
            info = stub.Info(pb.InfoRequest(), timeout=timeout, metadata=_metadata(token))
        except grpc.RpcError as exc:
            raise _domain_error(exc) from None
    return _result(resp, f"{info.model} ({info.backend} {info.precision}) via {address}")


# -- benchmark ------------------------------------------------------------------------


async def _bench(
    address: str,
    query: str,
    documents: Sequence[str],
    concurrency: int,
    requests: int,
    token: str | None,
) -> dict[str, Any]:
    req = _request(query, documents, None, ScoreOptions(), None, False)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    left = requests
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RerankerStub(channel)
        await stub.Info(pb.InfoRequest(), metadata=_metadata(token))  # connect first

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                try:
                    await stub.Rerank(req, metadata=_metadata(token))
                except grpc.aio.AioRpcError as exc:
                    failures[exc.code().name] = failures.get(exc.code().name, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failures": failures,
        "pairs_per_s": len(latencies) * len(documents) / wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
    }


def bench(
    address: str,
    query: str,
    documents: Sequence[str],
    *,
    concurrency: int = 8,
    requests: int = 64,
    token: str | None = None,
) -> dict[str, Any]:
    """Closed-loop load: `concurrency` clients send `requests` Rerank calls in all."""
    return asyncio.run(_bench(address, query, documents, concurrency, requests, token))
