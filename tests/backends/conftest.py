"""Tiny LLM reranker checkpoints, and the rule that skips GPU tests only where CUDA is absent."""

from __future__ import annotations

import pytest

from edgerank.testing import tiny_llms, tiny_models


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests skip when, and only when, torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if available:
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine "
        "(run on a GPU machine, e.g. the lent device)"
    )
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def wide_bert_hf(tmp_path_factory):
    """The tiny BERT with wider random weights: scores spread over ~1.4 logits, so precision
    comparisons have something to lose."""
    return tiny_models.build_tiny_bert(tmp_path_factory.mktemp("wide-bert-hf"), init_range=0.1)


@pytest.fixture(scope="session")
def wide_xlmr_hf(tmp_path_factory):
    return tiny_models.build_tiny_xlmr(tmp_path_factory.mktemp("wide-xlmr-hf"), init_range=0.1)


@pytest.fixture(scope="session")
def tiny_qwen3_hf(tmp_path_factory):
    return tiny_llms.build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-hf"))


@pytest.fixture(scope="session")
def tiny_gemma_hf(tmp_path_factory):
    return tiny_llms.build_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma-hf"))


@pytest.fixture(scope="session")
def tiny_layerwise_hf(tmp_path_factory):
    """6 layers, heads from layer 2; its modelling code is remote code in the directory."""
    return tiny_llms.build_tiny_layerwise(tmp_path_factory.mktemp("tiny-layerwise-hf"))
