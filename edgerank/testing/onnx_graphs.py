"""One-op ONNX graphs for the INT8 kinds' arithmetic tests (convert/int8_files.py): small
enough to reason about exactly, and runnable without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def one_matmul(path: Path, w: np.ndarray, opset: int = 17) -> Path:
    """x [b, s, K] @ w [K, N], w a constant: the MatMul every kind can be chosen for."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", n])
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "one", [x], [y], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return Path(path)
