"""gRPC against hostile and current clients: undecodable messages are the caller's error and
counted; reflection answers on v1 (what current tools ask first) and v1alpha."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from edgerank.backends.onnx import OnnxBackend
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from tests.server.test_http import HttpServerThread, http_settings, scrape, value

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
