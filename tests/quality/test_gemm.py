"""The GEMM microbenchmark multiplies what it claims to (figures are not asserted: timing
depends on the machine and its load)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgerank.quality.gemm import _graph, gemm_report


def _run(int8: bool, a: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    from onnx import load_from_string, numpy_helper

    model = _graph(int8, k, n, np.random.default_rng(3))
    weight = numpy_helper.to_array(load_from_string(model).graph.initializer[0])
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, {"a": a})[0], weight


def test_int8_graph_is_an_exact_u8_by_s8_product():
    a = np.random.default_rng(1).integers(0, 256, (5, 64), dtype=np.uint8)
    y, w = _run(True, a, 64, 32)
    want = (a.astype(np.int32) - 128) @ w.astype(np.int32)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, want)


def test_fp32_graph_is_the_float_product():
    a = np.random.default_rng(2).standard_normal((5, 64)).astype(np.float32)
    y, w = _run(False, a, 64, 32)
    np.testing.assert_allclose(y, a @ w, rtol=1e-4, atol=1e-4)


def test_report_has_one_row_per_thread_count():
    rows = gemm_report((1, 2), rounds=1, shape=(64, 32, 16))
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        assert r["shape"] == "64x32x16"
        assert r["fp32_gflops"] > 0 and r["int8_gops"] > 0
        assert r["int8_x_fp32"] == pytest.approx(r["int8_gops"] / r["fp32_gflops"])
