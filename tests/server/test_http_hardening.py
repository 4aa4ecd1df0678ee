"""The HTTP face against hostile and foreign clients: deep JSON, stalled bodies, Infinity's and
vLLM's /rerank body, served-model aliases, TEI's error types and GET /info.

One real server (aiohttp + gRPC on one loop, the tiny INT8 model) for the module.
"""

from __future__ import annotations

import logging
import socket

import httpx
import pytest

from edgerank.backends.onnx import OnnxBackend
from edgerank.testing import tiny_models
from tests.server.test_http import HttpServerThread, http_settings, ok

CORPUS = tiny_models.corpus(60, seed=41)
ALIASES = "rerank-v3.5,jina-reranker-v2-base-multilingual"


@pytest.fixture(scope="module")
def served(tiny_onnx_dir, tmp_path_factory):
    settings = http_settings(
        tmp_path_factory.mktemp("http-hardening"),
        served_model_name=ALIASES,
        max_message_bytes=1 << 20,  # room for the 100k-deep body
    )
    server = HttpServerThread(settings)
    server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
    yield server
    server.close()


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served.base, timeout=60) as c:
        yield c


# -- client errors are client errors --------------------------------------------------------


def test_json_nested_100k_deep_is_400_without_a_traceback(client, caplog):
    body = b'{"query": "q", "documents": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with caplog.at_level(logging.ERROR):
        r = client.post("/v2/rerank", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.json()["error"]
    assert not [rec for rec in caplog.records if rec.exc_info]  # nothing logged as a bug
    assert len(ok(client.post("/v2/rerank", json={"query": "q", "documents": ["a"]}))["results"])


def test_a_stalled_body_is_cut_off_with_408(tiny_onnx_dir, tmp_path):
    """read_timeout_s (0.5 s here): a client that stops mid-body gets 408, not a hung handler."""
    server = HttpServerThread(http_settings(tmp_path, read_timeout_s=0.5))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        with socket.create_connection(("127.0.0.1", server.http.tcp[1]), timeout=60) as s:
            s.sendall(
                b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 500\r\n\r\n{"query": "q", '
            )
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert b"read_timeout_s" in head
        assert server.service.calls == 0
    finally:
        server.close()


# -- /rerank: TEI's body and the Cohere-style one ---------------------------------------------


def test_rerank_takes_the_cohere_style_body_and_answers_in_its_shape(client):
    docs = CORPUS[:8]
    cohere_style = ok(
        client.post(
            "/rerank",
            json={"model": "rerank-v3.5", "query": "tea", "documents": docs, "top_n": 3,
                  "return_documents": True},
        )
    )  # fmt: skip
    v2 = ok(client.post("/v2/rerank", json={"query": "tea", "documents": docs, "top_n": 3}))
    assert [r["index"] for r in cohere_style["results"]] == [r["index"] for r in v2["results"]]
    assert [r["relevance_score"] for r in cohere_style["results"]] == [
        r["relevance_score"] for r in v2["results"]
    ]
    assert all(r["document"] == {"text": docs[r["index"]]} for r in cohere_style["results"])
    assert cohere_style["model"] == "rerank-v3.5" and cohere_style["object"] == "rerank"
    assert cohere_style["usage"]["total_tokens"] > 0
    tei = ok(client.post("/rerank", json={"query": "tea", "texts": docs}))
    assert isinstance(tei, list) and len(tei) == len(docs)  # TEI's bare array, unchanged


def test_rerank_without_texts_or_documents_names_both(client):
    r = client.post("/rerank", json={"query": "tea"})
    assert r.status_code == 400
    assert "'texts'" in r.json()["error"] and "'documents'" in r.json()["error"]


# -- served-model names -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-bert", "rerank-v3.5", "jina-reranker-v2-base-multilingual"])
def test_every_served_name_is_accepted_and_reported(client, name):
    got = ok(client.post("/v1/rerank", json={"model": name, "query": "q", "documents": ["a"]}))
    assert got["model"] == name


def test_an_unknown_name_is_refused_naming_the_served_ones(client):
    r = client.post("/v2/rerank", json={"model": "rerank-english-v3.0", "query": "q",
                                        "documents": ["a"]})  # fmt: skip
    assert r.status_code == 400
    message = r.json()["error"]
    for name in ("rerank-english-v3.0", "rerank-v3.5", "jina-reranker-v2-base-multilingual"):
        assert repr(name) in message


def test_served_model_name_is_a_setting_like_the_others(tmp_path):
    from edgerank.server.settings import load

    env = {"EDGERANK_SERVED_MODEL_NAME": "a, b"}
    assert load({}, env=env, config="/dev/null").served_names() == ["a", "b"]
    cfg = tmp_path / "e.toml"
    cfg.write_text('served_model_name = ["rerank-v3.5", "x"]\n')
    assert load({}, env={}, config=cfg).served_names() == ["rerank-v3.5", "x"]
    flags = {"served_model_name": "c"}
    assert load(flags, env=env, config=cfg).served_names() == ["c"]


# -- TEI's error types and /info --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"query": "q", "texts": []}, 400, "Empty"),
        ({"query": "q", "texts": ["d"] * 51}, 413, "Validation"),
        ({"query": "", "texts": ["d"]}, 400, "Validation"),
        ({"query": "q", "texts": [" ".join(CORPUS)]}, 413, "Validation"),  # longer than the model
    ],
)
def test_tei_error_types_are_teis(client, body, status, error_type):
    r = client.post("/rerank", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error_type"] == error_type


def test_get_info_speaks_teis_shape(client):
    info = ok(client.get("/info"))
    assert info["model_type"] == {
        "reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    }
    assert info["model_id"] == "rerank-v3.5"  # the first served name
    assert info["max_input_length"] == 128 and info["max_client_batch_size"] == 50
    assert info["model_dtype"] == "int8" and isinstance(info["version"], str)
    assert set(info["served_model_names"]) == {"tiny-bert", *ALIASES.split(",")}
    # batch settings at 0 (auto) and no planner's shape: what runs is the default, uncapped
    assert (info["max_batch_tokens"], info["max_batch_requests"]) == (8192, None)


def test_get_info_reports_the_planned_batch_shape(tiny_onnx_dir, tmp_path):
    server = HttpServerThread(http_settings(tmp_path, max_batch_pairs=6))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1), shape=(1024, 4))
        with httpx.Client(base_url=server.base, timeout=60) as c:
            info = ok(c.get("/info"))
        assert (info["max_batch_tokens"], info["max_batch_requests"]) == (1024, 6)
    finally:
        server.close()


def test_the_bi_encoder_refuses_over_long_texts_unless_truncate(tmp_path):
    """TEI's rule holds for the embedded fallback too: 413 unless truncate=true."""
    from edgerank.backends.biencoder import BiEncoderBackend

    server = HttpServerThread(http_settings(tmp_path))
    try:
        server.load(BiEncoderBackend(threads=1))
        long = " ".join(f"word{i}" for i in range(400))
        with httpx.Client(base_url=server.base, timeout=60) as c:
            r = c.post("/rerank", json={"query": "q", "texts": ["short", long]})
            assert r.status_code == 413 and "truncate=true" in r.json()["error"], r.text
            cut = ok(c.post("/rerank", json={"query": "q", "texts": ["short", long],
                                             "truncate": True}))  # fmt: skip
            assert sorted(x["index"] for x in cut) == [0, 1]
    finally:
        server.close()


# -- bodies that do not match what they claim -------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_body_that_does_not_match_its_content_encoding_is_400(client, caplog, encoding):
    """Before: Content-Encoding: gzip over plain JSON was a 500 with a traceback."""
    body = b'{"query": "q", "documents": ["a"]}'
    with caplog.at_level(logging.ERROR):
        r = client.post(
            "/v2/rerank",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )
    assert r.status_code == 400, r.text
    if encoding in ("gzip", "deflate"):  # br, zstd: aiohttp's parser refuses them first
        assert "Content-Encoding" in r.json()["error"]
    assert not [rec for rec in caplog.records if rec.exc_info]


def test_a_gzip_body_that_is_gzip_is_read(client):
    import gzip
    import json

    body = gzip.compress(json.dumps({"query": "q", "documents": ["a", "b"]}).encode())
    r = client.post(
        "/v2/rerank",
        content=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert len(ok(r)["results"]) == 2


def test_a_5000_digit_number_is_a_plain_400(client):
    body = b'{"query": "q", "documents": ["a"], "top_n": ' + b"9" * 5000 + b"}"
    r = client.post("/v2/rerank", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "4300 digits" in r.json()["error"]
    assert "set_int_max_str_digits" not in r.json()["error"]


# -- TEI's truncate=false checks the query too ------------------------------------------------


def test_tei_refuses_a_query_longer_than_the_window_unless_truncate(client, served):
    """Before: a 3000-word query with a 1-word text got 200, the query silently cut."""
    import grpc

    from edgerank.proto.tei.v1 import tei_pb2 as tei
    from edgerank.proto.tei.v1 import tei_pb2_grpc as tei_grpc

    long_query = " ".join(CORPUS)[:3500]  # far beyond the tiny model's 128 tokens
    r = client.post("/rerank", json={"query": long_query, "texts": ["word"]})
    assert r.status_code == 413, r.text
    assert r.json()["error_type"] == "Validation" and "query" in r.json()["error"]
    cut = client.post("/rerank", json={"query": long_query, "texts": ["word"], "truncate": True})
    assert cut.status_code == 200
    stub = tei_grpc.RerankStub(grpc.insecure_channel(served.tcp))
    with pytest.raises(grpc.RpcError) as err:
        stub.Rerank(tei.RerankRequest(query=long_query, texts=["word"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == r.json()["error"]  # one rule, one message on both faces
    with pytest.raises(grpc.RpcError):
        stub.RerankStream(iter([tei.RerankStreamRequest(query=long_query, text="word")]))
    assert len(stub.Rerank(tei.RerankRequest(query=long_query, texts=["w"], truncate=True)).ranks)


def test_tei_refusals_count_alike_on_both_faces(client, served):
    """The 'set truncate=true' refusal is TooLarge on both (before: InvalidInput on gRPC)."""
    import grpc

    from edgerank.proto.tei.v1 import tei_pb2 as tei
    from edgerank.proto.tei.v1 import tei_pb2_grpc as tei_grpc
    from tests.server.test_http import scrape, value

    long_text = " ".join(CORPUS)[:3500]
    before = scrape(served)
    assert client.post("/rerank", json={"query": "q", "texts": [long_text]}).status_code == 413
    with pytest.raises(grpc.RpcError):
        tei_grpc.RerankStub(grpc.insecure_channel(served.tcp)).Rerank(
            tei.RerankRequest(query="q", texts=[long_text])
        )
    after = scrape(served)
    key = ("edgerank_rejections_total", {"reason": "too_large"})
    assert value(after, key[0], **key[1]) - value(before, key[0], **key[1]) == 2


def test_a_request_larger_than_the_queue_names_only_what_is_over(tiny_onnx_dir, tmp_path):
    """Before: "request needs 20 pairs / 0 tokens" (tokens are not counted yet then)."""
    server = HttpServerThread(http_settings(tmp_path, max_queue_pairs=10))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        r = httpx.post(
            server.base + "/v2/rerank", json={"query": "q", "documents": CORPUS[:20]}, timeout=60
        )
        assert r.status_code == 413
        assert r.json()["error"].startswith("request has 20 pairs, more than the whole queue")
        assert "tokens" not in r.json()["error"]
    finally:
        server.close()
