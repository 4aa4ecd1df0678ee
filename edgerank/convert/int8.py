"""What the INT8 kinds (convert/int8_files.py) start from: onnxruntime's BERT fusions, the
activation ranges of real sentences, and SmoothQuant. Torch-free (onnx + onnxruntime), so
`edgerank pull` can quantize on the box (`require_quantize` says when onnx is missing).

- fuse first (onnxruntime.transformers, model_type bert, MultiHeadAttention kept apart from
  the Q/K/V MatMuls so that those stay quantizable); LayerNorm, GELU and softmax run fused;
- SmoothQuant (alpha 0.5, calibrated on natural text) moves the activation outlier
  channels into the weights: folded exactly into the V projection for the attention-output
  MatMul, an explicit per-channel Mul for the LayerNorm-fed Q/K/V and FFN-in MatMuls (the
  LayerNorm output is also the residual, so it cannot be folded there) and the GELU-fed
  FFN-out MatMuls.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgerank.backends.padding import pad_batch
from edgerank.convert.graph import MIN_OPSET, MS_DOMAIN, Graph, opset_of, quantizable
from edgerank.errors import InvalidInput, missing_extra
from edgerank.models.checkpoint import read_config
from edgerank.models.manifest import weights_file
from edgerank.quality.texts import calibration_pairs

log = logging.getLogger("edgerank.convert")

#: the GELUs (plain and fused) whose outputs SmoothQuant rescales before the FFN-out MatMul
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


def _fused(path: Path):
    """onnxruntime's BERT fusions, attention as MultiHeadAttention over separate Q/K/V,
    then lifted to MIN_OPSET where the export is older (_lifted).

    Returns (model, None), or (the unfused model, why) for a graph the fusions cannot read:
    it still quantizes, slower, and the recipe records why instead of the fusions
    (int8_files.prepare carries it; a warning says so too)."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden, arch = 0, 0, ""  # 0 = let the optimizer detect them
    if (path.parent / "config.json").exists():
        conf = read_config(path.parent)
        heads, hidden = conf.get("num_attention_heads", 0), conf.get("hidden_size", 0)
        arch = conf.get("model_type", "")
    options = fusion_options(arch)
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
        return _lifted(onnx.load(str(path)), path.name), why
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):  # fused ops live there
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return _lifted(model, path.name), None


#: model types (config.json) whose attention onnxruntime's BERT fusions do not match:
#: DeBERTa's disentangled attention (content and relative-position terms)
UNFUSED_ATTENTION = frozenset({"deberta", "deberta-v2"})


def fusion_options(model_type: str):
    """onnxruntime's BERT fusion options for a config.json ``model_type``.

    BERT and XLM-R (RoBERTa's graph, no token types; its embedding stays unfused, as
    onnxruntime's fused embedding counts positions from 0 and RoBERTa's from 2) take the
    full set. DeBERTa-v2 takes LayerNorm, SkipLayerNorm and (Bias)Gelu only, and no
    symbolic shape inference: on its relative-position subgraphs that ran for minutes and
    took 7 GB (deberta-base shape) before it was stopped."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.use_multi_head_attention = True
    if model_type in UNFUSED_ATTENTION:
        options.enable_attention = False
        options.enable_embed_layer_norm = False
        options.enable_shape_inference = False
    return options


def _lifted(model, name: str):
    """``model`` converted to opset MIN_OPSET where it is older.

    The token kind quantizes rows with a per-axis QuantizeLinear (opset 13), and hub
    exports made at opset 11 or 12 still exist. The conversion runs after the fusions:
    before them, it rewrites the attention's Unsqueeze/Squeeze into forms the fusions do
    not match (a MiniLM export at opset 12 then kept no MultiHeadAttention and no fused
    embedding); after them, what is left in the default domain is MatMul, Gemm, Gather,
    Cast and the like, which the converter lifts unchanged."""
    from onnx import version_converter

    have = opset_of(model)
    if have >= MIN_OPSET:
        return model
    log.info("%s: opset %d -> %d", name, have, MIN_OPSET)
    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001 - onnx raises bare RuntimeErrors and its own
        first = (str(exc).splitlines() or [""])[0]
        raise InvalidInput(
            f"{name}: cannot lift ONNX opset {have} to {MIN_OPSET} ({first}); "
            f"export it at opset {MIN_OPSET} or newer"
        ) from exc


def _feeds(model_dir: Path, inputs: list[str], pairs, batch: int = 8) -> list[dict]:
    """Right-padded feeds from the tokenizer.json beside the model (random ids without)."""
    path = model_dir / "tokenizer.json"
    if path.exists():
        from edgerank.backends.pairs import PairTokenizer

        encs = PairTokenizer(path, CALIBRATION_MAX_LENGTH).encode_pairs(pairs)
        rows = [(e.ids, e.type_ids) for e in encs]
    else:
        rng = np.random.default_rng(0)
        rows = [(rng.integers(5, 100, n), None) for n in (8, 24, 64, 128)]
    feeds = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        padded = pad_batch([ids for ids, _ in chunk], type_ids=[t for _, t in chunk])
        feeds.append({k: padded[k] for k in inputs})
    return feeds


def _activations(g: Graph, model_dir: Path, names: list[str], pairs):
    """Each batch's values of the given activations, as [real tokens, channels] arrays."""
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
    for feed in _feeds(model_dir, inputs, pairs or calibration_pairs()):
        outs = sess.run(names, feed)
        valid = feed["attention_mask"].astype(bool)
        batch = {}
        for name, value in zip(names, outs, strict=True):
            if value.ndim == 3 and value.shape[:2] == valid.shape:
                value = value[valid]
            batch[name] = value.reshape(-1, value.shape[-1])
        yield batch


def _calibrate(g: Graph, model_dir: Path, names: list[str], pairs) -> dict[str, np.ndarray]:
    """Per-channel |max| of the given activations over real (unpadded) tokens."""
    amax: dict[str, np.ndarray] = {}
    for batch in _activations(g, model_dir, names, pairs):
        for name, v in batch.items():
            v = np.abs(v).max(axis=0)
            amax[name] = np.maximum(amax[name], v) if name in amax else v
    return amax


def smoothed_fp32(
    prepared: Path, out: Path, model_dir: Path, pairs, alpha: float = 0.5
) -> dict[str, Any]:
    """The FP32 graph with SmoothQuant applied: still FP32 and (up to rounding) the same
    function, with the activation outlier channels moved into the weights' rows.

    A per-token activation scale (convert/int8_files.py's ``token`` kind) still gives every
    channel of a token the same step, so a few outlier channels (LayerNorm's gamma, GELU's
    tail) leave the others a handful of levels; the weights are quantized per output
    channel and take the range better. Folded into V for the attention output; an explicit
    Mul for LayerNorm-fed (the LayerNorm output is also the residual) and GELU-fed MatMuls.
    """
    import onnx

    g = Graph(onnx.load(str(prepared)))
    groups: dict[str, list] = {}
    for node in g.model.graph.node:
        if quantizable(g, node):
            groups.setdefault(node.input[0], []).append(node)
    amax = _calibrate(g, model_dir, list(groups), pairs)
    explicit, count = _smooth(g, groups, amax, alpha)
    for x, inv in explicit.items():
        scaled = g.add("Mul", [x, g.const(inv)])
        for node in groups[x]:
            node.input[0] = scaled
    g.finish()
    _save(g.model, out)
    return {"smooth_alpha": alpha, "smoothed": count, "explicit_mul": len(explicit)}


def _smooth(g: Graph, groups, amax, alpha: float) -> tuple[dict[str, np.ndarray], int]:
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
        if mha and _fold_into_v(g, src, s):
            pass  # attention output = probs @ V: scaling V's columns scales these channels
        elif src is not None and ("LayerNormalization" in src.op_type or src.op_type in GELU_OPS):
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


def _save(model, out: Path) -> None:
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    big = model.ByteSize() > 1_800_000_000
    onnx.save(model, str(out), save_as_external_data=big, location=weights_file(out.name))
