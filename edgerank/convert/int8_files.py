"""The INT8 files the accuracy-aware loop (convert/backoff.py) chooses between.

Each MatMul with a constant weight runs as one of four kinds, fastest first; the loop
starts every MatMul at its base's fastest kind and moves the ones that measurably hurt
most up the ladder. What each kind costs and keeps, measured per ISA, is in docs/int8.md
(bench/int8_ops.py).

- ``dynamic``: onnxruntime quantize_dynamic (MLAS DynamicQuantizeMatMul): int8 weights per
  output channel, uint8 activations with ONE scale per tensor, taken at run time over the
  whole padded batch. The peers' recipe and the fastest, but a few outlier tokens squeeze
  every other token's range, and a score moves with its batch neighbours; SmoothQuant
  does not rescue it.
- ``token``: SmoothQuant in front (convert/int8.smoothed_fp32), each row quantized over
  its own range by one per-axis QuantizeLinear, MLAS's u8 x s8 kernel
  (MatMulIntegerToFloat) with the row's zero point carried through the GEMM and its
  scale given to it: one scale and zero point per token, none taken from the batch.
  Slower than ``dynamic``: the row statistics, the quantization and the scale on the
  output are passes that ``dynamic``'s fused kernel does not make.
- ``block``: MatMulNBits, 8-bit symmetric weights in blocks of 32 along K, accuracy level 4:
  MLAS quantizes the activations to int8 per row and per block of 32. The most faithful
  8-bit kind, and the slowest.
- ``fp32``: the MatMul as exported.

Weight rounding alone (per-channel int8, FP32 activations) already costs measurable
agreement; GPTQ-style rounding helped, but not with per-tensor activations.

On AVX2 (and AVX-512 without VNNI) MLAS's u8 x s8 kernel adds neighbouring products into
int16 and saturates; ``token`` and ``dynamic`` files built ``bounded`` cannot (PAIR_BOUND,
reduce_range). ``block`` cannot either: checked under qemu -cpu Haswell, its int8 path
gives the same results as on VNNI. int8 activations (s8 x s8) would not saturate, but MLAS
runs them several times slower than u8 x s8.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: fastest first; a base's ladder is the kinds from its own up
KINDS = ("dynamic", "token", "block", "fp32")
#: MatMulNBits settings of the ``block`` kind
BLOCK = {"bits": 8, "block_size": 32, "is_symmetric": True, "accuracy_level": 4}
#: the largest |wq[2i] + wq[2i+1]| a ``bounded`` token-kind weight column holds: AVX2's
#: (and AVX-512-without-VNNI's) u8 x s8 kernel adds neighbouring products with vpmaddubsw
#: into int16, and 255 x 128 = 32640 still fits 32767
PAIR_BOUND = 128
KIND_DOC = {
    "dynamic": "onnxruntime quantize_dynamic: QInt8 weights per output channel, uint8 "
    "activations per tensor at run time",
    "token": "uint8 rows each over its own range (widened to hold zero), one scale and zero "
    "point per token, MatMulIntegerToFloat (int8 weights per output channel, the zero point "
    "through offset columns, the row's scale as the GEMM's activation scale)",
    "block": "MatMulNBits: 8-bit symmetric weights in blocks of 32, int8 activations per "
    "row and block (accuracy_level 4)",
    "fp32": "kept FP32",
}


class Prepared(NamedTuple):
    """The graph every kind starts from (prepare)."""

    path: Path
    #: the MatMuls that now read one row per sequence (they stay FP32)
    row_matmuls: list[str]
    #: why onnxruntime's BERT fusions failed (the graph is then unfused); None: fused
    unfused: str | None


def prepare_fp32(fp32_onnx: Path, work: Path) -> tuple[Path, list[str]]:
    """``prepare``'s graph and row MatMuls."""
    got = prepare(fp32_onnx, work)
    return got.path, got.row_matmuls


def prepare(fp32_onnx: Path, work: Path) -> Prepared:
    """The fused FP32 graph with the first-token last layer where it applies (what every
    kind starts from, and the FP32 reference the probe measures against), the MatMuls
    that now read one row per sequence, and why the fusions failed if they did.

    Those MatMuls stay FP32 whatever the loop decides: they cost a few rows of compute,
    they feed the score directly, and a one-row-per-sequence tensor is where a per-tensor
    scale (``dynamic``) would make a passage's score depend on its batch neighbours.
    """
    import onnx

    from edgerank.convert.graph import Graph, first_token_last_layer, quantizable
    from edgerank.convert.int8 import _fused, _save

    model, why = _fused(fp32_onnx)
    g = Graph(model)
    rows = first_token_last_layer(g)
    g.finish()
    out = work / "model.fp32.onnx"
    _save(g.model, out)
    g = Graph(onnx.load(str(out)))
    row_mms = [n.name for n in g.model.graph.node if quantizable(g, n) and n.input[0] in rows]
    return Prepared(out, row_mms, why)


def matmul_names(prepared) -> list[str]:
    """The MatMuls with a constant 2-D FP32 weight: the ones a kind can be chosen for
    (``prepared``: a path, or a loaded model)."""
    import onnx

    from edgerank.convert.graph import Graph, quantizable

    model = prepared if isinstance(prepared, onnx.ModelProto) else onnx.load(str(prepared))
    g = Graph(model)
    return [n.name for n in g.model.graph.node if quantizable(g, n)]


def build(
    prepared: Path, out: Path, kinds: Mapping[str, str], default: str, *, bounded: bool = False
) -> Path:
    """Write ``prepared`` with each MatMul as ``kinds[name]`` (else ``default``).

    ``bounded``: no int16 pair sum of the u8 x s8 kernels can saturate, whatever the CPU
    (token: PAIR_BOUND weight scales; dynamic: 7-bit weights, onnxruntime's reduce_range),
    for a file that must stay faithful on AVX2 (hardware.facts.SATURATING_INT8).
    """
    import onnx

    model = onnx.load(str(prepared))
    names = matmul_names(model)
    pick = {n: kinds.get(n, default) for n in names}
    unknown = set(pick.values()) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown MatMul kind(s) {sorted(unknown)}")
    block = [n for n, k in pick.items() if k == "block"]
    if block:
        model = _block(model, [n for n in names if n not in block])
    token = [n for n, k in pick.items() if k == "token"]
    if token:
        model = _per_token(model, token, bounded)
    dynamic = [n for n, k in pick.items() if k == "dynamic"]
    if dynamic:
        _dynamic(model, out, dynamic, bounded)
    else:
        from edgerank.convert.int8 import _save

        _save(model, out)
    return out


def _block(model, exclude: list[str]):
    """MatMulNBits for every MatMul but ``exclude`` (its nodes_to_include only adds to the
    op types it quantizes anyway, so exclusion is the way to choose)."""
    nbits = _nbits_quantizer()
    cfg = nbits.DefaultWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",), **BLOCK)
    q = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=cfg)
    quiet = logging.getLogger(nbits.__name__)
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # a line per node of the graph otherwise
    try:
        q.process()
    finally:
        quiet.setLevel(level)
    return q.model.model


def _nbits_quantizer():
    """onnxruntime's MatMulNBits module, without what importing it does to the process:
    it calls logging.basicConfig(level=INFO), which would print every library's INFO
    records on an `edgerank import` (and on a daemon that never configured logging)."""
    import importlib

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    module = importlib.import_module("onnxruntime.quantization.matmul_nbits_quantizer")
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    return module


def _per_token(model, names: list[str], bounded: bool = False):
    """Quantize each row of the MatMul's input over its own range: one scale and zero
    point per token (QuantizeLinear along the rows of a 2-D view), none taken from the
    rest of the batch; run MLAS's u8 x s8 kernel (MatMulIntegerToFloat, int8 weights per
    output channel) and apply the row's scale back.

    The range is the row's [min, max] widened to hold zero, as onnxruntime's per-tensor
    recipe does, because QuantizeLinear's zero point must itself be a uint8. LayerNorm
    and GELU rows straddle zero, so this loses nothing there; a row far off zero (none in
    a transformer) would lose levels.

    The row's zero point z goes through the GEMM itself (offset_rows): onnxruntime's
    integer GEMMs take one activation zero point per call, so the input gets ``extra``
    columns holding z and the weights as many rows summing to minus each column's sum;
    the int32 result is then (q - z) W exactly, and the row's scale goes in as the GEMM's
    activation scale ([rows, 1]: onnxruntime applies it in the same kernel call, beside
    the weights' per-channel scales). Recipe v6 applied s (128 - z) x col_sums and the
    scale after the GEMM: the same arithmetic in three passes over every output.
    """
    import onnx

    from edgerank.convert.graph import MIN_OPSET, MS_DOMAIN, Graph

    g = Graph(model)
    if g.opset < MIN_OPSET:  # per-axis QuantizeLinear; prepare_fp32 converts older exports up
        raise ValueError(
            f"the token kind needs ONNX opset >= {MIN_OPSET}, this graph has {g.opset}"
        )
    chosen = set(names)
    wanted = [n for n in g.model.graph.node if n.name in chosen]
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    extra: dict[str, int] = {}  # per input: the offset columns its MatMuls share
    for node in wanted:
        w = g.array(node.input[1])
        w_scale = weight_scales(w, bounded)
        wq = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
        weights[node.name] = (wq, w_scale)
        need = offset_rows_needed(wq, bounded)
        extra[node.input[0]] = max(extra.get(node.input[0], 0), need)
    quantized: dict[str, tuple[str, str, str]] = {}
    for node in wanted:
        x = node.input[0]
        wq, w_scale = weights[node.name]
        if x not in quantized:
            rows = quantize_rows(g, x, wq.shape[0])
            q = rows.q
            if extra[x]:  # none where every column sums to zero and K is even
                zeros = g.add("Expand", [rows.zero, g.const([1, extra[x]], dtype=np.int64)])
                q = g.add("Concat", [q, zeros], axis=1)
            quantized[x] = (q, rows.scale, rows.lead)
        q, scale, lead = quantized[x]
        w_full = np.vstack([wq, offset_rows(wq, extra[x], bounded)])
        y = g.add(
            "MatMulIntegerToFloat",
            [q, g.const(w_full, dtype=np.int8), scale, g.const(w_scale)],
            domain=MS_DOMAIN,
        )
        shape = g.add("Concat", [lead, g.const([wq.shape[1]], dtype=np.int64)], axis=0)
        g.add("Reshape", [y, shape], out=node.output[0])
        g.drop(node)
    g.finish()
    return onnx.ModelProto.FromString(g.model.SerializeToString())


def _offset_limit(bounded: bool) -> int:
    """The largest |weight| an offset row may hold: half PAIR_BOUND where the kernel adds
    neighbouring products into int16 (two offset rows pair with each other), else 127."""
    return PAIR_BOUND // 2 if bounded else 127


def offset_rows_needed(wq: np.ndarray, bounded: bool) -> int:
    """How many offset rows carry minus the largest column sum of ``wq``, plus one zero row
    where K is odd (so that no offset row pairs with a weight row in the int16 sums)."""
    top = int(np.abs(wq.astype(np.int64).sum(axis=0)).max())
    return -(-top // _offset_limit(bounded)) + wq.shape[0] % 2


def offset_rows(wq: np.ndarray, extra: int, bounded: bool) -> np.ndarray:
    """``extra`` int8 rows whose sum is minus each column's sum of ``wq``: against ``extra``
    input columns that all hold the row's zero point z, they add -z col_sums to q W."""
    pad = wq.shape[0] % 2
    t = extra - pad
    target = -wq.astype(np.int64).sum(axis=0)
    steps = np.round(target[None, :] * np.arange(t + 1)[:, None] / max(t, 1)).astype(np.int64)
    rows = np.diff(steps, axis=0)  # t rows, each at most ceil(|target| / t)
    if np.abs(rows).max(initial=0) > _offset_limit(bounded) or not np.array_equal(
        rows.sum(axis=0), target
    ):
        raise ValueError(f"{extra} offset rows cannot carry these column sums")
    return np.vstack([np.zeros((pad, wq.shape[1]), np.int64), rows]).astype(np.int8)


class Rows(NamedTuple):
    """An input as quantize_rows gives it: x ~ scale (q - zero), row by row."""

    #: uint8 [rows, k]
    q: str
    #: float [rows, 1]
    scale: str
    #: uint8 [rows, 1]
    zero: str
    #: the leading dims of x, to shape the output back
    lead: str


def quantize_rows(g, x: str, k: int) -> Rows:
    """``x`` (any leading dims, last dim ``k``) as uint8 rows of a [rows, k] view, each
    with its own scale s and zero point z, so that x ~ s (q - z)."""
    import onnx

    def reduce(op: str) -> str:
        if g.opset >= 18:
            return g.add(op, [rows, g.const([-1], dtype=np.int64)], keepdims=0)
        return g.add(op, [rows], axes=[-1], keepdims=0)

    def column(v: str) -> str:
        return g.add("Unsqueeze", [v, g.const([1], dtype=np.int64)])

    lead = g.add(
        "Slice", [g.add("Shape", [x]), g.const([0], dtype=np.int64), g.const([-1], dtype=np.int64)]
    )
    rows = g.add("Reshape", [x, g.const([-1, k], dtype=np.int64)])
    top = g.add("Max", [reduce("ReduceMax"), g.const(0.0)])
    bottom = g.add("Min", [reduce("ReduceMin"), g.const(0.0)])
    scale = g.add("Max", [g.add("Div", [g.add("Sub", [top, bottom]), g.const(255.0)]),
                          g.const(1e-8)])  # fmt: skip
    zero = g.add("Clip", [g.add("Round", [g.add("Neg", [g.add("Div", [bottom, scale])])]),
                          g.const(0.0), g.const(255.0)])  # fmt: skip
    zero = g.add("Cast", [zero], to=onnx.TensorProto.UINT8)
    q = g.add("QuantizeLinear", [rows, scale, zero], axis=0)
    return Rows(q, column(scale), column(zero), lead)


def weight_scales(w: np.ndarray, bounded: bool) -> np.ndarray:
    """One scale per output channel of ``w`` (K x N): its largest |weight| maps to 127, or,
    ``bounded``, also every neighbouring pair along K sums to at most PAIR_BOUND.

    Why the pair: MLAS's AVX2 u8 x s8 kernel adds a[2i] w[2i] + a[2i+1] w[2i+1] into int16
    (vpmaddubsw) before widening, and the token kind's activations span 0..255, so
    two same-sign weights above 64 saturate (checked under qemu -cpu Haswell); opposite
    signs cannot (255 x 127 fits). Bounding the pair's sum costs far less resolution than
    onnxruntime's remedy, 7-bit weights, which halves every column's levels.
    """
    scale = np.abs(w).max(axis=0) / 127
    if bounded:
        pair = pair_sums(w).max(axis=0)
        scale = np.maximum(scale, pair / (PAIR_BOUND - 1))  # each rounding adds <= 0.5
    return np.maximum(scale, 1e-12).astype(np.float32)


def pair_sums(w: np.ndarray) -> np.ndarray:
    """|w[2i] + w[2i+1]| along K (an odd K's last row pairs with zero): the int16 sums
    vpmaddubsw forms, per unit of activation."""
    even = np.vstack([w, np.zeros((w.shape[0] % 2, w.shape[1]), w.dtype)])
    return np.abs(even[0::2].astype(np.float64) + even[1::2])


def _dynamic(model, out: Path, names: list[str], bounded: bool = False) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_no_preprocess_advice)
    try:
        quantize_dynamic(
            model, str(out), weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul"], nodes_to_quantize=names,
            reduce_range=bounded,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )  # fmt: skip
    finally:
        root.removeFilter(_no_preprocess_advice)


def _no_preprocess_advice(record: logging.LogRecord) -> bool:
    """onnxruntime's quantizer advises its shape-inference pre-pass on the root logger at
    every call; the fused graph does not need it, and a user importing a model should not
    read it a dozen times."""
    return not str(record.msg).startswith("Please consider to run pre-processing")


def switch_graph(prepared: Path, quantized: Path, names: list[str]):
    """The quantized graph with an input ``er_fp32`` (one float per MatMul): 1 = use that
    MatMul's FP32 output, 0 = its quantized output. One session then measures any mix."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgerank.convert.graph import _toposort

    fp = onnx.load(str(prepared))
    q = onnx.load(str(quantized))
    fp_nodes = {n.name: n for n in fp.graph.node}
    fp_inits = {t.name: t for t in fp.graph.initializer}
    have = {t.name for t in q.graph.initializer}
    new_nodes, new_inits = [], []
    for k, name in enumerate(names):
        node = fp_nodes[name]
        y = node.output[0]
        producer = next(n for n in q.graph.node if y in n.output)
        producer.output[list(producer.output).index(y)] = y + "__q"
        w = node.input[1]
        if w not in have:
            new_inits.append(fp_inits[w])
            have.add(w)
        new_inits.append(numpy_helper.from_array(np.array(k, dtype=np.int64), f"er_k{k}"))
        new_nodes += [
            helper.make_node("MatMul", [node.input[0], w], [y + "__f"]),
            helper.make_node("Gather", ["er_fp32", f"er_k{k}"], [y + "__a"], axis=0),
            helper.make_node("Sub", [y + "__f", y + "__q"], [y + "__d"]),
            helper.make_node("Mul", [y + "__d", y + "__a"], [y + "__m"]),
            helper.make_node("Add", [y + "__q", y + "__m"], [y]),
        ]
    q.graph.node.extend(new_nodes)
    q.graph.initializer.extend(new_inits)
    q.graph.input.append(helper.make_tensor_value_info("er_fp32", TensorProto.FLOAT, [len(names)]))
    ready = {i.name for i in q.graph.input} | {t.name for t in q.graph.initializer}
    nodes = _toposort(list(q.graph.node), ready)
    del q.graph.node[:]
    q.graph.node.extend(nodes)
    return q
