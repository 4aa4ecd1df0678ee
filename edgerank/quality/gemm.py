"""This CPU's INT8 and FP32 matrix-multiply throughput through onnxruntime's own kernels.

A model's INT8 speed-up is bounded by what the CPU's integer kernels give over its FP32 ones:
on AVX2 the u8 x s8 path (vpmaddubsw + vpmaddwd) is at best ~2x the FP32 FMA path, with
AVX-512 VNNI (vpdpbusd) and AMX far more. So `edgerank bench` measures both here, on the
shape of a cross-encoder's FFN for one batch (32 pairs x 128 tokens, MiniLM's 384 -> 1536),
and a user sees how close a model runs to what the hardware can do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgerank.backends.onnx import session_options
from edgerank.errors import missing_extra
from edgerank.quality.bench import interleaved

#: rows (tokens of a batch), inner and outer sizes: MiniLM-L6's FFN-in at 32 x 128 tokens
SHAPE = (4096, 384, 1536)


def _graph(int8: bool, k: int, n: int, rng: np.random.Generator) -> bytes:
    """A one-node model: MatMul (fp32) or MatMulInteger (u8 activations x s8 weights)."""
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise missing_extra("onnx", "quantize") from exc

    if int8:
        weight = rng.integers(-63, 64, (k, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "w", "a_zero"], ["y"])
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", k])]
        inits = [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.uint8(128), "a_zero"),
        ]
        out = helper.make_tensor_value_info("y", TensorProto.INT32, ["m", n])
    else:
        weight = rng.standard_normal((k, n)).astype(np.float32)
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])]
        inits = [numpy_helper.from_array(weight, "w")]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])
    graph = helper.make_graph([node], "gemm", inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def gemm_report(
    threads: Sequence[int] = (1, 2), rounds: int = 7, shape: tuple[int, int, int] = SHAPE
) -> list[dict[str, object]]:
    """Per thread count: FP32 GFLOP/s, INT8 GOP/s and their ratio (medians, same rounds)."""
    import onnxruntime as ort

    m, k, n = shape
    rng = np.random.default_rng(0)
    feeds = {
        "fp32": {"a": rng.standard_normal((m, k)).astype(np.float32)},
        "int8": {"a": rng.integers(0, 256, (m, k), dtype=np.uint8)},
    }
    ops = 2.0 * m * k * n
    rows = []
    for t in threads:
        sessions = {
            name: ort.InferenceSession(
                _graph(name == "int8", k, n, rng),
                session_options(t),
                providers=["CPUExecutionProvider"],
            )
            for name in ("fp32", "int8")
        }
        calls = {name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()}
        timing = interleaved(calls, rounds=rounds, warmup=2)  # first runs pack the weights
        fp32, int8 = timing["fp32"].median, timing["int8"].median
        rows.append(
            {
                "threads": t,
                "shape": f"{m}x{k}x{n}",
                "fp32_gflops": ops / fp32 / 1e9,
                "int8_gops": ops / int8 / 1e9,
                "int8_x_fp32": fp32 / int8,
            }
        )
    return rows
