"""The daemon for real: gRPC over TCP (port 0) and a Unix socket, the tiny INT8 ONNX model.

In-process servers run on their own event-loop thread and are called with real stubs. A
`Gated` wrapper around the real backend lets a test hold the worker inside a batch, so
"busy" is a state the test sets rather than a race it hopes to win.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import stat
import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from edgerank import client
from edgerank.backends.base import ScoreOptions
from edgerank.backends.onnx import OnnxBackend
from edgerank.engine.rank import normalise, rank, score_documents
from edgerank.engine.service import Service
from edgerank.errors import InvalidInput
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc
from edgerank.proto.tei.v1 import tei_pb2 as tei
from edgerank.proto.tei.v1 import tei_pb2_grpc as tei_grpc
from edgerank.server import grpc as grpc_server
from edgerank.server.settings import Settings
from edgerank.testing import tiny_models

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CORPUS = tiny_models.corpus(400, seed=11)
LONG = " ".join(CORPUS[:40])  # far beyond the tiny model's 128 tokens


class Gated:
    """The real backend behind a gate the test can close; counts the items it scored."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.items = 0

    def encode(self, query, passages, options):
        return self.inner.encode(query, passages, options)

    def score(self, batch):
        self.entered.set()
        assert self.gate.wait(30), "test gate never opened"
        self.items += len(batch)
        return self.inner.score(batch)

    def info(self):
        return self.inner.info()

    def close(self):
        self.inner.close()


class ServerThread:
    """Service + gRPC server on a private event loop, driven from the (sync) test."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = Service(settings.engine())
        self.listening = self.call(grpc_server.start(self.service, settings))

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def load(self, backend, **start) -> None:
        self.call(self.service.start(backend, **start))
        self.call(self.listening.set_serving(True))

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.listening.tcp_port}"

    @property
    def unix(self) -> str:
        return f"unix:{self.listening.socket_path}"

    def close(self) -> None:
        self.call(self.listening.server.stop(0))
        self.service.close(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def settings_for(tmp_path, **overrides) -> Settings:
    base = dict(
        listen="127.0.0.1:0",
        socket=str(tmp_path / "edgerank.sock"),
        max_documents=50,
        max_document_chars=4000,
        max_message_bytes=64 << 10,
        max_queue_pairs=2048,
        batch_wait_ms=1.0,
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="module")
def direct(tiny_onnx_dir):
    backend = OnnxBackend.from_dir(tiny_onnx_dir, threads=1)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def served(tiny_onnx_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    server = ServerThread(settings_for(tmp))
    backend = Gated(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
    server.load(backend)
    server.backend = backend
    yield server
    backend.gate.set()
    server.close()


@pytest.fixture(params=["tcp", "unix"])
def address(request, served):
    return getattr(served, request.param)


def stub(address: str) -> pb_grpc.RerankerStub:
    return pb_grpc.RerankerStub(grpc.insecure_channel(address))


def expected(backend, query, documents, options=ScoreOptions(), top_n=None):
    raw = score_documents(backend, query, documents, options).raw
    return raw, rank(raw, backend.info().normalise, top_n)


# -- answers ---------------------------------------------------------------------------


def test_rerank_equals_direct_scoring(address, direct):
    docs = CORPUS[:30]
    query = f"cat river music {address[:4]}"  # per transport: scored, not a cache hit
    resp = stub(address).Rerank(pb.RerankRequest(query=query, documents=docs))
    raw, ranked = expected(direct, query, docs)
    assert [r.index for r in resp.results] == [r.index for r in ranked]
    np.testing.assert_array_equal(
        np.array([r.raw_score for r in resp.results], np.float32), raw[[r.index for r in ranked]]
    )
    norm = normalise(raw, "sigmoid")
    for r in resp.results:
        assert r.score == r.normalised_score == pytest.approx(norm[r.index], abs=1e-7)
        assert not r.HasField("document")
    assert resp.model == direct.info().model
    assert resp.metadata.inputs == 30 and resp.metadata.tokens > 30
    assert resp.metadata.total_time_ns >= resp.metadata.inference_time_ns > 0


def test_rerank_options_top_n_documents_raw_and_chunking(address, direct):
    docs = [LONG, *CORPUS[30:45], LONG[::-1]]
    req = pb.RerankRequest(
        query="winter snow",
        documents=docs,
        top_n=5,
        return_documents=True,
        raw_scores=True,
        truncation=pb.TRUNCATION_CHUNK,
    )
    resp = stub(address).Rerank(req)
    options = ScoreOptions(truncation="chunk")
    raw, ranked = expected(direct, "winter snow", docs, options, top_n=5)
    assert [r.index for r in resp.results] == [r.index for r in ranked]
    assert [r.document for r in resp.results] == [docs[r.index] for r in ranked]
    assert [r.score for r in resp.results] == [r.raw_score for r in resp.results]
    assert resp.metadata.inputs > len(docs)  # the long passages were split into windows
    # left truncation keeps the end of the passage: a different input, a different score
    left = stub(address).Rerank(
        pb.RerankRequest(query="winter snow", documents=[LONG], direction=pb.DIRECTION_LEFT)
    )
    raw_left, _ = expected(direct, "winter snow", [LONG], ScoreOptions(direction="left"))
    assert left.results[0].raw_score == raw_left[0]


def test_client_helper_matches(served, direct):
    docs = CORPUS[45:60]
    result = client.rerank(served.unix, "bread cheese", docs, top_n=4)
    _, ranked = expected(direct, "bread cheese", docs, top_n=4)
    assert result.ranked == ranked
    assert direct.info().model in result.model


def test_rerank_stream_equals_unary(address):
    docs = CORPUS[60:85]
    s = stub(address)
    unary = s.Rerank(pb.RerankRequest(query="ocean ship", documents=docs, top_n=10))
    messages = [pb.RerankRequest(query="ocean ship", documents=docs[:7], top_n=10)]
    messages += [pb.RerankRequest(documents=docs[i : i + 6]) for i in range(7, 25, 6)]
    streamed = s.RerankStream(iter(messages))
    assert [(r.index, r.raw_score) for r in streamed.results] == [
        (r.index, r.raw_score) for r in unary.results
    ]


def test_score_pairs_equals_direct(address, direct):
    pairs = [("cat", CORPUS[0]), ("dog park", CORPUS[1]), ("cat", CORPUS[2]), ("tea", "")]
    resp = stub(address).Score(
        pb.ScoreRequest(pairs=[pb.Pair(query=q, passage=p) for q, p in pairs])
    )
    for i, (q, p) in enumerate(pairs):
        raw, _ = expected(direct, q, [p])
        assert resp.raw_scores[i] == raw[0]
        assert resp.normalised_scores[i] == pytest.approx(float(normalise(raw, "sigmoid")[0]))


def test_info(address, direct):
    info = stub(address).Info(pb.InfoRequest())
    backend = direct.info()
    assert (info.model, info.backend, info.precision) == (
        backend.model,
        backend.backend,
        backend.precision,
    )
    assert info.max_length == backend.max_length
    assert info.limits.max_documents == 50
    assert info.limits.max_queue_pairs == 2048
    # batch settings at 0 (auto), no planner's shape for a bare directory: the default runs
    assert (info.limits.max_batch_tokens, info.limits.max_batch_pairs) == (8192, 0)
    assert info.load.completed_requests >= 1  # the warm-up went through the whole path


@pytest.mark.parametrize(
    ("settings", "want"), [({}, (512, 4)), ({"max_batch_tokens": 256}, (256, 4))]
)
def test_info_reports_the_batch_shape_the_batcher_runs_with(
    tiny_onnx_dir, tmp_path, settings, want
):
    server = ServerThread(settings_for(tmp_path, **settings))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1), shape=(512, 4))
        assert (server.service.batcher.token_budget, server.service.batcher.max_batch) == want
        limits = stub(server.unix).Info(pb.InfoRequest()).limits
        assert (limits.max_batch_tokens, limits.max_batch_pairs) == want
        tei_info = tei_grpc.InfoStub(grpc.insecure_channel(server.unix)).Info(tei.InfoRequest())
        assert (tei_info.max_batch_tokens, tei_info.max_batch_requests) == want
    finally:
        server.close()


# -- tei.v1 ----------------------------------------------------------------------------


def test_tei_rerank_and_stream(address, direct):
    docs = CORPUS[100:112]
    rerank_stub = tei_grpc.RerankStub(grpc.insecure_channel(address))
    resp = rerank_stub.Rerank(
        tei.RerankRequest(query="piano song", texts=docs, truncate=True, return_text=True)
    )
    raw, ranked = expected(direct, "piano song", docs)
    assert [r.index for r in resp.ranks] == [r.index for r in ranked]
    assert [r.text for r in resp.ranks] == [docs[r.index] for r in ranked]
    assert [r.score for r in resp.ranks] == pytest.approx([r.score for r in ranked], abs=1e-7)
    assert resp.metadata.compute_tokens > 0 and resp.metadata.compute_chars > 0

    raw_req = tei.RerankRequest(query="piano song", texts=docs, raw_scores=True)
    raw_resp = rerank_stub.Rerank(raw_req)
    assert [r.score for r in raw_resp.ranks] == [float(raw[r.index]) for r in ranked]

    stream = rerank_stub.RerankStream(
        iter(tei.RerankStreamRequest(query="piano song", text=t, raw_scores=True) for t in docs)
    )
    assert [(r.index, r.score) for r in stream.ranks] == [
        (r.index, r.score) for r in raw_resp.ranks
    ]

    info = tei_grpc.InfoStub(grpc.insecure_channel(address)).Info(tei.InfoRequest())
    assert info.model_type == tei.MODEL_TYPE_RERANKER
    assert info.max_client_batch_size == 50
    assert info.max_batch_tokens == 8192 and not info.HasField("max_batch_requests")  # no cap


def test_tei_refuses_over_long_input_unless_truncate(address):
    rerank_stub = tei_grpc.RerankStub(grpc.insecure_channel(address))
    with pytest.raises(grpc.RpcError) as err:
        rerank_stub.Rerank(tei.RerankRequest(query="q", texts=["short", LONG]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text 1" in err.value.details() and "truncate" in err.value.details()
    ok = rerank_stub.Rerank(tei.RerankRequest(query="q", texts=["short", LONG], truncate=True))
    assert len(ok.ranks) == 2


# -- concurrency and limits ------------------------------------------------------------


def test_a_hundred_concurrent_clients_all_get_their_answer(served, direct):
    def one(k: int):
        docs = CORPUS[k : k + 3 + k % 9]
        query = " ".join(CORPUS[300 + k].split()[:4])
        address = served.unix if k % 2 else served.tcp
        resp = stub(address).Rerank(pb.RerankRequest(query=query, documents=docs), timeout=60)
        return k, query, docs, resp

    batches_before = served.service.batcher.stats.batches
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(one, range(100)))
    for k, query, docs, resp in answers:
        raw, _ = expected(direct, query, docs)
        # each answer is this request's own: every document once, best first, and each score
        # the one direct scoring gives (batch mates move a padded batch's fp32 sums by ~1 ulp)
        assert sorted(r.index for r in resp.results) == list(range(len(docs))), k
        got = np.array([r.raw_score for r in resp.results], np.float32)
        assert np.all(np.diff(got) <= 0), k
        np.testing.assert_allclose(
            got, raw[[r.index for r in resp.results]], rtol=0, atol=1e-6, err_msg=str(k)
        )
    # requests shared batches (fewer batches than requests)
    assert served.service.batcher.stats.batches - batches_before < 100


def test_overload_is_refused_at_once_and_the_held_request_completes(
    tiny_onnx_dir, tmp_path, direct
):
    server = ServerThread(settings_for(tmp_path, max_queue_pairs=64))
    backend = Gated(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
    server.load(backend)
    backend.gate.clear()
    backend.entered.clear()
    held = concurrent.futures.ThreadPoolExecutor(1)
    try:
        docs = CORPUS[200:240]  # 40 of the 64 queued pairs
        first = held.submit(
            stub(server.tcp).Rerank, pb.RerankRequest(query="cat", documents=docs), timeout=60
        )
        assert backend.entered.wait(30)  # the worker is inside the first batch
        with pytest.raises(grpc.RpcError) as err:
            stub(server.unix).Rerank(
                pb.RerankRequest(query="dog", documents=CORPUS[:30]), timeout=30
            )
        # refused while the first request is still held: no waiting in a queue
        assert not first.done()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "overloaded" in err.value.details()
        pushback = dict(err.value.trailing_metadata())["grpc-retry-pushback-ms"]
        assert int(pushback) > 0
        # a request that fits beside the held one is still admitted
        small = held.submit(
            stub(server.unix).Rerank, pb.RerankRequest(query="dog", documents=CORPUS[:20])
        )
    finally:
        backend.gate.set()
    resp = first.result(60)
    _, ranked = expected(direct, "cat", docs)
    assert [r.index for r in resp.results] == [r.index for r in ranked]
    assert len(small.result(60).results) == 20
    assert server.service.admission.refused == 1
    held.shutdown()
    server.close()


def test_deadline_expired_work_is_dropped_unscored(served):
    backend = served.backend
    service = served.service
    backend.gate.clear()
    backend.entered.clear()
    held = concurrent.futures.ThreadPoolExecutor(1)
    try:
        first = held.submit(
            stub(served.tcp).Rerank,
            pb.RerankRequest(query="cat deadline", documents=CORPUS[:10]),  # not cached
            timeout=60,
        )
        assert backend.entered.wait(30)
        dropped = service.batcher.stats.dropped
        scored = backend.items
        late = stub(served.unix).Rerank.future(
            pb.RerankRequest(query="dog", documents=CORPUS[10:17]), timeout=0.3
        )
        while service.batcher.queued[0] < 7 and not late.done():
            time.sleep(0.005)
        assert service.batcher.queued[0] == 7  # queued behind the held batch
        with pytest.raises(grpc.RpcError) as err:
            late.result()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        backend.gate.set()
    assert len(first.result(60).results) == 10
    assert backend.items - scored == 10  # only the held request's pairs ran
    assert service.batcher.stats.dropped - dropped == 7
    assert service.admission.pairs == 0  # and its admission was released
    held.shutdown()


BAD = {
    "empty query": pb.RerankRequest(query="  ", documents=["a"]),
    "no documents": pb.RerankRequest(query="q"),
    "too many documents": pb.RerankRequest(query="q", documents=["d"] * 51),
    "document too long": pb.RerankRequest(query="q", documents=["ok", "x" * 4001]),
    "negative top_n": pb.RerankRequest(query="q", documents=["a"], top_n=-1),
    "NUL in a document": pb.RerankRequest(query="q", documents=["a", "b\x00c"]),
    "NUL in the query": pb.RerankRequest(query="q\x00", documents=["a"]),
    "unknown model": pb.RerankRequest(query="q", documents=["a"], model="bge-reranker-v2-m3"),
    "message too large": pb.RerankRequest(query="q", documents=["y" * 3000] * 30),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(address, case):
    s = stub(address)
    with pytest.raises(grpc.RpcError) as err:
        s.Rerank(BAD[case], timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details() and "Traceback" not in err.value.details()
    assert len(s.Rerank(pb.RerankRequest(query="q", documents=["a", "b"])).results) == 2


def test_the_loaded_model_may_be_named(address, direct):
    name = direct.info().model
    resp = stub(address).Rerank(pb.RerankRequest(query="q", documents=["a"], model=name))
    assert resp.model == name


def test_unix_socket_is_0660(served):
    mode = stat.S_IMODE(os.stat(served.listening.socket_path).st_mode)
    assert mode == 0o660


def test_client_helper_raises_domain_errors(served):
    with pytest.raises(InvalidInput, match="INVALID_ARGUMENT"):
        client.rerank(served.tcp, "q", ["a"], model="nope")


# -- health, reflection, auth ----------------------------------------------------------


def health(address: str, service: str = "") -> int:
    channel = grpc.insecure_channel(address)
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        .status
    )


def test_health_transitions(tiny_onnx_dir, tmp_path):
    server = ServerThread(settings_for(tmp_path))
    try:
        for name in ("", "edgerank.v1.Reranker", "tei.v1.Rerank"):
            assert health(server.unix, name) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub(server.tcp).Rerank(pb.RerankRequest(query="q", documents=["a"]))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading" in err.value.details()

        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        assert health(server.unix) == SERVING
        assert health(server.tcp, "edgerank.v1.Reranker") == SERVING
        assert len(stub(server.tcp).Rerank(pb.RerankRequest(query="q", documents=["a"])).results)

        server.service.drain()
        server.call(server.listening.health.enter_graceful_shutdown())
        assert health(server.unix) == NOT_SERVING
        assert health(server.tcp, "tei.v1.Rerank") == NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub(server.tcp).Rerank(pb.RerankRequest(query="q", documents=["a"]))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.close()


def test_reflection_lists_services_and_drives_rerank_without_the_proto(served):
    channel = grpc.insecure_channel(served.tcp)
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"edgerank.v1.Reranker", "tei.v1.Rerank", "tei.v1.Info", "grpc.health.v1.Health"} <= (
        services
    )
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName("edgerank.v1.Reranker").methods_by_name["Rerank"]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/edgerank.v1.Reranker/Rerank",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    resp = call(request_cls(query="cat", documents=["a cat", "a ship"], top_n=1), timeout=30)
    assert len(resp.results) == 1 and resp.results[0].index in (0, 1)


def test_bearer_token_on_tcp_not_on_the_socket(tiny_onnx_dir, tmp_path):
    server = ServerThread(settings_for(tmp_path, token="let-me-in"))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        req = pb.RerankRequest(query="q", documents=["a"])
        with pytest.raises(grpc.RpcError) as err:
            stub(server.tcp).Rerank(req)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub(server.tcp).Rerank(req, metadata=(("authorization", "Bearer wrong"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub(server.tcp).Rerank(req, metadata=(("authorization", "Bearer let-me-in"),))
        assert len(ok.results) == 1
        assert len(stub(server.unix).Rerank(req).results) == 1
        assert health(server.tcp) == SERVING  # probes need no token
        assert client.rerank(server.tcp, "q", ["a"], token="let-me-in").ranked
    finally:
        server.close()
