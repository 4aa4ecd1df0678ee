"""gRPC against hostile and current clients: undecodable messages are the caller's error and
counted (and named for what they are); reflection answers on v1 (what current tools ask first)
and v1alpha, and only with the token on a protected port; answers report the name asked for."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from edgerank.backends.onnx import OnnxBackend
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc
from edgerank.proto.tei.v1 import tei_pb2 as tei
from edgerank.proto.tei.v1 import tei_pb2_grpc as tei_grpc
from tests.server.test_http import HttpServerThread, http_settings, scrape, value
from tests.server.test_server import ServerThread, settings_for

# RerankRequest{query: b"a\xff", documents: [b"ok"]}: field 1 and 2, length-delimited
BAD_UTF8 = b"\x0a\x02a\xff\x12\x02ok"


@pytest.fixture(scope="module")
def served(tiny_onnx_dir, tmp_path_factory):
    server = HttpServerThread(http_settings(tmp_path_factory.mktemp("grpc-hardening")))
    server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
    yield server
    server.close()


def raw_call(address: str, method: str, payload: bytes, streaming: bool = False):
    channel = grpc.insecure_channel(address)
    if streaming:
        call = channel.stream_unary(method, request_serializer=None, response_deserializer=None)
        return call(iter([payload]), timeout=30)
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return call(payload, timeout=30)


@pytest.mark.parametrize(
    ("method", "streaming"),
    [
        ("/edgerank.v1.Reranker/Rerank", False),
        ("/edgerank.v1.Reranker/RerankStream", True),
        ("/tei.v1.Rerank/Rerank", False),
    ],
)
def test_invalid_utf8_in_a_string_field_is_invalid_argument_and_counted(served, method, streaming):
    before = scrape(served)
    with pytest.raises(grpc.RpcError) as err:
        raw_call(served.tcp, method, BAD_UTF8, streaming)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in err.value.details()
    after = scrape(served)
    reason = ("edgerank_rejections_total", {"reason": "invalid_input"})
    assert value(after, reason[0], **reason[1]) - value(before, reason[0], **reason[1]) == 1
    good = pb.RerankRequest(query="a", documents=["ok"]).SerializeToString()
    answer = raw_call(served.tcp, "/edgerank.v1.Reranker/Rerank", good)
    assert len(pb.RerankResponse.FromString(answer).results) == 1  # and the server is fine


def _reflection_messages(version: str):
    pool = descriptor_pool.Default()
    request = pool.FindMessageTypeByName(f"grpc.reflection.{version}.ServerReflectionRequest")
    response = pool.FindMessageTypeByName(f"grpc.reflection.{version}.ServerReflectionResponse")
    return message_factory.GetMessageClass(request), message_factory.GetMessageClass(response)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_on_v1_and_v1alpha(served, version):
    import grpc_reflection.v1alpha.reflection_pb2  # noqa: F401 - registers v1alpha's types

    Request, Response = _reflection_messages(version)
    stream = grpc.insecure_channel(served.tcp).stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )
    asks = [
        Request(list_services=""),
        Request(file_containing_symbol="edgerank.v1.Reranker"),
        Request(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
    ]
    listed, rerank_file, own_file = list(stream(iter(asks), timeout=30))
    names = {s.name for s in listed.list_services_response.service}
    assert {"edgerank.v1.Reranker", "tei.v1.Rerank", "grpc.health.v1.Health"} <= names
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= (
        names
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in rerank_file.file_descriptor_response.file_descriptor_proto
    ]
    assert any(
        f.package == "edgerank.v1" and any(s.name == "Reranker" for s in f.service) for f in files
    )
    (own,) = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in own_file.file_descriptor_response.file_descriptor_proto
    ]
    assert own.package == "grpc.reflection.v1"


def test_garbage_is_not_called_a_utf8_problem(served):
    with pytest.raises(grpc.RpcError) as err:
        raw_call(served.tcp, "/edgerank.v1.Reranker/Rerank", b"\xff\xff\xff\xff\x0f\x07garbage")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in err.value.details()
    assert "UTF-8" not in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        raw_call(served.tcp, "/edgerank.v1.Reranker/Rerank", BAD_UTF8)
    assert "field 'query' is not valid UTF-8" in err.value.details()


# -- served names, one rule on both faces ------------------------------------------------------


@pytest.fixture(scope="module")
def aliased(tiny_onnx_dir, tmp_path_factory):
    settings = http_settings(
        tmp_path_factory.mktemp("grpc-names"), served_model_name="rerank-v3.5,ce,ce"
    )
    server = HttpServerThread(settings)
    server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
    yield server
    server.close()


@pytest.mark.parametrize("asked", ["rerank-v3.5", "ce", "tiny-bert", None])
def test_grpc_answers_report_the_name_asked_for_as_http_does(aliased, asked):
    """Before: gRPC answered model "tiny-bert" (the loaded model) whatever was asked."""
    import httpx

    stub = pb_grpc.RerankerStub(grpc.insecure_channel(aliased.tcp))
    extra = {} if asked is None else {"model": asked}
    rerank = stub.Rerank(pb.RerankRequest(query="q", documents=["a"], **extra))
    score = stub.Score(pb.ScoreRequest(pairs=[pb.Pair(query="q", passage="a")], **extra))
    body = {"query": "q", "documents": ["a"], **extra}
    http = httpx.post(aliased.base + "/v2/rerank", json=body, timeout=60).json()
    assert rerank.model == score.model == http["model"] == (asked or "rerank-v3.5")
    info = httpx.get(aliased.base + "/info", timeout=60).json()
    assert info["served_model_names"] == ["rerank-v3.5", "ce", "tiny-bert"]  # each once


def test_both_tei_info_answers_agree(aliased):
    import httpx

    grpc_info = tei_grpc.InfoStub(grpc.insecure_channel(aliased.tcp)).Info(tei.InfoRequest())
    http_info = httpx.get(aliased.base + "/info", timeout=60).json()
    for field in ("model_id", "model_dtype", "max_input_length", "max_batch_tokens",
                  "max_client_batch_size", "tokenization_workers", "version",
                  "max_concurrent_requests"):  # fmt: skip
        assert getattr(grpc_info, field) == http_info[field], field
    assert grpc_info.model_id == "rerank-v3.5"  # before: "tiny-bert" over gRPC


# -- reflection needs the token -----------------------------------------------------------------


def test_reflection_needs_the_token_on_tcp_and_health_does_not(tiny_onnx_dir, tmp_path):
    """Before: reflection listed the whole API to anyone on a token-protected port."""
    import grpc_reflection.v1alpha.reflection_pb2  # noqa: F401 - registers v1alpha's types
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = ServerThread(settings_for(tmp_path, token="s3cret"))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        Request, Response = _reflection_messages("v1")

        def list_services(address: str, token: str | None) -> set[str]:
            stream = grpc.insecure_channel(address).stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=Request.SerializeToString,
                response_deserializer=Response.FromString,
            )
            metadata = () if token is None else (("authorization", f"Bearer {token}"),)
            (answer,) = stream(iter([Request(list_services="")]), metadata=metadata, timeout=30)
            return {s.name for s in answer.list_services_response.service}

        for token in (None, "wrong"):
            with pytest.raises(grpc.RpcError) as err:
                list_services(server.tcp, token)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "edgerank.v1.Reranker" in list_services(server.tcp, "s3cret")
        assert "edgerank.v1.Reranker" in list_services(server.unix, None)  # the socket's mode
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.tcp))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
    finally:
        server.close()
