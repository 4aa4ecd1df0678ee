"""The HTTP face for real: aiohttp on loopback TCP (port 0) and a Unix socket, beside gRPC on
the same loop and the same Service, scoring with the tiny INT8 ONNX model.

Every answer is compared with the gRPC answer for the same input (same service, so equal to
the float); errors are checked by status code and JSON body, then the server must still
answer a good request.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import cohere
import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgerank import errors
from edgerank.backends.onnx import OnnxBackend
from edgerank.errors import SettingsError
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc
from edgerank.proto.tei.v1 import tei_pb2 as tei
from edgerank.proto.tei.v1 import tei_pb2_grpc as tei_grpc
from edgerank.server import http_listen
from edgerank.server import status as status_table
from edgerank.server.settings import http_address, load
from edgerank.testing import tiny_models
from tests.server.test_server import Gated, ServerThread, settings_for

ROOT = Path(__file__).resolve().parents[2]
CORPUS = tiny_models.corpus(300, seed=23)
LONG = " ".join(CORPUS[:40])[:3500]  # far beyond the tiny model's 128 tokens


class HttpServerThread(ServerThread):
    """ServerThread plus the HTTP listener on the same loop and Service."""

    def __init__(self, settings):
        super().__init__(settings)
        self.http = self.call(http_listen.start(self.service, settings))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http.tcp[1]}"

    def unix_client(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.http.socket_path))
        return httpx.Client(transport=transport, base_url="http://edgerank", timeout=60)

    def close(self) -> None:
        self.call(self.http.stop())
        super().close()


def http_settings(tmp_path, **overrides):
    overrides.setdefault("http", "127.0.0.1:0")
    overrides.setdefault("http_socket", str(tmp_path / "http.sock"))
    return settings_for(tmp_path, **overrides)


@pytest.fixture(scope="module")
def served(tiny_onnx_dir, tmp_path_factory):
    server = HttpServerThread(http_settings(tmp_path_factory.mktemp("http")))
    backend = Gated(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
    server.load(backend)
    server.backend = backend
    yield server
    backend.gate.set()
    server.close()


@pytest.fixture(params=["tcp", "unix"])
def client(request, served):
    if request.param == "tcp":
        c = httpx.Client(base_url=served.base, timeout=60)
    else:
        c = served.unix_client()
    with c:
        yield c


def grpc_stub(server) -> pb_grpc.RerankerStub:
    return pb_grpc.RerankerStub(grpc.insecure_channel(server.tcp))


def ok(response: httpx.Response):
    assert response.status_code == 200, response.text
    return response.json()


# -- the three shapes against gRPC -----------------------------------------------------


def test_cohere_shape_equals_grpc(served, client):
    docs = [LONG, *CORPUS[:12], LONG[::-1]]
    body = {"model": "tiny-bert", "query": "winter snow", "documents": docs, "top_n": 5}
    body["max_tokens_per_doc"] = 48
    got = ok(client.post("/v2/rerank", json=body))
    want = grpc_stub(served).Rerank(
        pb.RerankRequest(
            query="winter snow",
            documents=docs,
            top_n=5,
            truncation=pb.TRUNCATION_CHUNK,  # Cohere's rule: chunks, max over them
            max_tokens_per_doc=48,
        )
    )
    assert [r["index"] for r in got["results"]] == [r.index for r in want.results]
    assert [r["relevance_score"] for r in got["results"]] == [
        r.normalised_score for r in want.results
    ]
    assert all(0 < r["relevance_score"] < 1 and "document" not in r for r in got["results"])
    assert got["meta"]["tokens"]["input_tokens"] == want.metadata.tokens
    assert want.metadata.inputs > len(docs)  # the long ones were chunked
    assert got["id"]


def test_max_tokens_per_doc_caps_every_model_input(served, client):
    docs = CORPUS[20:26]
    body = {"query": "ocean", "documents": docs}
    capped = {**body, "max_tokens_per_doc": 8}
    # Jina truncates: each pair is cut to 8 tokens, so far fewer tokens run
    full = ok(client.post("/v1/rerank", json=body))
    cut = ok(client.post("/v1/rerank", json=capped))
    assert cut["usage"]["total_tokens"] <= 8 * len(docs) < full["usage"]["total_tokens"]
    # Cohere chunks: more, shorter windows, max kept; the same answer as gRPC with the cap
    got = ok(client.post("/v2/rerank", json=capped))
    want = grpc_stub(served).Rerank(
        pb.RerankRequest(
            query="ocean", documents=docs, truncation=pb.TRUNCATION_CHUNK, max_tokens_per_doc=8
        )
    )
    assert [(r["index"], r["relevance_score"]) for r in got["results"]] == [
        (r.index, r.normalised_score) for r in want.results
    ]
    assert want.metadata.inputs > len(docs)
    uncapped = ok(client.post("/v2/rerank", json=body))
    assert got["results"] != uncapped["results"]


def test_jina_shape_equals_grpc(served, client):
    docs = CORPUS[30:42]
    mixed = [d if i % 2 else {"text": d} for i, d in enumerate(docs)]
    got = ok(client.post("/v1/rerank", json={"query": "bread cheese", "documents": mixed}))
    want = grpc_stub(served).Rerank(pb.RerankRequest(query="bread cheese", documents=docs))
    assert [r["index"] for r in got["results"]] == [r.index for r in want.results]
    assert [r["relevance_score"] for r in got["results"]] == [
        r.normalised_score for r in want.results
    ]
    # documents come back by default, as {text}, whichever form they were sent in
    assert [r["document"] for r in got["results"]] == [
        {"text": docs[r.index]} for r in want.results
    ]
    assert got["model"] == want.model
    assert got["usage"]["total_tokens"] == want.metadata.tokens

    top = ok(
        client.post(
            "/v1/rerank",
            json={
                "query": "bread cheese",
                "documents": docs,
                "top_n": 3,
                "return_documents": False,
            },
        )
    )
    assert [r["index"] for r in top["results"]] == [r.index for r in want.results[:3]]
    assert all("document" not in r for r in top["results"])


def test_tei_shape_equals_grpc_tei(served, client):
    texts = [*CORPUS[50:60], LONG]
    body = {
        "query": "piano song",
        "texts": texts,
        "truncate": True,
        "truncation_direction": "left",
        "raw_scores": True,
        "return_text": True,
    }
    got = ok(client.post("/rerank", json=body))
    assert isinstance(got, list)  # TEI answers a bare array
    want = tei_grpc.RerankStub(grpc.insecure_channel(served.tcp)).Rerank(
        tei.RerankRequest(
            query="piano song",
            texts=texts,
            truncate=True,
            truncation_direction=tei.TRUNCATION_DIRECTION_LEFT,
            raw_scores=True,
            return_text=True,
        )
    )
    assert [(r["index"], r["score"], r["text"]) for r in got] == [
        (r.index, r.score, r.text) for r in want.ranks
    ]
    # default: normalised scores, no text; top_n cuts the same order
    norm = ok(client.post("/rerank", json={"query": "piano song", "texts": texts[:10]}))
    assert all(0 < r["score"] < 1 and "text" not in r for r in norm)
    top = ok(client.post("/rerank", json={"query": "piano song", "texts": texts[:10], "top_n": 4}))
    assert top == norm[:4]


def test_tei_refuses_over_long_text_unless_truncate(client):
    r = client.post("/rerank", json={"query": "q", "texts": ["short", LONG]})
    assert r.status_code == 413
    assert "text 1" in r.json()["error"] and "truncate=true" in r.json()["error"]
    assert (
        len(
            ok(
                client.post(
                    "/rerank", json={"query": "q", "texts": ["short", LONG], "truncate": True}
                )
            )
        )
        == 2
    )


# -- the official Cohere SDK -----------------------------------------------------------


def test_cohere_sdk_gets_the_same_ranking(served):
    docs = CORPUS[70:85]
    co = cohere.ClientV2(base_url=served.base, api_key="unused-here")
    got = co.rerank(model="tiny-bert", query="mountain river", documents=docs, top_n=4)
    want = grpc_stub(served).Rerank(
        pb.RerankRequest(
            query="mountain river", documents=docs, top_n=4, truncation=pb.TRUNCATION_CHUNK
        )
    )
    assert [(r.index, r.relevance_score) for r in got.results] == [
        (r.index, r.normalised_score) for r in want.results
    ]


def test_cohere_sdk_sends_its_key_as_the_bearer_token(tiny_onnx_dir, tmp_path):
    server = HttpServerThread(http_settings(tmp_path, token="sdk-key"))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        docs = CORPUS[:5]
        got = cohere.ClientV2(base_url=server.base, api_key="sdk-key").rerank(
            model="tiny-bert", query="cat", documents=docs
        )
        assert sorted(r.index for r in got.results) == list(range(5))
        with pytest.raises(cohere.UnauthorizedError):
            cohere.ClientV2(base_url=server.base, api_key="wrong").rerank(
                model="tiny-bert", query="cat", documents=docs
            )
    finally:
        server.close()


# -- bad requests ----------------------------------------------------------------------

Q = {"query": "q"}
BAD = {
    "invalid JSON": ("/v2/rerank", b'{"query": "q", "documents": [', 400),
    "not an object": ("/v2/rerank", [1, 2], 400),
    "not UTF-8": ("/v2/rerank", b'{"query": "q", "documents": ["a\xff"]}', 400),
    "a lone surrogate": ("/v1/rerank", b'{"query": "q", "documents": ["a\\ud800b"]}', 400),
    "missing query": ("/v2/rerank", {"documents": ["a"]}, 400),
    "query not a string": ("/v2/rerank", {"query": 5, "documents": ["a"]}, 400),
    "empty query": ("/v1/rerank", {"query": " ", "documents": ["a"]}, 400),
    "documents a string": ("/v2/rerank", {**Q, "documents": "a"}, 400),
    "a document a number": ("/v2/rerank", {**Q, "documents": ["a", 7]}, 400),
    "object documents on Cohere": ("/v2/rerank", {**Q, "documents": [{"text": "a"}]}, 400),
    "object without text": ("/v1/rerank", {**Q, "documents": [{"title": "a"}]}, 400),
    "missing texts": ("/rerank", Q, 400),
    "no documents": ("/v2/rerank", {**Q, "documents": []}, 400),
    "top_n < 0": ("/v2/rerank", {**Q, "documents": ["a"], "top_n": -1}, 400),
    "top_n a string": ("/v1/rerank", {**Q, "documents": ["a"], "top_n": "3"}, 400),
    "top_n a boolean": ("/v1/rerank", {**Q, "documents": ["a"], "top_n": True}, 400),
    "max_tokens_per_doc 0": ("/v2/rerank", {**Q, "documents": ["a"], "max_tokens_per_doc": 0}, 400),
    "raw_scores not a boolean": ("/rerank", {**Q, "texts": ["a"], "raw_scores": "yes"}, 400),
    "bad direction": ("/rerank", {**Q, "texts": ["a"], "truncation_direction": "up"}, 400),
    "unknown model": ("/v2/rerank", {**Q, "documents": ["a"], "model": "rerank-v3.5"}, 400),
    "NUL in a document": ("/v1/rerank", {**Q, "documents": ["a\x00b"]}, 400),
    "too many documents": ("/v2/rerank", {**Q, "documents": ["d"] * 51}, 413),
    "too many texts": ("/rerank", {**Q, "texts": ["d"] * 51}, 413),
    "document too long": ("/v1/rerank", {**Q, "documents": ["x" * 4001]}, 413),
    "huge body": ("/v2/rerank", {**Q, "documents": ["y" * 3000] * 30}, 413),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_request_gets_its_status_and_the_server_keeps_serving(client, case):
    path, body, status = BAD[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()
    assert error["error"] == error["message"] and len(error["error"]) > 10
    assert error["error_type"] and "Traceback" not in r.text
    again = client.post("/v2/rerank", json={"query": "q", "documents": ["a", "b"]})
    assert len(ok(again)["results"]) == 2


@pytest.mark.parametrize(
    "exc, status, code",
    [
        (errors.InvalidInput("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotFound("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.TooLarge("x"), 413, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Overloaded("x"), 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("x"), 503, grpc.StatusCode.UNAVAILABLE),
        (errors.BackendFailure("x"), 500, grpc.StatusCode.INTERNAL),
    ],
)
def test_one_table_gives_both_columns(exc, status, code):
    assert status_table.http_status_for(exc) == status
    assert status_table.code_for(exc) == code


def test_every_domain_error_has_an_http_status_and_bugs_have_none():
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.EdgerankError):
            assert status_table.http_status_for(cls.__new__(cls)) is not None, cls
    assert status_table.http_status_for(ValueError("bug")) is None


def test_error_messages_name_the_problem(client):
    def error(path, body):
        return client.post(path, json=body).json()["error"]

    assert "query" in error("/v2/rerank", {"documents": ["a"]})
    assert "documents[1] must be a string, got an integer" in error(
        "/v2/rerank", {"query": "q", "documents": ["a", 1]}
    )
    assert "max_documents" in error("/v2/rerank", {"query": "q", "documents": ["d"] * 51})
    assert "tiny-bert" in error("/v2/rerank", {"query": "q", "documents": ["a"], "model": "x"})


def test_escaped_non_bmp_text_is_fine(client):
    body = b'{"query": "smile \\ud83d\\ude00", "documents": ["\\ud83d\\ude00 happy", "sad"]}'
    got = ok(client.post("/v1/rerank", content=body))
    assert {r["document"]["text"] for r in got["results"]} == {"\U0001f600 happy", "sad"}


def test_unknown_path_and_wrong_method_are_json(client):
    r = client.get("/v3/rerank")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"
    r = client.get("/v2/rerank")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


def raw_http(port: int, head: str, body: bytes = b"") -> bytes:
    """Send raw bytes, return what the server answers before the body is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_huge_declared_body_is_refused_before_it_is_sent(served):
    port = served.http.tcp[1]
    head = "POST /v2/rerank HTTP/1.1\nHost: x\nContent-Type: application/json\n"
    # 1 GB announced, 20 bytes sent: the answer comes without waiting for the rest
    answer = raw_http(port, head + "Content-Length: 1000000000\n", b'{"query": "q", "docu')
    assert answer.startswith(b"HTTP/1.1 413"), answer
    # with Expect: 100-continue the client is told before it sends anything
    answer = raw_http(port, head + "Content-Length: 1000000000\nExpect: 100-continue\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer
    # a body of allowed size still gets its "100 Continue"
    answer = raw_http(port, head + "Content-Length: 10\nExpect: 100-continue\n")
    assert answer.startswith(b"HTTP/1.1 100 Continue"), answer


def test_huge_chunked_body_is_cut(client):
    def chunks():
        yield b'{"query": "q", "documents": ['
        for _ in range(100):
            yield b'"' + b"z" * 1000 + b'",'
        yield b'"end"]}'

    r = client.post("/v2/rerank", content=chunks())  # no Content-Length: chunked
    assert r.status_code == 413 and "max_message_bytes" in r.json()["error"]
    assert len(ok(client.post("/v2/rerank", json={"query": "q", "documents": ["a"]}))["results"])


# -- load: shared admission, hang-ups --------------------------------------------------


def test_overload_is_429_with_retry_after_and_admission_is_shared_with_grpc(
    tiny_onnx_dir, tmp_path
):
    server = HttpServerThread(http_settings(tmp_path, max_queue_pairs=64))
    backend = Gated(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
    server.load(backend)
    backend.gate.clear()
    backend.entered.clear()
    held = concurrent.futures.ThreadPoolExecutor(1)
    try:
        # 40 of the 64 pairs taken by a gRPC call the worker holds
        first = held.submit(
            grpc_stub(server).Rerank,
            pb.RerankRequest(query="cat", documents=CORPUS[100:140]),
            timeout=60,
        )
        assert backend.entered.wait(30)
        r = httpx.post(
            server.base + "/v2/rerank",
            json={"query": "dog", "documents": CORPUS[:30]},
            timeout=30,
        )
        assert not first.done()  # refused at once, not queued
        assert r.status_code == 429 and r.json()["error_type"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
    finally:
        backend.gate.set()
    assert len(first.result(60).results) == 40
    assert server.service.admission.refused == 1
    held.shutdown()
    server.close()


def test_a_client_that_hangs_up_drops_its_queued_work(served):
    backend, service = served.backend, served.service
    backend.gate.clear()
    backend.entered.clear()
    held = concurrent.futures.ThreadPoolExecutor(1)
    try:
        first = held.submit(
            grpc_stub(served).Rerank, pb.RerankRequest(query="a", documents=CORPUS[:10])
        )
        assert backend.entered.wait(30)
        dropped = service.batcher.stats.dropped
        with pytest.raises(httpx.ReadTimeout):
            # waits until its 7 pairs sit in the queue behind the held batch, then hangs up
            httpx.post(
                served.base + "/v2/rerank",
                json={"query": "b", "documents": CORPUS[10:17]},
                timeout=httpx.Timeout(30, read=0.5),
            )
        deadline = time.monotonic() + 30
        while service.batcher.stats.dropped == dropped and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.batcher.stats.dropped - dropped == 7
    finally:
        backend.gate.set()
    assert len(first.result(60).results) == 10
    assert service.admission.pairs == 0


# -- health, metrics -------------------------------------------------------------------


def test_health_is_503_until_ready_and_while_draining(tiny_onnx_dir, tmp_path):
    server = HttpServerThread(http_settings(tmp_path))
    try:
        r = httpx.get(server.base + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = httpx.post(server.base + "/v2/rerank", json={"query": "q", "documents": ["a"]})
        assert r.status_code == 503 and "loading" in r.json()["error"]

        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        assert ok(httpx.get(server.base + "/health"))["status"] == "serving"
        with server.unix_client() as c:
            assert ok(c.get("/health"))["model"] == "tiny-bert"

        server.service.drain()
        r = httpx.get(server.base + "/health")
        assert r.status_code == 503 and r.json()["status"] == "draining"
        r = httpx.post(server.base + "/v2/rerank", json={"query": "q", "documents": ["a"]})
        assert r.status_code == 503 and "draining" in r.json()["error"]
    finally:
        server.close()


def scrape(server, headers=None) -> dict[tuple[str, tuple], float]:
    r = httpx.get(server.base + "/metrics", headers=headers)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_for_both_transports(served):
    before = scrape(served)
    docs = CORPUS[150:155]
    http_answer = ok(
        httpx.post(served.base + "/v2/rerank", json={"query": "tea", "documents": docs})
    )
    grpc_answer = grpc_stub(served).Rerank(pb.RerankRequest(query="tea", documents=docs[:4]))
    refused = httpx.post(served.base + "/v2/rerank", json={"query": "q", "documents": ["d"] * 51})
    assert refused.status_code == 413
    with pytest.raises(grpc.RpcError):
        grpc_stub(served).Rerank(pb.RerankRequest(query="q", documents=["a"], top_n=-1))
    after = scrape(served)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    ok_http = dict(transport="http", endpoint="cohere", code="200")
    assert moved("edgerank_requests_total", **ok_http) == 1
    assert (
        moved("edgerank_requests_total", transport="grpc", endpoint="Reranker.Rerank", code="OK")
        == 1
    )
    assert (
        moved(
            "edgerank_requests_total",
            transport="grpc",
            endpoint="Reranker.Rerank",
            code="INVALID_ARGUMENT",
        )
        == 1
    )
    assert moved("edgerank_rejections_total", reason="too_large") == 1
    assert moved("edgerank_rejections_total", reason="invalid_input") == 1
    assert moved("edgerank_pairs_scored_total") == 9
    tokens = http_answer["meta"]["tokens"]["input_tokens"] + grpc_answer.metadata.tokens
    assert moved("edgerank_tokens_scored_total") == tokens
    assert moved("edgerank_request_seconds_count", transport="http") == 1
    assert moved("edgerank_request_seconds_count", transport="grpc") == 1
    for name in ("queue", "inference", "tokenize"):
        assert moved(f"edgerank_{name}_seconds_count") == 2
    assert moved("edgerank_batch_size_count") >= 1
    assert moved("edgerank_batch_size_sum") >= 9
    info = [k for k in after if k[0] == "edgerank_model_info"]
    assert len(info) == 1
    labels = dict(info[0][1])
    assert (labels["model"], labels["backend"], labels["precision"]) == (
        "tiny-bert",
        "onnx",
        "int8",
    )
    assert value(after, "edgerank_serving") == 1
    assert value(after, "edgerank_queue_pairs") == 0


def test_metrics_speak_openmetrics_when_asked(served):
    r = httpx.get(
        served.base + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


# -- security --------------------------------------------------------------------------


def test_bearer_token_on_tcp_not_on_the_socket(tiny_onnx_dir, tmp_path):
    server = HttpServerThread(http_settings(tmp_path, token="let-me-in"))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        body = {"query": "q", "documents": ["a"]}
        url = server.base + "/v2/rerank"
        r = httpx.post(url, json=body)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert "bearer token" in r.json()["error"]
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer no"}).status_code == 401
        assert httpx.get(server.base + "/metrics").status_code == 401
        good = {"Authorization": "Bearer let-me-in"}
        assert len(ok(httpx.post(url, json=body, headers=good))["results"]) == 1
        assert ok(httpx.get(server.base + "/health"))["status"] == "serving"  # probes: no token
        with server.unix_client() as c:  # the socket's file mode is the check
            assert len(ok(c.post("/v1/rerank", json=body))["results"]) == 1
            assert c.get("/metrics").status_code == 200
        with pytest.raises(grpc.RpcError):  # gRPC's refusals land in the same series
            grpc_stub(server).Rerank(pb.RerankRequest(query="q", documents=["a"]))
        samples = scrape(server, headers=good)
        # two rerank calls over HTTP, one over gRPC (/metrics and /health are not counted)
        assert value(samples, "edgerank_rejections_total", reason="unauthenticated") == 3
        grpc_refused = dict(transport="grpc", endpoint="Reranker.Rerank", code="UNAUTHENTICATED")
        assert value(samples, "edgerank_requests_total", **grpc_refused) == 1
    finally:
        server.close()


def test_unix_socket_is_0660(served):
    assert stat.S_IMODE(os.stat(served.http.socket_path).st_mode) == 0o660


def test_http_setting_defaults_to_loopback():
    assert http_address("8080") == ("127.0.0.1", 8080)
    assert http_address(":8080") == ("127.0.0.1", 8080)
    assert http_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert http_address("[::1]:9000") == ("::1", 9000)
    for bad in ("unix:/run/x.sock", "host:port"):
        with pytest.raises(SettingsError, match="http must be"):
            http_address(bad)
    for bad in ("1.2.3.4:99999", "1.2.3.4:-1", "65536"):
        with pytest.raises(SettingsError, match="out of range"):
            http_address(bad)
    settings = load({"http": "8080", "listen": "", "socket": ""}, env={}, config="/dev/null")
    assert settings.http == "8080"  # HTTP alone is something to listen on


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_certificate_serves_https(tiny_onnx_dir, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = HttpServerThread(http_settings(tmp_path, tls_cert=str(cert), tls_key=str(key)))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        assert server.http.addresses[0].startswith("https://")
        url = f"https://127.0.0.1:{server.http.tcp[1]}"
        trusted = ssl.create_default_context(cafile=str(cert))
        assert ok(httpx.get(url + "/health", verify=trusted))["status"] == "serving"
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.base + "/health")  # plain HTTP is not spoken there
    finally:
        server.close()


# -- the daemon process ----------------------------------------------------------------


def test_daemon_serves_http_beside_grpc_and_drains_on_sigterm(tiny_onnx_dir, tmp_path):
    http_sock, grpc_sock = tmp_path / "http.sock", tmp_path / "grpc.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERANK_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerank.server.daemon", "--config", "/dev/null",
         "--model", str(tiny_onnx_dir), "--listen", "", "--socket", str(grpc_sock),
         "--http-socket", str(http_sock), "--threads", "1", "--home", str(tmp_path / "home")],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        status = None
        while status != 200 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if http_sock.exists():
                transport = httpx.HTTPTransport(uds=str(http_sock))
                with httpx.Client(transport=transport, base_url="http://edgerank") as c:
                    try:
                        status = c.get("/health").status_code
                    except httpx.TransportError:
                        pass
        assert status == 200, proc.stderr.read() if proc.poll() is not None else "not ready"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(http_sock))) as c:
            got = ok(
                c.post("http://edgerank/v2/rerank", json={"query": "cat", "documents": CORPUS[:6]})
            )
        want = pb_grpc.RerankerStub(grpc.insecure_channel(f"unix:{grpc_sock}")).Rerank(
            pb.RerankRequest(query="cat", documents=CORPUS[:6], truncation=pb.TRUNCATION_CHUNK)
        )
        assert [r["relevance_score"] for r in got["results"]] == [
            r.normalised_score for r in want.results
        ]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not http_sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
