"""Export a Hugging Face cross-encoder to ONNX and quantize it to INT8, fast *and* faithful.

Export needs the `convert` extra (torch, transformers), imported inside the function.
Quantization is torch-free (onnx + onnxruntime), so `edgerank pull` can run it on the box.

The shipped recipe (measured in bench/int8_recipes.py, on an AVX2-only 2-vCPU Zen3) is W8A8
with *per-token* activation scales computed inside the graph:

- fuse first (onnxruntime.transformers, model_type bert, MultiHeadAttention kept apart from
  the Q/K/V MatMuls so that those stay quantizable); LayerNorm, GELU and softmax run fused;
- every MatMul with a constant weight becomes MatMulIntegerToFloat: weights int8 symmetric per
  output channel in a 7-bit range (AVX2's u8 x s8 kernel, vpmaddubsw, saturates int16 with
  full 8-bit weights), activations uint8 asymmetric with one scale and zero point per token.
  Per-token scales make a pair's score independent of its batch neighbours (per-tensor
  dynamic scales span the whole padded batch) and follow each token's own range;
- SmoothQuant (alpha 0.5) moves the activation outlier channels into the weights: folded
  exactly into the V projection for the attention-output MatMul, an explicit per-channel
  Mul for the LayerNorm-fed Q/K/V and FFN-in MatMuls (the LayerNorm output is also the
  residual, so it cannot be folded there);
- the head reads only the first token, so the last layer is computed for that row only
  after its keys and values (exact), and that small remainder stays in FP32.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerank.backends.padding import pad_batch
from edgerank.convert.graph import MS_DOMAIN, Graph, fed_by, first_token_last_layer, quantizable
from edgerank.errors import missing_extra
from edgerank.quality.texts import calibration_pairs

log = logging.getLogger("edgerank.convert")

#: The shipped recipe; the dict goes into the model manifest as is.
DEFAULT_RECIPE: dict[str, Any] = {
    "name": "w8a8-token-smooth-v2",
    "fuse": True,  # onnxruntime.transformers bert fusions, MultiHeadAttention
    "weight_bits": 7,  # int8 storage, |q| <= 63: exact on AVX2's saturating u8s8 kernel
    "activations": "asymmetric",  # uint8 per token; "symmetric" = zero point 128
    "smooth_alpha": 0.5,  # None = no SmoothQuant
    "first_token_last_layer": True,  # last layer after K/V only for the head's token
    "last_layer_fp32": True,  # ... and that remainder in FP32
    "fp32_matmuls": [],  # substrings of MatMul node names to leave in FP32
    # v2: the FFN down-projections (fed by GELU, whose outputs carry the outliers) stay
    # FP32: +0.003-0.006 Spearman on MiniLM for ~11% of the INT8 speed (bench/int8_recipes)
    "ffn_down_fp32": True,
}
#: activations whose consumers `ffn_down_fp32` keeps in FP32 (plain and fused GELUs)
GELU_OPS = frozenset({"Gelu", "FastGelu", "BiasGelu", "QuickGelu"})
#: Session settings the quantized file was measured with (the ONNX backend must match).
SESSION = {
    "graph_optimization_level": "ORT_ENABLE_ALL",
    "inter_op_num_threads": 1,
    "session.intra_op.allow_spinning": "0",
    "padding": "right (the fused embedding derives key lengths from attention_mask)",
}
CALIBRATION_MAX_LENGTH = 128


# --------------------------------------------------------------------------- export


# --------------------------------------------------------------------------- quantize


def require_quantize() -> None:
    """Fail in one line, before any download, where the `quantize` extra is absent: a
    serving-only install runs INT8 models but cannot make them."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise missing_extra(
            "onnx (needed to quantize)",
            "quantize",
            also="; or quantize elsewhere and `edgerank import` its `edgerank export` archive",
        ) from exc


def quantize_int8(
    fp32_onnx: Path | str,
    out_onnx: Path | str,
    recipe: dict[str, Any] | None = None,
    calibration: Sequence[tuple[str, str]] | None = None,
    ranges: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the INT8 model; return the recipe with what was actually applied.

    ``ranges``: a cache of calibrated activation ranges, filled on the first call and read
    on later ones (the accuracy-aware loop, convert/backoff.py, quantizes one graph often).
    """
    require_quantize()
    import onnx

    recipe = {**DEFAULT_RECIPE, **(recipe or {})}
    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    model, unfused = _fused(fp32_onnx) if recipe["fuse"] else (onnx.load(str(fp32_onnx)), None)
    g = Graph(model)
    applied: dict[str, Any] = {"fused_attention": len(g.nodes_of("MultiHeadAttention"))}
    if unfused:
        applied["unfused"] = unfused

    row_only: set[str] = set()
    if recipe["first_token_last_layer"]:
        row_only = first_token_last_layer(g)
    applied["first_token_last_layer"] = bool(row_only)

    targets = [n for n in g.model.graph.node if quantizable(g, n)]
    if recipe["last_layer_fp32"]:
        targets = [n for n in targets if n.input[0] not in row_only]
    keep = recipe.get("fp32_matmuls") or ()
    targets = [n for n in targets if not any(k in n.name for k in keep)]
    if recipe.get("ffn_down_fp32"):
        ffn_down = [n for n in targets if fed_by(g, n, GELU_OPS)]
        applied["ffn_down_fp32"] = len(ffn_down)
        targets = [n for n in targets if n not in ffn_down]
    groups: dict[str, list] = {}
    for node in targets:
        groups.setdefault(node.input[0], []).append(node)

    alpha = recipe["smooth_alpha"]
    smooth: dict[str, np.ndarray] = {}
    if alpha is not None and groups:
        amax = dict(ranges or {})
        missing = [x for x in groups if x not in amax]
        if missing:
            amax.update(_calibrate(g, fp32_onnx.parent, missing, calibration))
        if ranges is not None:
            ranges.update(amax)
        fold_v = recipe.get("fold_v", True)
        smooth, applied["smoothed"] = _smooth(g, groups, amax, alpha, fold_v)
    for x, nodes in groups.items():
        _quantize_group(g, x, nodes, smooth.get(x), recipe)
    applied["matmuls_int8"] = len(targets)
    g.finish()
    _save(g.model, out_onnx)
    return {**recipe, "applied": applied, "session": SESSION}


def _fused(path: Path):
    """onnxruntime's BERT fusions, attention as MultiHeadAttention over separate Q/K/V.

    Returns (model, None), or (the unfused model, why) for a graph the fusions cannot read:
    it still quantizes, slower, and the recipe records why (a warning says so too)."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = 0, 0  # 0 = let the optimizer detect them
    cfg = path.parent / "config.json"
    if cfg.exists():
        conf = json.loads(cfg.read_text())
        heads, hidden = conf.get("num_attention_heads", 0), conf.get("hidden_size", 0)
    options = FusionOptions("bert")
    options.use_multi_head_attention = True
    try:
        opt = optimize_model(
            str(path), model_type="bert", num_heads=heads, hidden_size=hidden,
            optimization_options=options, opt_level=0,
        )  # fmt: skip
        model = opt.model
    # the fusions assert and index their way through patterns they do not know
    except (AssertionError, AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        why = f"onnxruntime's bert fusions failed ({type(exc).__name__}: {exc})".splitlines()[0]
        log.warning("%s: %s; quantizing the unfused graph", path.name, why)
        return onnx.load(str(path)), why
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):  # fused ops live there
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return model, None


def _feeds(model_dir: Path, inputs: list[str], pairs, batch: int = 8) -> list[dict]:
    """Right-padded feeds from the tokenizer.json beside the model (random ids without)."""
    path = model_dir / "tokenizer.json"
    if path.exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        tok.no_padding()
        tok.enable_truncation(CALIBRATION_MAX_LENGTH, strategy="only_second")
        encs = tok.encode_batch(list(pairs))
        rows = [(np.asarray(e.ids), np.asarray(e.type_ids)) for e in encs]
    else:
        rng = np.random.default_rng(0)
        rows = [(rng.integers(5, 100, n), None) for n in (8, 24, 64, 128)]
    feeds = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        padded = pad_batch([ids for ids, _ in chunk], type_ids=[t for _, t in chunk])
        feeds.append({k: padded[k] for k in inputs})
    return feeds


def _calibrate(g: Graph, model_dir: Path, names: list[str], pairs) -> dict[str, np.ndarray]:
    """Per-channel |max| of the given activations over real (unpadded) tokens."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    probe = g.snapshot()  # the pending rewrite (first-token gathers) is calibrated too
    for name in names:
        probe.graph.output.append(helper.make_value_info(name, onnx.TypeProto()))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    amax: dict[str, np.ndarray] = {}
    for feed in _feeds(model_dir, inputs, pairs or calibration_pairs()):
        outs = sess.run(names, feed)
        valid = feed["attention_mask"].astype(bool)
        for name, value in zip(names, outs, strict=True):
            v = np.abs(value)
            if v.ndim == 3 and v.shape[:2] == valid.shape:
                v = v[valid]
            v = v.reshape(-1, v.shape[-1]).max(axis=0)
            amax[name] = np.maximum(amax[name], v) if name in amax else v
    return amax


def _smooth(
    g: Graph, groups, amax, alpha: float, fold_v: bool = True
) -> tuple[dict[str, np.ndarray], int]:
    """SmoothQuant factors per activation; folds those it can into the weights exactly.

    Returns {activation: 1/s} for the activations that need an explicit Mul, and how many
    activations were smoothed in all.
    """
    explicit: dict[str, np.ndarray] = {}
    count = 0
    for x, nodes in groups.items():
        ws = [g.array(n.input[1]) for n in nodes]
        w_max = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        s = (np.maximum(amax[x], 1e-5) ** alpha) / (np.maximum(w_max, 1e-5) ** (1 - alpha))
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        src = g.producer(x)
        mha = src is not None and src.op_type == "MultiHeadAttention"
        if fold_v and mha and _fold_into_v(g, src, s):
            pass  # attention output = probs @ V: scaling V's columns scales these channels
        elif src is not None and "LayerNormalization" in src.op_type:
            explicit[x] = (1.0 / s).astype(np.float32)
        else:
            continue
        for n, w in zip(nodes, ws, strict=True):
            g.set_array(n.input[1], (w * s[:, None]).astype(np.float32))
        count += 1
    return explicit, count


def _fold_into_v(g: Graph, mha, s: np.ndarray) -> bool:
    v_mm = g.producer(mha.input[2])
    if v_mm is None or not quantizable(g, v_mm) or len(mha.input) < 4 or not mha.input[3]:
        return False
    if len(g.consumers(v_mm.input[1])) != 1:
        return False
    w, bias = g.array(v_mm.input[1]), g.array(mha.input[3])
    d = w.shape[1]
    if bias is None or bias.shape != (3 * d,) or s.shape != (d,):
        return False
    g.set_array(v_mm.input[1], (w / s[None, :]).astype(np.float32))
    bias = bias.copy()
    bias[2 * d :] /= s
    g.set_array(mha.input[3], bias.astype(np.float32))
    return True


def _reduce(g: Graph, op: str, x: str) -> str:
    if g.opset >= 18:
        return g.add(op, [x, g.const([1], dtype=np.int64)], keepdims=1)
    return g.add(op, [x], axes=[1], keepdims=1)


def _quantize_group(g: Graph, x: str, nodes: list, inv_smooth, recipe: dict) -> None:
    """One per-token uint8 quantization of ``x`` shared by every MatMul that reads it."""
    k = g.array(nodes[0].input[1]).shape[0]
    flat = g.add("Reshape", [x, g.const([-1, k], dtype=np.int64)])
    if inv_smooth is not None:
        flat = g.add("Mul", [flat, g.const(inv_smooth)])
    zero = g.const(0.0)
    hi = g.add("Max", [_reduce(g, "ReduceMax", flat), zero])
    lo = g.add("Min", [_reduce(g, "ReduceMin", flat), zero])
    asym = recipe["activations"] == "asymmetric"
    if asym:  # uint8 over [lo, hi], zero point per token
        span = g.add("Sub", [hi, lo])
        levels = 2 ** recipe.get("activation_bits", 8) - 1
        scale = g.add("Max", [g.add("Mul", [span, g.const(1 / levels)]), g.const(1e-12)])
        zp_f = g.add("Round", [g.add("Div", [g.add("Neg", [lo]), scale])])
        zp_u8 = g.add("Cast", [zp_f], to=2)  # UINT8
    else:  # uint8 with zero point 128, scale from the larger side
        peak = g.add("Max", [hi, g.add("Neg", [lo])])
        scale = g.add("Max", [g.add("Mul", [peak, g.const(1 / 127)]), g.const(1e-12)])
        zp_u8 = g.add("Cast", [g.add("Mul", [scale, zero])], to=2)
        zp_u8 = g.add("Add", [zp_u8, g.const(128, dtype=np.uint8)])
    flat_shape = g.const([-1], dtype=np.int64)
    q = g.add(
        "QuantizeLinear",
        [flat, g.add("Reshape", [scale, flat_shape]), g.add("Reshape", [zp_u8, flat_shape])],
        axis=0,
    )
    lead = g.add("Slice", [g.add("Shape", [x]), g.const([0], np.int64), g.const([-1], np.int64)])
    one = g.const(1.0)
    qmax = 2 ** (recipe["weight_bits"] - 1) - 1
    for node in nodes:
        w = g.array(node.input[1])
        w_scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / qmax
        wq = np.clip(np.round(w / w_scale), -qmax, qmax).astype(np.int8)
        wq_name = g.const(wq, dtype=np.int8)
        mm = g.add("MatMulIntegerToFloat", [q, wq_name, one, g.const(w_scale)], domain=MS_DOMAIN)
        if asym:  # sum_k (q - z) w = sum_k q w - z * colsum(w)
            colsum = wq.astype(np.float32).sum(axis=0) * w_scale
            mm = g.add("Sub", [mm, g.add("Mul", [zp_f, g.const(colsum)])])
        else:
            # constant zero point 128 folded the same way, no per-token term needed
            colsum = wq.astype(np.float32).sum(axis=0) * w_scale * 128
            mm = g.add("Sub", [mm, g.const(colsum)])
        y = g.add("Mul", [mm, scale])
        shape = g.add("Concat", [lead, g.const([w.shape[1]], np.int64)], axis=0)
        g.add("Reshape", [y, shape], out=node.output[0])
        g.drop(node)


def _save(model, out: Path) -> None:
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    big = model.ByteSize() > 1_800_000_000
    onnx.save(model, str(out), save_as_external_data=big, location=out.name + ".data")
