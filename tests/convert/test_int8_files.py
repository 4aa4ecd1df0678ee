"""The ``token`` kind's arithmetic on one MatMul, without torch: a bound a wrong scale,
a lost offset or a batch-wide statistic would break."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgerank.convert import int8_files  # noqa: E402
from edgerank.testing.onnx_graphs import one_matmul  # noqa: E402

K, N = 96, 24


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.fixture()
def token_file(tmp_path):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    one_matmul(tmp_path / "fp32.onnx", w)
    # bounded: the arithmetic below holds on AVX2's saturating kernel too
    out = int8_files.build(
        tmp_path / "fp32.onnx", tmp_path / "token.onnx", {}, "token", bounded=True
    )
    return out, w


def _rows(rng) -> np.ndarray:
    """Rows of different spans (a GELU-like tail, one outlier channel) and two off zero
    (one all positive, one all negative): a batch-wide scale would be set by the outlier."""
    x = rng.uniform(-0.17, 1.0, (2, 6, K)).astype(np.float32)
    x[0, 1] += 5.0
    x[1, 2, 7] = 9.0
    x[1, 3] = np.linspace(-3.0, -2.0, K, dtype=np.float32)
    return x


def test_each_row_is_quantized_over_its_own_span(token_file):
    """Error per row <= half a step of *its own* range (widened to hold zero: the zero
    point is a uint8) times the weights' column mass: against the dequantized weights, so
    only the activation rounding remains."""
    path, w = token_file
    x = _rows(np.random.default_rng(1))
    scale = int8_files.weight_scales(w, bounded=True)
    w_deq = np.clip(np.round(w / scale), -127, 127) * scale
    got = _run(path, x)
    want = x.astype(np.float64) @ w_deq
    step = (np.maximum(x.max(axis=-1), 0) - np.minimum(x.min(axis=-1), 0)) / 255
    bound = 0.5 * step[..., None] * np.abs(w_deq).sum(axis=0) + 1e-4
    assert np.all(np.abs(got - want) <= bound)


def test_a_rows_result_does_not_depend_on_its_batch(token_file):
    path, _ = token_file
    x = _rows(np.random.default_rng(2))
    together = _run(path, x)
    alone = np.concatenate(
        [_run(path, x[b : b + 1, s : s + 1]) for b in range(2) for s in range(6)]
    )
    assert np.array_equal(together.reshape(-1, N), alone.reshape(-1, N))


def test_one_normalisation_per_input(token_file):
    path, _ = token_file
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and "MatMul" not in ops
    assert ops.count("ReduceMax") == ops.count("ReduceMin") == 1
    assert ops.count("QuantizeLinear") == 1
    # the row's zero point and scale go into the GEMM: no pass over the output after it
    assert "Mul" not in ops and "Add" not in ops


@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("k", [96, 97])
def test_offset_rows_carry_minus_each_column_sum(k, bounded):
    """Against input columns holding the row's zero point z, the offset rows add exactly
    -z x col_sums; none exceeds what the kernel holds (half the pair bound where it adds
    neighbouring products into int16), and with an odd K no offset row pairs with a weight
    row."""
    rng = np.random.default_rng(k)
    wq = np.clip(np.round(rng.standard_normal((k, N)) * 40 + 30), -127, 127).astype(np.int8)
    need = int8_files.offset_rows_needed(wq, bounded)
    rows = int8_files.offset_rows(wq, need, bounded)
    assert rows.shape == (need, N) and rows.dtype == np.int8
    assert np.array_equal(rows.astype(np.int64).sum(axis=0), -wq.astype(np.int64).sum(axis=0))
    limit = int8_files.PAIR_BOUND // 2 if bounded else 127
    assert np.abs(rows.astype(np.int64)).max() <= limit
    assert np.abs(rows.astype(np.int64)).max() > limit - 8  # sized tight, not padded out
    full = np.vstack([wq, rows]).astype(np.int64)
    if k % 2:
        assert not rows[0].any()  # the odd K's padding row: the last weight row's pair
    if bounded:  # the int16 pairs made of offset rows only
        assert int8_files.pair_sums(full)[(k + 1) // 2 :].max() <= int8_files.PAIR_BOUND
    q = rng.integers(0, 256, (5, k)).astype(np.int64)
    z = rng.integers(0, 256, (5, 1)).astype(np.int64)
    got = np.hstack([q, np.repeat(z, need, axis=1)]) @ full
    assert np.array_equal(got, (q - z) @ wq.astype(np.int64))
    with pytest.raises(ValueError, match="cannot carry"):  # one row fewer cannot
        int8_files.offset_rows(wq, need - 1, bounded)


def test_a_weight_whose_columns_sum_to_zero_needs_no_offset_columns(tmp_path):
    """No offset rows at all (every column sums to zero, K even): the file is the plain
    GEMM on the quantized rows, not a zero-width concatenation onnxruntime refuses."""
    w = np.zeros((K, N), np.float32)
    w[0], w[1] = 0.5, -0.5
    assert int8_files.offset_rows_needed(np.round(w * 254).astype(np.int8), False) == 0
    one_matmul(tmp_path / "fp32.onnx", w)
    out = int8_files.build(tmp_path / "fp32.onnx", tmp_path / "token.onnx", {}, "token")
    x = _rows(np.random.default_rng(5))
    step = (np.maximum(x.max(axis=-1), 0) - np.minimum(x.min(axis=-1), 0)) / 255
    bound = 0.5 * step[..., None] * np.abs(w).sum(axis=0) + 1e-4
    assert np.all(np.abs(_run(out, x) - x.astype(np.float64) @ w) <= bound)


def test_an_opset_12_export_is_converted_up_before_the_token_kind(tmp_path):
    """Hub exports made at opset 11/12 predate per-axis QuantizeLinear: preparing one
    lifts it to int8.MIN_OPSET, and the token file it then builds runs and stays close."""
    from edgerank.convert import int8

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    one_matmul(tmp_path / "old.onnx", w, opset=12)
    prepared, _ = int8_files.prepare_fp32(tmp_path / "old.onnx", tmp_path)
    assert int8.opset_of(onnx.load(str(prepared))) == int8.MIN_OPSET
    out = int8_files.build(prepared, tmp_path / "token.onnx", {}, "token", bounded=True)
    x = _rows(np.random.default_rng(4))
    assert np.abs(_run(out, x) - x @ w).max() < 0.05 * np.abs(x @ w).max()


def test_an_export_the_converter_cannot_lift_is_refused_in_one_line(tmp_path, monkeypatch):
    from onnx import version_converter

    from edgerank.errors import InvalidInput

    def broken(model, target):
        raise RuntimeError("No Adapter For Foo\nmore detail")

    monkeypatch.setattr(version_converter, "convert_version", broken)
    one_matmul(tmp_path / "old.onnx", np.ones((K, N), np.float32), opset=12)
    with pytest.raises(
        InvalidInput,
        match=r"old.onnx: cannot lift ONNX opset 12 to 13 \(No Adapter For Foo\); export",
    ):
        int8_files.prepare_fp32(tmp_path / "old.onnx", tmp_path)


def test_the_token_kind_refuses_a_graph_older_than_opset_13(tmp_path):
    one_matmul(tmp_path / "old.onnx", np.ones((K, N), np.float32), opset=12)
    with pytest.raises(ValueError, match="opset >= 13"):
        int8_files.build(tmp_path / "old.onnx", tmp_path / "token.onnx", {}, "token")


def test_the_block_kind_leaves_the_process_logging_alone(tmp_path, token_file):
    """onnxruntime's MatMulNBits module sets up root logging at INFO when imported; an
    import must not start printing every library's INFO records."""
    import logging
    import subprocess
    import sys

    _, w = token_file
    one_matmul(tmp_path / "fp32.onnx", w)
    code = (
        "import logging, sys; from pathlib import Path\n"
        "from edgerank.convert import int8_files\n"
        f"int8_files.build(Path({str(tmp_path / 'fp32.onnx')!r}), "
        f"Path({str(tmp_path / 'block.onnx')!r}), {{}}, 'block')\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), root.level)\n"
        "logging.getLogger('some.library').info('chatter')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", str(logging.WARNING)]
    assert "chatter" not in done.stderr and "[INFO]" not in done.stderr
