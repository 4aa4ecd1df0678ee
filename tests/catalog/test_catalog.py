"""The shipped models.toml validates entry by entry; malformed catalogs fail in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgerank.catalog.load import default_catalog_path, load_catalog
from edgerank.catalog.spec import LLM_KINDS, ModelSpec
from edgerank.errors import CatalogError, EdgerankError, InvalidInput, ModelNotFound

REPO_TOML = Path(__file__).resolve().parents[2] / "models.toml"
CATALOG = load_catalog(REPO_TOML)
SPECS = list(CATALOG)

#: the 19 rows of models.md's catalog table, plus the embedded fallback
MODELS_MD = {
    "ms-marco-tinybert-l2": "cross-encoder/ms-marco-TinyBERT-L2-v2",
    "ms-marco-minilm-l4": "cross-encoder/ms-marco-MiniLM-L4-v2",
    "ms-marco-minilm-l6": "cross-encoder/ms-marco-MiniLM-L6-v2",
    "jina-reranker-v1-tiny-en": "jinaai/jina-reranker-v1-tiny-en",
    "jina-reranker-v1-turbo-en": "jinaai/jina-reranker-v1-turbo-en",
    "mxbai-rerank-xsmall-v1": "mixedbread-ai/mxbai-rerank-xsmall-v1",
    "mxbai-rerank-base-v1": "mixedbread-ai/mxbai-rerank-base-v1",
    "mxbai-rerank-large-v1": "mixedbread-ai/mxbai-rerank-large-v1",
    "gte-reranker-modernbert-base": "Alibaba-NLP/gte-reranker-modernbert-base",
    "bge-reranker-base": "BAAI/bge-reranker-base",
    "bge-reranker-large": "BAAI/bge-reranker-large",
    "bce-reranker-base_v1": "maidalun1020/bce-reranker-base_v1",
    "bge-reranker-v2-m3": "BAAI/bge-reranker-v2-m3",
    "jina-reranker-v2-base-multilingual": "jinaai/jina-reranker-v2-base-multilingual",
    "qwen3-reranker-0.6b": "Qwen/Qwen3-Reranker-0.6B",
    "qwen3-reranker-4b": "Qwen/Qwen3-Reranker-4B",
    "qwen3-reranker-8b": "Qwen/Qwen3-Reranker-8B",
    "bge-reranker-v2-gemma": "BAAI/bge-reranker-v2-gemma",
    "bge-reranker-v2-minicpm-layerwise": "BAAI/bge-reranker-v2-minicpm-layerwise",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}


def by_name(spec: ModelSpec) -> str:
    return spec.name


# ------------------------------------------------------------------- the real catalog


def test_catalog_has_every_models_md_model_with_its_hub_id():
    assert {s.name: s.hub_id for s in SPECS} == MODELS_MD
    assert len(CATALOG) == 20


def test_default_path_finds_the_shipped_catalog(monkeypatch):
    monkeypatch.delenv("EDGERANK_CATALOG", raising=False)
    assert default_catalog_path().resolve() == REPO_TOML.resolve()
    assert load_catalog().names() == CATALOG.names()


def test_env_variable_overrides_the_catalog_path(monkeypatch, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(catalog_toml([cross_encoder(name="mine")]))
    monkeypatch.setenv("EDGERANK_CATALOG", str(path))
    assert load_catalog().names() == ("mine",)


@pytest.mark.parametrize("spec", SPECS, ids=by_name)
def test_entry_identity(spec: ModelSpec):
    org, _, repo = spec.hub_id.partition("/")
    assert org and repo and "/" not in repo
    assert spec.params_m > 0 and spec.max_length >= 256
    assert spec.languages and all(re.fullmatch(r"[a-z]{2,3}|multi", x) for x in spec.languages)
    if spec.layers is not None and spec.hidden is not None:
        assert spec.layers >= 2 and spec.hidden >= 128 and spec.hidden % 64 == 0


@pytest.mark.parametrize("spec", SPECS, ids=by_name)
def test_entry_memory_is_positive_and_ordered(spec: ModelSpec):
    mem = spec.memory_mib
    assert mem and all(v > 0 for v in mem.values())
    chain = [mem[p] for p in ("fp32", "fp16", "int8") if p in mem]
    assert chain == sorted(chain, reverse=True) and len(set(chain)) == len(chain)
    if "q8_0" in mem and "q4_k_m" in mem:
        assert mem["q4_k_m"] < mem["q8_0"]
    if "fp16" in mem:
        for quant in ("int8", "q8_0", "q4_k_m"):
            assert mem.get(quant, 0) < mem["fp16"]
    # weights never exceed 4 bytes per parameter (+ rounding) nor fall below ~0.5
    biggest, smallest = max(mem.values()), min(mem.values())
    assert biggest <= spec.params_m * 4 * 1.1 + 1
    assert smallest >= spec.params_m * 0.5 * 0.9


@pytest.mark.parametrize("spec", SPECS, ids=by_name)
def test_entry_score_rule_and_prompt(spec: ModelSpec):
    if spec.kind in LLM_KINDS:
        assert spec.prompt and "{query}" in spec.prompt and "{passage}" in spec.prompt
        text = spec.prompt.format(query="Q?", passage="P.", instruction=spec.default_instruction)
        assert "Q?" in text and "P." in text
        assert text.index("Q?") < text.index("P.")
        if "{instruction}" in spec.prompt:
            assert spec.default_instruction and spec.default_instruction in text
    else:
        assert spec.prompt is None
    expected = {"cross-encoder": "cls-logit", "bi-encoder": "cosine", "llm-layerwise": "layer-head"}
    if spec.kind in expected:
        assert spec.score_rule == expected[spec.kind]


@pytest.mark.parametrize("spec", SPECS, ids=by_name)
def test_entry_backends_and_sources(spec: ModelSpec):
    if spec.kind == "bi-encoder":
        assert spec.backends == ("biencoder",)
        return
    assert "torch" in spec.backends and "biencoder" not in spec.backends
    assert ("onnx" in spec.backends) == (spec.onnx is not None)
    assert ("gguf" in spec.backends) == (spec.gguf is not None)
    if spec.onnx is not None:
        assert spec.kind == "cross-encoder" and "int8" in spec.memory_mib
        for f in (spec.onnx.int8_file, spec.onnx.fp32_file):
            assert f is None or f.endswith(".onnx")
    if "Deberta" in spec.arch or spec.kind == "llm-layerwise":
        assert "gguf" not in spec.backends  # llama.cpp cannot run them
    if spec.gguf is not None:
        assert "/" in spec.gguf.repo
        for quant, fname in spec.gguf.files.items():
            assert fname.endswith(".gguf")
            assert ("fp16" if quant == "f16" else quant) in spec.memory_mib
    # the backends list is best-first: onnx before gguf before torch where present
    order = [b for b in ("onnx", "gguf", "torch") if b in spec.backends]
    assert list(spec.backends) == order


@pytest.mark.parametrize("spec", SPECS, ids=by_name)
def test_entry_licence_and_quality(spec: ModelSpec):
    nc = "-NC" in spec.licence.upper()
    assert spec.non_commercial == nc
    assert set(spec.quality) <= {"en", "zh", "multi"}
    fallback = CATALOG.fallback()
    assert fallback is not None
    if spec.kind != "bi-encoder":
        # every reranker ranks above the bi-encoder, in every group it has a figure for
        assert all(v > max(fallback.quality.values()) for v in spec.quality.values())
        for group in spec.quality:
            assert f"{group} (" in spec.quality_source, f"no source for {group}"


def test_catalog_specific_facts():
    get = CATALOG.get
    assert get("jina-reranker-v2-base-multilingual").non_commercial
    assert {s.name for s in SPECS if s.remote_code} == {
        "jina-reranker-v1-tiny-en",
        "jina-reranker-v1-turbo-en",
        "jina-reranker-v2-base-multilingual",
        "bge-reranker-v2-minicpm-layerwise",
    }
    m3 = get("bge-reranker-v2-m3")
    assert m3.max_length == 8192 and "1024" in m3.notes
    assert m3.gguf is not None and m3.gguf.repo == "gpustack/bge-reranker-v2-m3-GGUF"
    assert get("bge-reranker-v2-minicpm-layerwise").backends == ("torch",)
    assert get("bge-reranker-v2-minicpm-layerwise").cutoff_layer == 28
    assert get("ms-marco-minilm-l6").onnx.int8_file == "onnx/model_qint8_avx512.onnx"

    fallback = get("all-minilm-l6-v2")
    assert CATALOG.fallback() is fallback
    assert (fallback.kind, fallback.score_rule, fallback.max_length) == (
        "bi-encoder",
        "cosine",
        256,
    )
    assert (fallback.layers, fallback.hidden, fallback.memory_mib) == (6, 384, {"int8": 23})


def test_qwen3_and_gemma_prompts_match_the_reference_texts():
    qwen = CATALOG.get("qwen3-reranker-0.6b")
    text = qwen.prompt.format(query="q", passage="d", instruction=qwen.default_instruction)
    assert text.startswith(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        "<|im_end|>\n<|im_start|>user\n"
    )
    assert text.endswith(
        "<Instruct>: Given a web search query, retrieve relevant passages that answer the query"
        "\n<Query>: q\n<Document>: d<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert qwen.score_rule == "yes-no-softmax"
    for big in ("qwen3-reranker-4b", "qwen3-reranker-8b"):
        assert CATALOG.get(big).prompt == qwen.prompt

    gemma = CATALOG.get("bge-reranker-v2-gemma")
    text = gemma.prompt.format(query="q", passage="d", instruction=gemma.default_instruction)
    assert text == (
        "A: q\nB: d\nGiven a query A and a passage B, determine whether the passage contains "
        "an answer to the query by providing a prediction of either 'Yes' or 'No'."
    )
    assert gemma.score_rule == "yes-logit"


# ---------------------------------------------------------------------------- lookups


def test_get_unknown_model_suggests_close_names():
    with pytest.raises(ModelNotFound) as exc:
        CATALOG.get("bge-v2-m3")
    message = str(exc.value)
    assert "bge-reranker-v2-m3" in message and "\n" not in message
    assert isinstance(exc.value, InvalidInput)


def test_get_unknown_model_without_close_match():
    with pytest.raises(ModelNotFound, match="unknown model 'zzzz'") as exc:
        CATALOG.get("zzzz")
    assert "did you mean" not in str(exc.value)


def test_catalog_iteration_and_membership():
    assert [s.name for s in CATALOG] == list(CATALOG.names())
    assert "bge-reranker-v2-m3" in CATALOG and "nope" not in CATALOG
    assert set(CATALOG.quality_scale) == {"en", "zh", "multi"}


# -------------------------------------------------------------------- malformed files


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def catalog_toml(models: list[dict], head: str = "schema = 1\n") -> str:
    out = [head]
    for m in models:
        out.append("[[model]]")
        out += [f"{k} = {_toml(v)}" for k, v in m.items()]
    return "\n".join(out) + "\n"


def cross_encoder(**over) -> dict:
    m = {
        "name": "tiny",
        "hub_id": "org/tiny",
        "arch": "BertForSequenceClassification",
        "kind": "cross-encoder",
        "params_m": 4.4,
        "max_length": 512,
        "languages": ["en"],
        "licence": "Apache-2.0",
        "score_rule": "cls-logit",
        "backends": ["onnx"],
        "onnx": {"repo": "org/tiny"},
        "memory_mib": {"int8": 5},
        "quality": {"en": 40.0},
        "quality_source": "test",
    }
    m.update(over)
    return {k: v for k, v in m.items() if v is not None}


def llm(**over) -> dict:
    m = cross_encoder(
        name="lm",
        kind="llm-yes-logit",
        score_rule="yes-logit",
        backends=["torch"],
        onnx=None,
        memory_mib={"fp16": 100},
        prompt="A: {query}\nB: {passage}\n{instruction}",
        default_instruction="say yes",
    )
    m.update(over)
    return {k: v for k, v in m.items() if v is not None}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_minimal_catalogs_load(tmp_path):
    cat = load_catalog(write(tmp_path, catalog_toml([cross_encoder(), llm()])))
    assert cat.names() == ("tiny", "lm")
    assert cat.get("lm").prompt.startswith("A: {query}")


BAD_CASES = [
    # (models, expected message fragment)
    (
        [cross_encoder(hub_idd="x/y")],
        r"model 'tiny': unknown key 'hub_idd' \(did you mean 'hub_id'\?\)",
    ),
    ([cross_encoder(hub_id=None)], r"model 'tiny': field 'hub_id': missing"),
    ([cross_encoder(hub_id="tiny")], r"model 'tiny': field 'hub_id': must look like org/name"),
    ([cross_encoder(kind="reranker")], r"model 'tiny': field 'kind': must be one of"),
    (
        [cross_encoder(backends=["onnx", "tensorrt"])],
        r"field 'backends': unknown backend 'tensorrt'",
    ),
    ([cross_encoder(languages=[])], r"model 'tiny': field 'languages': must be a non-empty list"),
    ([cross_encoder(languages=["English"])], r"field 'languages': 'English' is not"),
    ([cross_encoder(memory_mib={})], r"model 'tiny': field 'memory_mib': needs at least one"),
    ([cross_encoder(memory_mib={"int8": -3})], r"field 'memory_mib.int8': must be a positive"),
    ([cross_encoder(memory_mib={"int8": 5, "int4": 3})], r"field 'memory_mib': unknown key 'int4'"),
    (
        [cross_encoder(licence="CC-BY-NC-4.0")],
        r"model 'tiny': field 'non_commercial': licence CC-BY-NC-4.0",
    ),
    (
        [cross_encoder(score_rule="yes-logit")],
        r"field 'score_rule': 'yes-logit' is not valid for cross-encoder",
    ),
    ([cross_encoder(onnx=None)], r"model 'tiny': field 'onnx': missing \(backends lists onnx\)"),
    (
        [cross_encoder(backends=["gguf"], onnx=None)],
        r"field 'gguf': missing \(backends lists gguf\)",
    ),
    ([cross_encoder(quality={"fr": 3.0})], r"field 'quality': unknown key 'fr'"),
    ([cross_encoder(quality={"en": 300})], r"field 'quality.en': must be a number in 0..100"),
    ([cross_encoder(params_m="big")], r"field 'params_m': must be a positive number"),
    ([cross_encoder(max_length=True)], r"field 'max_length': must be a positive integer"),
    (
        [cross_encoder(prompt="{query} {passage}")],
        r"field 'prompt': only LLM rerankers take a prompt",
    ),
    ([cross_encoder(), cross_encoder()], r"model 'tiny': duplicate name"),
    ([llm(prompt=None)], r"model 'lm': field 'prompt': missing"),
    ([llm(prompt="A: {query}")], r"model 'lm': field 'prompt': has no \{passage\} slot"),
    ([llm(prompt="{query} {passage} {doc}")], r"model 'lm': field 'prompt': bad placeholder"),
    ([llm(default_instruction=None)], r"model 'lm': field 'default_instruction': missing"),
    (
        [llm(backends=["onnx"], onnx={"repo": "o/r"})],
        r"the onnx backend serves cross-encoders only",
    ),
    ([llm(kind="llm-layerwise", score_rule="layer-head")], r"field 'cutoff_layer': missing"),
    ([cross_encoder(backends=["biencoder"], onnx=None)], r"'biencoder' serves bi-encoders only"),
    (
        [cross_encoder(kind="bi-encoder", score_rule="cosine")],
        r"a bi-encoder is served by \['biencoder'\] only",
    ),
    ([cross_encoder(onnx={"repo": "o/r", "int8": "x.onnx"})], r"field 'onnx': unknown key 'int8'"),
    (
        [
            cross_encoder(
                backends=["gguf"],
                onnx=None,
                memory_mib={"q8_0": 5},
                gguf={"repo": "o/r", "files": {"q5": "x.gguf"}},
            )
        ],  # fmt: skip
        r"gguf.files: unknown key 'q5'",
    ),
]


@pytest.mark.parametrize("models,message", BAD_CASES, ids=[m for _, m in BAD_CASES])
def test_malformed_entry_fails_with_one_line(tmp_path, models, message):
    path = write(tmp_path, catalog_toml(models))
    with pytest.raises(CatalogError) as exc:
        load_catalog(path)
    text = str(exc.value)
    assert re.search(message, text), text
    assert "\n" not in text and text.startswith("models.toml: ")
    assert isinstance(exc.value, EdgerankError)


@pytest.mark.parametrize(
    "text,message",
    [
        ("schema = 2\n[[model]]\nname = 'x'\n", r"schema must be 1, got 2"),
        ("schema = 1\n", r"no \[\[model\]\] entries"),
        (
            "schema = 1\nmodels = []\n",
            r"top level: unknown key 'models' \(did you mean 'model'\?\)",
        ),
        ("schema = 1\n[[model]\n", r"invalid TOML"),
        ("schema = 1\nquality_scale = { fr = 'x' }\n", r"quality_scale: unknown key 'fr'"),
    ],
)
def test_malformed_file_fails_with_one_line(tmp_path, text, message):
    with pytest.raises(CatalogError) as exc:
        load_catalog(write(tmp_path, text))
    assert re.search(message, str(exc.value)), str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CatalogError, match=r"model catalog not found: .*nowhere\.toml"):
        load_catalog(tmp_path / "nowhere.toml")


def test_shipped_catalog_with_one_typo_fails(tmp_path):
    """The real file, one key misspelt: proves the shipped entries go through the validator."""
    text = REPO_TOML.read_text().replace(
        "kv_cache_kib_per_token = 18", "kv_cache_kb_per_token = 18"
    )
    with pytest.raises(CatalogError, match=r"model 'bge-reranker-v2-gemma': unknown key"):
        load_catalog(write(tmp_path, text))
