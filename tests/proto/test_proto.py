"""The generated code is exactly what the .proto files give, and the API shapes hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerank.proto import _generate
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.tei.v1 import tei_pb2 as tei

COMMITTED = Path(_generate.__file__).resolve().parent


def _generated_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.parent != root
    }


def test_committed_code_matches_a_fresh_generation(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    _generate.generate(tmp_path)
    fresh = _generated_files(tmp_path)
    committed = _generated_files(COMMITTED)
    assert sorted(fresh) == sorted(committed), "generated file set differs: regenerate"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, (
        f"{stale} differ from the .proto sources (hand edit, stale proto, or another "
        "grpcio-tools version): run `python -m edgerank.proto._generate`"
    )


def test_every_proto_file_is_generated():
    for proto in _generate.proto_files():
        module = COMMITTED / proto.parent / f"{proto.stem}_pb2.py"
        assert module.exists(), proto


def test_imports_are_rerooted():
    grpc_module = (COMMITTED / "edgerank" / "v1" / "reranker_pb2_grpc.py").read_text()
    assert "from edgerank.proto.edgerank.v1 import reranker_pb2" in grpc_module
    assert "\nfrom edgerank.v1 import" not in grpc_module


def test_edgerank_v1_service_shape():
    service = pb.DESCRIPTOR.services_by_name["Reranker"]
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Rerank", "RerankStream", "Score", "Info"}
    assert methods["RerankStream"].client_streaming
    assert not methods["RerankStream"].server_streaming
    assert not methods["Rerank"].client_streaming
    fields = pb.RerankRequest.DESCRIPTOR.fields_by_name
    for name in ("query", "documents", "top_n", "return_documents", "truncation", "direction"):
        assert name in fields
    for name in ("raw_scores", "instruction", "model"):
        assert name in fields
    assert fields["top_n"].type == fields["top_n"].TYPE_INT32  # negative values are refused
    assert fields["instruction"].has_presence and fields["model"].has_presence
    result = pb.Result.DESCRIPTOR.fields_by_name
    assert {"index", "score", "normalised_score", "raw_score", "document"} <= set(result)
    meta = pb.Metadata.DESCRIPTOR.fields_by_name
    assert {"tokens", "queue_time_ns", "inference_time_ns", "total_time_ns"} <= set(meta)


def test_tei_v1_field_numbers_match_tei():
    assert pb.DESCRIPTOR.package == "edgerank.v1" and tei.DESCRIPTOR.package == "tei.v1"
    numbers = {f.name: f.number for f in tei.RerankRequest.DESCRIPTOR.fields}
    assert numbers == {
        "query": 1,
        "texts": 2,
        "truncate": 3,
        "raw_scores": 4,
        "return_text": 5,
        "truncation_direction": 6,
    }
    assert {f.name: f.number for f in tei.Rank.DESCRIPTOR.fields} == {
        "index": 1,
        "text": 2,
        "score": 3,
    }
    assert {f.name: f.number for f in tei.RerankResponse.DESCRIPTOR.fields} == {
        "ranks": 1,
        "metadata": 2,
    }
    meta = [f.name for f in sorted(tei.Metadata.DESCRIPTOR.fields, key=lambda f: f.number)]
    assert meta == [
        "compute_chars",
        "compute_tokens",
        "total_time_ns",
        "tokenization_time_ns",
        "queue_time_ns",
        "inference_time_ns",
    ]
    stream = {f.name: f.number for f in tei.RerankStreamRequest.DESCRIPTOR.fields}
    assert stream["text"] == 2 and stream["truncation_direction"] == 6
    rerank = tei.DESCRIPTOR.services_by_name["Rerank"]
    assert rerank.methods_by_name["RerankStream"].client_streaming
    assert tei.TruncationDirection.Value("TRUNCATION_DIRECTION_LEFT") == 1
