"""The INT8 import's graph work on the catalog's other architectures: XLM-RoBERTa (no token
types, <s> q </s></s> p </s>) and DeBERTa-v2 (disentangled attention that onnxruntime's BERT
fusions do not match, If subgraphs, relative-position projections through the Q/K weights).

Small random-weight models of each (edgerank/testing/arch_models.py): the graph patterns are
the real ones, the numbers mean nothing, so every check here is against the same model's
torch or FP32 scores, never a quality figure.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import onnx  # noqa: E402

from edgerank.backends.onnx import OnnxBackend  # noqa: E402
from edgerank.convert import int8, int8_files  # noqa: E402
from edgerank.convert.graph import Graph, needs, quantizable  # noqa: E402
from edgerank.convert.onnx_export import export_onnx  # noqa: E402
from edgerank.engine.rank import score_documents  # noqa: E402
from edgerank.testing import arch_models  # noqa: E402

PASSAGES = [
    "The river floods the valley every spring when the snow melts.",
    "A piano has eighty-eight keys.",
    "Trains leave the city station every hour on the hour.",
    "Bread needs flour, water, salt and time.",
]


@pytest.fixture(scope="module", params=["xlm-roberta", "deberta-v2"])
def model(request, tmp_path_factory):
    """(arch, checkpoint, prepared FP32 graph, its first-token rows) of one architecture."""
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    ckpt = arch_models.build(arch_models.small(arch), root / "ckpt")
    fp32 = export_onnx(ckpt, root / "fp32")
    work = root / "work"
    work.mkdir()
    for f in ("tokenizer.json", "config.json"):
        shutil.copy2(ckpt / f, work / f)
    prepared, rows = int8_files.prepare_fp32(fp32, work)
    return arch, ckpt, prepared, rows


def _torch_scores(ckpt: Path, query: str) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    net = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    out = []
    with torch.no_grad():
        for p in PASSAGES:  # one at a time: no padding in the reference
            enc = tok(query, p, return_tensors="pt", return_token_type_ids=False)
            out.append(float(net(**enc).logits[0, 0]))
    return np.asarray(out)


def test_the_prepared_graph_scores_as_torch_does(model):
    arch, ckpt, prepared, rows = model
    inputs = [i.name for i in onnx.load(str(prepared)).graph.input]
    assert inputs == ["input_ids", "attention_mask"]  # neither has token types
    backend = OnnxBackend.from_file(prepared, 128)
    got = score_documents(backend, "when does the river flood", PASSAGES).raw
    want = _torch_scores(ckpt, "when does the river flood")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_what_each_architecture_fuses(model):
    """XLM-R: attention fused (the last layer then runs for the first token only); its
    embedding stays unfused (RoBERTa counts positions from 2). DeBERTa-v2: LayerNorm and
    GELU fused, attention left as exported, so no first-token rewrite."""
    arch, _, prepared, rows = model
    ops = [n.op_type for n in onnx.load(str(prepared)).graph.node]
    assert ops.count("SkipLayerNormalization") == 4 and ops.count("BiasGelu") == 2
    if arch == "xlm-roberta":
        assert ops.count("MultiHeadAttention") == 2 and len(rows) == 4
        assert "EmbedLayerNormalization" not in ops
    else:
        assert "MultiHeadAttention" not in ops and rows == []
        assert ops.count("If") > 0


def test_deberta_position_projections_are_not_quantized(model):
    """DeBERTa projects its relative-position embeddings (a constant) through the Q and K
    weights; onnxruntime folds those once at load, so they stay FP32: 6 MatMuls a layer
    (Q, K, V, attention out, FFN in and out) are quantizable, not 8."""
    arch, _, prepared, _ = model
    g = Graph(onnx.load(str(prepared)))
    weighted = [
        n for n in g.model.graph.node if n.op_type == "MatMul" and g.array(n.input[1]) is not None
    ]
    names = int8_files.matmul_names(prepared)
    assert len(names) == 12
    assert len(weighted) == (16 if arch == "deberta-v2" else 12)
    assert all(quantizable(g, n) == (n.name in names) for n in weighted)


def test_subgraph_inputs_are_kept_and_ordered(model, tmp_path):
    """A rewrite keeps what an If's branches read from the outer graph and places the If
    after it; the token kind's graph still loads and runs."""
    arch, ckpt, prepared, rows = model
    pairs = [("when does the river flood", p) for p in PASSAGES]
    shutil.copy2(ckpt / "tokenizer.json", tmp_path / "tokenizer.json")
    smooth = tmp_path / "smooth.onnx"
    int8.smoothed_fp32(prepared, smooth, ckpt, pairs)
    out = int8_files.build(smooth, tmp_path / "token.onnx", dict.fromkeys(rows, "fp32"), "token")
    model_ = onnx.load(str(out))
    seen = {i.name for i in model_.graph.input} | {t.name for t in model_.graph.initializer}
    for node in model_.graph.node:
        assert all(i in seen or not i for i in needs(node)), node.name
        seen.update(node.output)
    got = score_documents(OnnxBackend.from_file(out, 128, precision="int8"), "river", PASSAGES)
    assert np.all(np.isfinite(got.raw))
