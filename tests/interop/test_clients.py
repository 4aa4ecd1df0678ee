"""The client libraries people already point at rerank servers, unmodified, against edgerank.

Each must get the ranking edgerank computes for the same request (the reference is the
daemon's own gRPC answer), through its default code path: the base URL and the key are the
only settings changed, and each asks for the model name it defaults to (served as an alias).

    cohere v5 (the dev extra's, shared with langchain-cohere and llama-index) and the latest
    major (pip-installed into pytest's cache with --target, run in a subprocess: two cohere
    versions cannot share one environment); litellm's cohere/, jina_ai/, huggingface/,
    infinity/ and hosted_vllm/ providers; langchain-cohere's CohereRerank; llama-index's
    CohereRerank postprocessor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc
from edgerank.testing import tiny_models

ROOT = Path(__file__).resolve().parents[2]
QUERY = "winter snow and cold rain"
DOCS = tiny_models.corpus(12, seed=77)
TOP_N = 4
#: the newest major of the cohere SDK, beside the v5 the dev extra installs
COHERE_LATEST = "cohere>=7,<8"


@pytest.fixture(scope="module")
def reference(daemon) -> list[tuple[int, float]]:
    """(index, normalised score) best first, from the daemon's own gRPC API."""
    stub = pb_grpc.RerankerStub(grpc.insecure_channel(daemon.grpc))
    resp = stub.Rerank(
        pb.RerankRequest(query=QUERY, documents=DOCS, top_n=TOP_N),
        metadata=(("authorization", f"Bearer {daemon.token}"),),
        timeout=60,
    )
    return [(r.index, r.normalised_score) for r in resp.results]


def same_ranking(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)


# -- cohere ----------------------------------------------------------------------------------


def test_cohere_v5_client_v2(daemon, reference):
    import cohere

    assert cohere.__version__.startswith("5.")
    co = cohere.ClientV2(base_url=daemon.http, api_key=daemon.token)
    resp = co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=TOP_N)
    same_ranking([(r.index, r.relevance_score) for r in resp.results], reference)


def test_cohere_v5_client_v1(daemon, reference):
    import cohere

    co = cohere.Client(base_url=daemon.http, api_key=daemon.token)
    resp = co.rerank(
        model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=TOP_N,
        return_documents=True,
    )  # fmt: skip
    same_ranking([(r.index, r.relevance_score) for r in resp.results], reference)
    assert [r.document.text for r in resp.results] == [DOCS[i] for i, _ in reference]


def test_cohere_v5_unknown_model_names_the_served_ones(daemon):
    import cohere

    co = cohere.ClientV2(base_url=daemon.http, api_key=daemon.token)
    with pytest.raises(cohere.errors.BadRequestError) as err:
        co.rerank(model="rerank-multilingual-v2.0", query=QUERY, documents=DOCS)
    assert "rerank-v3.5" in str(err.value.body)


LATEST_SCRIPT = """
import json, sys
import cohere
base, key, query, top_n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
docs = json.loads(sys.stdin.read())
co = cohere.ClientV2(base_url=base, api_key=key)
v2 = co.rerank(model="rerank-v3.5", query=query, documents=docs, top_n=top_n)
v1 = cohere.Client(base_url=base, api_key=key).rerank(
    model="rerank-english-v3.0", query=query, documents=docs, top_n=top_n)
print(json.dumps({
    "version": cohere.__version__,
    "v2": [[r.index, r.relevance_score] for r in v2.results],
    "v1": [[r.index, r.relevance_score] for r in v1.results],
}))
"""


@pytest.fixture(scope="module")
def cohere_latest(request) -> Path:
    """The newest cohere SDK in its own directory (pip --target, cached between runs)."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = Path(cache.mkdir("cohere-latest")) if cache else Path("/tmp/edgerank-cohere-latest")
    target = root / "site"
    if not (target / "cohere").is_dir():
        # its dependencies are the v5 ones, already installed: only the package itself
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade",
               "--target", str(target), COHERE_LATEST]  # fmt: skip
        subprocess.run(cmd, check=True, timeout=600)
    return target


def test_cohere_latest_client_v2_and_v1(daemon, reference, cohere_latest):
    env = {**os.environ, "PYTHONPATH": str(cohere_latest)}
    done = subprocess.run(
        [sys.executable, "-c", LATEST_SCRIPT, daemon.http, daemon.token, QUERY, str(TOP_N)],
        input=json.dumps(DOCS), capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert int(out["version"].split(".")[0]) >= 7
    same_ranking([tuple(x) for x in out["v2"]], reference)
    same_ranking([tuple(x) for x in out["v1"]], reference)


# -- litellm ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def litellm():
    # the bundled cost map, not a download (no network but PyPI here, and none needed)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


@pytest.mark.parametrize(
    "model",
    [
        "cohere/rerank-english-v3.0",  # Cohere v1 on /v1/rerank
        "jina_ai/jina-reranker-v2-base-multilingual",  # Jina on /v1/rerank
        "huggingface/BAAI/bge-reranker-base",  # TEI's body on /rerank
        "hosted_vllm/BAAI/bge-reranker-base",  # Cohere-style body on /rerank
    ],
)
def test_litellm_providers(litellm, daemon, reference, model):
    resp = litellm.rerank(
        model=model, query=QUERY, documents=DOCS, top_n=TOP_N,
        api_base=daemon.http, api_key=daemon.token,
    )  # fmt: skip
    same_ranking([(r["index"], r["relevance_score"]) for r in resp.results], reference)


def test_litellm_infinity_without_documents(litellm, daemon, reference):
    """The Cohere-style body on /rerank, as Infinity takes it. litellm sends the very same
    body for infinity/ and hosted_vllm/, but parses `document` as Infinity's plain string
    for one and vLLM's {"text"} for the other: edgerank answers vLLM's (and Cohere's) form,
    so with infinity/ ask return_documents=False (or use the cohere/ provider)."""
    resp = litellm.rerank(
        model="infinity/BAAI/bge-reranker-base", query=QUERY, documents=DOCS, top_n=TOP_N,
        api_base=daemon.http, api_key=daemon.token, return_documents=False,
    )  # fmt: skip
    same_ranking([(r["index"], r["relevance_score"]) for r in resp.results], reference)


def test_litellm_hosted_vllm_gets_the_documents_back(litellm, daemon, reference):
    resp = litellm.rerank(
        model="hosted_vllm/BAAI/bge-reranker-base", query=QUERY, documents=DOCS, top_n=TOP_N,
        api_base=daemon.http, api_key=daemon.token, return_documents=True,
    )  # fmt: skip
    assert [r["document"]["text"] for r in resp.results] == [DOCS[i] for i, _ in reference]


# -- frameworks ------------------------------------------------------------------------------


def test_langchain_cohere_rerank(daemon, reference):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(
        cohere_api_key=daemon.token, base_url=daemon.http, model="rerank-v3.5", top_n=TOP_N
    )
    kept = reranker.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    got = [(DOCS.index(d.page_content), d.metadata["relevance_score"]) for d in kept]
    same_ranking(got, reference)


def test_llama_index_cohere_rerank(daemon, reference):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    reranker = CohereRerank(api_key=daemon.token, base_url=daemon.http, top_n=TOP_N)
    assert reranker.model == "rerank-english-v3.0"  # its default, served as an alias
    nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i))) for i, d in enumerate(DOCS)]
    kept = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    same_ranking([(int(n.node.id_), n.score) for n in kept], reference)
