"""The score cache's Redis tier against a real redis-server and the tiny INT8 ONNX model.

Replicas sharing entries, TTL expiry, a re-imported model, and Redis dying or hanging
mid-run: the daemon must keep answering, warn once, and count the failures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import grpc
import httpx
import numpy as np
import pytest

from edgerank.backends.onnx import OnnxBackend
from edgerank.engine.cache_entries import VALUE
from edgerank.engine.rank import score_documents
from edgerank.engine.service import Service
from edgerank.install.store import ModelStore
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc
from edgerank.server.settings import Settings
from edgerank.testing import tiny_models
from tests.server.test_http import HttpServerThread, http_settings
from tests.server.test_server import Gated, ServerThread, settings_for
from tests.support.redis import redis_server, redis_tcp  # noqa: F401  (fixtures)

CORPUS = tiny_models.corpus(200, seed=5)
LOGGER = "edgerank.engine.cache_redis"
#: a budget no busy machine runs out of: only the hung-Redis test is about the timeout
PATIENT_MS = 30_000.0


def sample(service: Service, name: str, labels: dict | None = None) -> float:
    return service.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def settings(url: str, **overrides) -> Settings:
    base = dict(
        max_documents=50,
        max_document_chars=4000,
        batch_wait_ms=0.5,
        cache_url=url,
        cache_timeout_ms=PATIENT_MS,
        cache_bytes=0,  # Redis only: every hit below came through Redis
        cache_retry_s=0.0,  # try Redis on every request: "warned once" is then a real claim
    )
    base.update(overrides)
    return Settings(**base)


async def started(model_dir, config: Settings) -> tuple[Service, Gated]:
    backend = Gated(OnnxBackend.from_dir(model_dir, threads=1))
    service = Service(config.engine())
    await service.start(backend)
    backend.items = 0  # the warm-up's
    return service, backend


async def stopped(*services: Service) -> None:
    for service in services:
        await service.close_cache()
        service.close()


def test_two_daemons_share_one_redis(tiny_onnx_dir, tmp_path, redis_server):  # noqa: F811
    """gRPC daemons A and B on one Redis: B answers A's pairs without its model, same bits."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    patient = dict(cache_url=redis_server.url, cache_timeout_ms=PATIENT_MS)
    a = ServerThread(settings_for(tmp_path / "a", **patient))
    b = ServerThread(settings_for(tmp_path / "b", **patient))
    try:
        backends = [Gated(OnnxBackend.from_dir(tiny_onnx_dir, threads=1)) for _ in range(2)]
        for server, backend in zip((a, b), backends, strict=True):
            server.load(backend)
            backend.items = 0
        docs = CORPUS[:20]
        req = pb.RerankRequest(query="cat river music", documents=docs)
        first = pb_grpc.RerankerStub(grpc.insecure_channel(a.tcp)).Rerank(req)
        assert backends[0].items == 20
        a.call(a.service.cache.redis.flush())  # A writes to Redis after its answer
        assert redis_server.dbsize() == 20
        second = pb_grpc.RerankerStub(grpc.insecure_channel(b.unix)).Rerank(req)
        assert backends[1].items == 0  # B's model never ran
        assert sample(b.service, "edgerank_cache_hits_total", {"tier": "redis"}) == 20
        assert [(r.index, r.raw_score) for r in second.results] == [
            (r.index, r.raw_score) for r in first.results
        ]
        assert second.metadata.tokens == first.metadata.tokens
        direct = score_documents(backends[0].inner, "cat river music", docs).raw
        got = np.array([r.raw_score for r in second.results], np.float32)
        assert got.tobytes() == direct[[r.index for r in second.results]].tobytes()
        # B's own memory tier now holds them too
        third = pb_grpc.RerankerStub(grpc.insecure_channel(b.tcp)).Rerank(req)
        assert sample(b.service, "edgerank_cache_hits_total", {"tier": "memory"}) == 20
        assert third.results == second.results
    finally:
        for server in (a, b):
            server.call(server.service.close_cache())
            server.close()


def test_entries_expire_after_the_ttl(tiny_onnx_dir, redis_tcp):  # noqa: F811
    async def scenario():
        service, backend = await started(tiny_onnx_dir, settings(redis_tcp.url, cache_ttl_s=0.4))
        docs = CORPUS[20:30]
        miss = await service.rerank("winter snow", docs)
        await service.cache.redis.flush()
        key = redis_tcp.command("KEYS", "edgerank:score:*").split(b"\r\n")[2]
        assert 0 < int(redis_tcp.command("PTTL", key).strip()[1:]) <= 400
        hit = await service.rerank("winter snow", docs)
        assert backend.items == 10 and hit.outcome.cached == 10
        await asyncio.sleep(0.6)  # past the TTL: Redis no longer hands them out
        again = await service.rerank("winter snow", docs)
        assert backend.items == 20 and again.outcome.cached == 0
        assert (
            again.outcome.raw.tobytes() == miss.outcome.raw.tobytes() == hit.outcome.raw.tobytes()
        )
        await stopped(service)

    asyncio.run(scenario())


def test_a_reimported_model_never_meets_the_old_scores(tiny_bert_hf, tmp_path, redis_server):  # noqa: F811
    other = tiny_models.build_tiny_bert(tmp_path / "other-hf", seed=1)
    store = ModelStore(tmp_path / "home")

    async def scenario():
        store.import_onnx("m", tiny_bert_hf)
        old, _ = await started(store.path("m"), settings(redis_server.url))
        docs = CORPUS[30:42]
        before = await old.rerank("bread cheese", docs)
        await old.cache.redis.flush()
        await stopped(old)
        assert redis_server.dbsize() == 12
        store.import_onnx("m", other)  # the same name, other weights
        new, backend = await started(store.path("m"), settings(redis_server.url))
        after = await new.rerank("bread cheese", docs)
        assert backend.items == 12 and after.outcome.cached == 0
        assert sample(new, "edgerank_cache_hits_total", {"tier": "redis"}) == 0
        direct = score_documents(backend.inner, "bread cheese", docs).raw
        assert after.outcome.raw.tobytes() == direct.tobytes()
        assert after.outcome.raw.tobytes() != before.outcome.raw.tobytes()
        await stopped(new)
        assert redis_server.dbsize() == 24  # both models' entries, side by side

    asyncio.run(scenario())


def test_redis_killed_mid_run(tiny_onnx_dir, redis_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario():
        service, backend = await started(tiny_onnx_dir, settings(redis_server.url))
        direct = backend.inner
        docs = CORPUS[50:60]
        await service.rerank("sea salt", docs)
        await service.cache.redis.flush()
        await service.rerank("sea salt", docs)
        assert backend.items == 10 and sample(service, "edgerank_cache_redis_up") == 1
        redis_server.kill()
        for k in range(6):  # cached pairs and new ones: all answered, by the model now
            query = "sea salt" if k % 2 else f"mountain {k}"
            got = await service.rerank(query, docs)
            assert got.outcome.cached == 0
            assert got.outcome.raw.tobytes() == score_documents(direct, query, docs).raw.tobytes()
        assert backend.items == 70
        warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "scoring without it" in warnings[0].getMessage()
        errors = sample(service, "edgerank_cache_redis_errors_total", {"op": "get"})
        assert errors == 6
        assert sample(service, "edgerank_cache_redis_up") == 0
        # Redis comes back (empty): the next request uses it again, and says so once
        redis_server.restart()
        await service.rerank("sea salt", docs)
        await service.cache.redis.flush()
        assert sample(service, "edgerank_cache_redis_up") == 1
        assert any("answers again" in r.getMessage() for r in caplog.records if r.name == LOGGER)
        assert redis_server.dbsize() == 10
        await stopped(service)

    asyncio.run(scenario())


def test_a_hung_redis_is_skipped_after_the_timeout(tiny_onnx_dir, redis_server, caplog):  # noqa: F811
    async def scenario():
        config = settings(redis_server.url, cache_timeout_ms=100.0, cache_retry_s=60.0)
        service, backend = await started(tiny_onnx_dir, config)
        docs = CORPUS[60:66]
        await service.rerank("paper kite", docs)
        await service.cache.redis.flush()
        redis_server.freeze()
        try:
            # a hang detector, not a speed claim: without the timeout this would wait forever
            got = await asyncio.wait_for(service.rerank("paper kite", docs), 30)
            assert got.outcome.cached == 0 and backend.items == 12
            assert sample(service, "edgerank_cache_redis_errors_total", {"op": "get"}) == 1
            # the breaker is open: the next requests do not even ask
            await asyncio.wait_for(service.rerank("paper kite", docs), 30)
            assert sample(service, "edgerank_cache_redis_errors_total", {"op": "get"}) == 1
        finally:
            redis_server.thaw()
        await stopped(service)
        warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "no answer within 100 ms" in warnings[0].getMessage()

    asyncio.run(scenario())


def test_settings_and_a_missing_client(tmp_path, monkeypatch):
    from edgerank.engine.cache_redis import RedisTier
    from edgerank.errors import BackendUnavailable, SettingsError
    from edgerank.server.settings import load

    empty = tmp_path / "edgerank.toml"
    empty.write_text("")
    with pytest.raises(SettingsError, match="cache_url must start with redis://"):
        load({"cache_url": "http://localhost:6379"}, env={}, config=empty)
    env = {"EDGERANK_CACHE_URL": "unix:///run/redis/redis.sock", "EDGERANK_CACHE_BYTES": "0"}
    s = load({"cache_ttl_s": "60"}, env=env, config=empty)
    assert (s.cache_url, s.cache_bytes, s.cache_ttl_s) == ("unix:///run/redis/redis.sock", 0, 60.0)
    assert "redis.sock" not in repr(s)  # the URL may carry a password
    for bad in ({"cache_bytes": -1}, {"cache_timeout_ms": 0}, {"cache_ttl_s": -1}):
        with pytest.raises(SettingsError):
            load(bad, env={}, config=empty)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # the extra is not installed
    with pytest.raises(BackendUnavailable, match=r"edgerank\[redis\]"):
        RedisTier("redis://localhost", ttl_s=1, timeout_s=0.05, retry_s=1)


def _keys(server) -> list[bytes]:
    """KEYS edgerank:score:* from the raw RESP reply (*N, then $len / key pairs)."""
    lines = server.command("KEYS", "edgerank:score:*").split(b"\r\n")
    return [line for line in lines[1:] if line and not line.startswith((b"$", b"*"))]


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


#: (raw score, model inputs, tokens) another process may leave under our keys
FORGED = [
    (np.nan, 1, 20),
    (np.inf, 1, 20),
    (-np.inf, 1, 20),
    (1.5, 0xFFFFFFFF, 0xFFFFFFFF),  # usage 17179869180 from four of them, before
    (1.5, 1, 0xFFFFFFFF),
    (1.5, 0, 0),
]


def test_forged_values_in_redis_are_misses_never_answers(
    tiny_onnx_dir,
    tmp_path,
    redis_server,  # noqa: F811
    caplog,
):
    """Before: NaN and Infinity scores came back as `"relevance_score":NaN` (not JSON) and a
    forged count as usage.total_tokens 17179869180. A shared cache is another process's
    input: a value that is not a finite score with plausible counts is a miss."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    docs = CORPUS[100:106]
    body = {"query": "forged values", "documents": docs}
    patient = dict(cache_url=redis_server.url, cache_timeout_ms=PATIENT_MS)
    writer = HttpServerThread(http_settings(tmp_path / "a", **patient))
    reader = HttpServerThread(http_settings(tmp_path / "b", cache_bytes=0, **patient))
    try:
        for server in (writer, reader):
            server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        truth = _strict_json(httpx.post(writer.base + "/v2/rerank", json=body, timeout=60).text)
        writer.call(writer.service.cache.redis.flush())
        keys = _keys(redis_server)
        assert len(keys) == len(docs)
        faces = ("http", "grpc", "tei")
        for face in faces:
            for key, forged in zip(keys, FORGED, strict=True):
                value = np.array([forged], dtype=VALUE).tobytes()
                assert redis_server.command("SET", key, value).startswith(b"+OK")
            if face == "http":
                answer = httpx.post(reader.base + "/v2/rerank", json=body, timeout=60)
                got = _strict_json(answer.text)  # before: ValueError, NaN is not JSON
                assert got["results"] == truth["results"]
                assert got["usage"] == truth["usage"]
            elif face == "tei":
                tei_body = {"query": body["query"], "texts": docs}
                answer = httpx.post(reader.base + "/rerank", json=tei_body, timeout=60)
                got = _strict_json(answer.text)
                assert {r["index"] for r in got} == set(range(len(docs)))
            else:
                stub = pb_grpc.RerankerStub(grpc.insecure_channel(reader.tcp))
                reply = stub.Rerank(
                    pb.RerankRequest(
                        query=body["query"], documents=docs, truncation=pb.TRUNCATION_CHUNK
                    )
                )
                assert [round(r.normalised_score, 6) for r in reply.results] == [
                    round(r["relevance_score"], 6) for r in truth["results"]
                ]
                assert reply.metadata.tokens == truth["usage"]["total_tokens"]
            reader.call(reader.service.cache.redis.flush())  # the overwrite has landed
        # every forged value was refused, scored anew and overwritten; logged once
        invalid = sample(reader.service, "edgerank_cache_redis_invalid_total")
        assert invalid == len(FORGED) * len(faces)
        warnings = [r for r in caplog.records if "not edgerank scores" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        for server in (writer, reader):
            server.call(server.service.close_cache())
            server.close()
