"""Acceptance: the shipped INT8 recipe ranks like torch FP32, on real pretrained weights.

The MiniLM-L6 cross-encoder (edgerank/testing/minilm_ce.py) runs every quantized matmul on the real
all-MiniLM-L6-v2 weights; scoring goes through the shipped path (store import, OnnxBackend,
length-bucketed batches), so tokenization and batching are part of what is checked.
Deterministic, not timed.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgerank.backends.onnx import OnnxBackend
from edgerank.convert.backoff import Policy
from edgerank.engine.agreement import rank_agreement
from edgerank.engine.rank import score_documents
from edgerank.install.store import ModelStore
from edgerank.models.manifest import Manifest
from edgerank.quality.fidelity import batch_gap


@pytest.fixture(scope="module")
def ckpt(minilm_ce_ckpt):
    return minilm_ce_ckpt


@pytest.fixture(scope="module")
def int8_dir(ckpt, tmp_path_factory):
    # the floor decides, the machine's load does not (min_speedup 0: no timing)
    policy = Policy(min_speedup=0.0)
    return ModelStore(tmp_path_factory.mktemp("home")).import_onnx("minilm-ce", ckpt, policy=policy)


@pytest.fixture(scope="module")
def groups(minilm_groups):
    return minilm_groups


@pytest.fixture(scope="module")
def reference(minilm_reference):
    return minilm_reference


def test_reference_scores_spread(reference):
    """A head that ranks by noise would make every fidelity figure meaningless."""
    spreads = [float(np.ptp(r)) for r in reference]
    assert min(spreads) > 1.0


def test_int8_ranks_like_fp32(int8_dir, groups, reference):
    """Through the served path (the INT8 file, then its FP32 rescoring of near-ties): the
    issue's floor, 97% top-1 included; INT8 alone landed at 95-100% on these 60 groups,
    with builds of this test model that differ with the process."""
    from edgerank.engine.cascade import open_cascade

    be = OnnxBackend.from_dir(int8_dir, threads=2)
    cascade = open_cascade(int8_dir, threads=2)
    assert cascade is not None
    cand = [score_documents(be, q, ps, cascade=cascade).raw for q, ps in groups]
    got = rank_agreement(reference, cand)
    assert got["spearman_mean"] >= 0.99, got
    assert got["top1_kept"] >= 0.97, got
    assert batch_gap(be, groups, n_groups=len(groups)) < 1e-3


def test_manifest_records_what_stays_fp32(int8_dir):
    """The manifest's kinds are the file's: the MatMuls it says stay FP32 (the loop's and
    the first-token remainder) are plain MatMuls, every other one is quantized, and its
    figures are the probe's."""
    import onnx

    m = Manifest.read(int8_dir)
    assert m.precision == "int8" and m.fidelity["meets_floor"] is True
    assert m.fidelity["spearman_mean"] >= 0.99 and m.fidelity["top1_kept"] >= 0.97
    assert m.fidelity["groups"] >= 100 and m.recipe["calibration"]["origin"] == "shipped"
    nodes = onnx.load(str(int8_dir / m.model_file)).graph.node
    int8_ops = ("MatMulInteger", "MatMulIntegerToFloat", "MatMulNBits")
    quantized = [n for n in nodes if n.op_type in int8_ops]
    assert len(quantized) == m.recipe["matmuls_int8"] > 0
    kinds = m.recipe["matmul_kinds"]
    blocks = sum(n.op_type == "MatMulNBits" for n in nodes)
    assert blocks == sum(k == "block" for k in kinds.values())
    # plain MatMuls: the kept ones, and the head's Gemms where quantize_dynamic split them
    plain = {n.name for n in nodes if n.op_type == "MatMul" and "Gemm" not in n.name}
    kept = m.recipe["fp32_matmuls"] + m.recipe["first_token_fp32"]
    assert plain == set(kept) and len(kept) < len(quantized)


def test_fp32_export_matches_torch(ckpt, groups, reference, tmp_path):
    from edgerank.convert import onnx_export as convert

    onnx = convert.export_onnx(ckpt, tmp_path / "fp32")
    m = Manifest("fp32", "onnx", "fp32", str(onnx), 512)
    be = OnnxBackend(ckpt, m, threads=2)
    for (q, ps), ref in zip(groups[:8], reference[:8], strict=True):
        assert np.max(np.abs(score_documents(be, q, ps).raw - ref)) < 1e-4
