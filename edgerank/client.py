"""A small client for running daemons: `edgerank score --server ADDR` and `bench --server`.

ADDR is one of
  HOST:PORT               every address the name resolves to (gRPC's DNS resolver, which
                          re-resolves when a connection fails: a Kubernetes headless Service)
  dns:///NAME:PORT        the same, spelled the gRPC way
  HOST:PORT,HOST:PORT...  several replicas (resolved once, given to gRPC as one ipv4:/ipv6:
                          multi-address target)
  unix:/path/to/socket    one local daemon

Balancing and failover are gRPC's own, set by the service config below: round_robin over
the replicas, a replica leaves the rotation while its grpc.health.v1 status is not SERVING
(client-side health checking: it drains on SIGTERM, loads at start), and a call refused
with UNAVAILABLE is retried on another replica. Server errors come back as the same domain
errors a local run raises, so the CLI prints them the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
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


#: the service whose grpc.health.v1 status decides whether a replica takes calls
HEALTH_SERVICE = pb.DESCRIPTOR.services_by_name["Reranker"].full_name
#: retries of a call refused with UNAVAILABLE (draining, loading, connection lost before
#: the call was sent): gRPC caps attempts at 5, and each goes through round_robin again
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
_MESSAGE_LIMITS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


def service_config() -> str:
    """The channel's service config (JSON): round_robin, health checking, retries."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": HEALTH_SERVICE},
            "methodConfig": [
                {
                    "name": [
                        {"service": HEALTH_SERVICE},
                        {"service": "tei.v1.Rerank"},
                        {"service": "tei.v1.Info"},
                    ],
                    "retryPolicy": RETRY_POLICY,
                }
            ],
        }
    )


def channel_options() -> list[tuple[str, Any]]:
    return [
        *_MESSAGE_LIMITS,
        ("grpc.service_config", service_config()),
        # ours, not one a DNS TXT record might carry
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
    ]


def _split_host_port(item: str) -> tuple[str, str]:
    host, sep, port = item.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise errors.InvalidInput(f"server address {item!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), port


def _addresses(host: str, port: str) -> list[tuple[int, str]]:
    try:  # an IP literal resolves to itself, without a DNS query
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise errors.InvalidInput(f"cannot resolve server {host!r}: {exc}") from None
    return [(family, sockaddr[0]) for family, _, _, _, sockaddr in infos]


def target(address: str) -> str:
    """The gRPC target for ADDR (see the module docstring)."""
    address = address.strip()
    items = [a.strip() for a in address.split(",") if a.strip()]
    if not items:
        raise errors.InvalidInput("no server address given")
    if len(items) == 1:
        return items[0]
    if any(i.startswith(("unix:", "dns:", "ipv4:", "ipv6:")) for i in items):
        raise errors.InvalidInput(
            f"server list {address!r}: give several HOST:PORT, or one unix:/dns: target"
        )
    v4: list[str] = []
    v6: list[str] = []
    all_v4 = all_v6 = True
    for item in items:
        host, port = _split_host_port(item)
        found = _addresses(host, port)
        four = sorted({a for f, a in found if f == socket.AF_INET})
        six = sorted({a for f, a in found if f == socket.AF_INET6})
        all_v4, all_v6 = all_v4 and bool(four), all_v6 and bool(six)
        v4 += [f"{a}:{port}" for a in four]
        v6 += [f"[{a}]:{port}" for a in six]
    if all_v4:
        return "ipv4:" + ",".join(dict.fromkeys(v4))
    if all_v6:
        return "ipv6:" + ",".join(dict.fromkeys(v6))
    raise errors.InvalidInput(
        f"server list {address!r} mixes IPv4-only and IPv6-only replicas: gRPC's "
        "multi-address target takes one family"
    )


def channel(address: str, *, tls: bool = False, root_cert: str | None = None) -> grpc.Channel:
    """A channel over every replica ADDR names, balanced and failing over as above."""
    where, opts = target(address), channel_options()
    if tls or root_cert:
        return grpc.secure_channel(where, _credentials(root_cert), options=opts)
    return grpc.insecure_channel(where, options=opts)


def aio_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target(address), options=channel_options())


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
    with channel(address, tls=tls, root_cert=root_cert) as chan:
        stub = pb_grpc.RerankerStub(chan)
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
    async with aio_channel(address) as chan:
        stub = pb_grpc.RerankerStub(chan)
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
