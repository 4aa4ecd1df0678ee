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
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerank.errors import missing_extra

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
_MS = "com.microsoft"


# --------------------------------------------------------------------------- export


def export_onnx(hf_dir: Path | str, out_dir: Path | str, opset: int = 17) -> Path:
    """FP32 ONNX of a *ForSequenceClassification checkpoint, tokenizer and config beside it.

    torch.onnx.export (TorchScript exporter) rather than optimum: same graph, one fewer
    heavy dependency at import, and eager attention gives the pattern the fusions know.
    """
    try:
        import torch
        from transformers import AutoModelForSequenceClassification
    except ImportError as exc:
        raise missing_extra("torch/transformers", "convert") from exc
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        hf_dir, attn_implementation="eager"
    ).eval()
    ids = torch.full((2, 8), 5, dtype=torch.long)
    args = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.config, "type_vocab_size", 1) > 1:  # BERT yes, XLM-R no
        args["token_type_ids"] = torch.zeros_like(ids)
    axes = {name: {0: "batch", 1: "sequence"} for name in args}
    axes["logits"] = {0: "batch"}
    out = out_dir / "model.onnx"
    with torch.inference_mode():
        torch.onnx.export(
            model, (), str(out), kwargs=args, input_names=list(args),
            output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False,
        )  # fmt: skip
    for name in ("tokenizer.json", "config.json"):
        if (hf_dir / name).exists():
            shutil.copy2(hf_dir / name, out_dir / name)
    return out


# --------------------------------------------------------------------------- quantize


def quantize_int8(
    fp32_onnx: Path | str,
    out_onnx: Path | str,
    recipe: dict[str, Any] | None = None,
    calibration: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Write the INT8 model; return the recipe with what was actually applied."""
    import onnx

    recipe = {**DEFAULT_RECIPE, **(recipe or {})}
    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    model = _fused(fp32_onnx) if recipe["fuse"] else onnx.load(str(fp32_onnx))
    g = _Graph(model)
    applied: dict[str, Any] = {"fused_attention": len(g.nodes_of("MultiHeadAttention"))}

    row_only: set[str] = set()
    if recipe["first_token_last_layer"]:
        row_only = _first_token_last_layer(g)
    applied["first_token_last_layer"] = bool(row_only)

    targets = [n for n in g.model.graph.node if _quantizable(g, n)]
    if recipe["last_layer_fp32"]:
        targets = [n for n in targets if n.input[0] not in row_only]
    keep = recipe.get("fp32_matmuls") or ()
    targets = [n for n in targets if not any(k in n.name for k in keep)]
    if recipe.get("ffn_down_fp32"):
        ffn_down = [n for n in targets if _fed_by(g, n, GELU_OPS)]
        applied["ffn_down_fp32"] = len(ffn_down)
        targets = [n for n in targets if n not in ffn_down]
    groups: dict[str, list] = {}
    for node in targets:
        groups.setdefault(node.input[0], []).append(node)

    alpha = recipe["smooth_alpha"]
    smooth: dict[str, np.ndarray] = {}
    if alpha is not None and groups:
        amax = _calibrate(g, fp32_onnx.parent, list(groups), calibration)
        smooth, applied["smoothed"] = _smooth(g, groups, amax, alpha)
    for x, nodes in groups.items():
        _quantize_group(g, x, nodes, smooth.get(x), recipe)
    applied["matmuls_int8"] = len(targets)
    g.finish()
    _save(g.model, out_onnx)
    return {**recipe, "applied": applied, "session": SESSION}


def _fused(path: Path):
    """onnxruntime's BERT fusions, attention as MultiHeadAttention over separate Q/K/V."""
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
    except Exception:  # an architecture the fusions do not know: quantize it unfused
        return onnx.load(str(path))
    if not any(o.domain == _MS for o in model.opset_import):  # fused ops live there
        model.opset_import.append(onnx.helper.make_opsetid(_MS, 1))
    return model


class _Graph:
    """Just enough graph bookkeeping for the rewrite: initializers, producers, new names."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self._np = numpy_helper
        self.inits = {t.name: t for t in model.graph.initializer}
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17
        )
        self._n = 0
        self._new_nodes: list = []
        self._new_inits: list = []
        self._dropped: set[int] = set()

    def nodes_of(self, op: str) -> list:
        return [n for n in self.model.graph.node if n.op_type == op]

    def producer(self, name: str):
        return next((n for n in self.model.graph.node if name in n.output), None)

    def consumers(self, name: str) -> list:
        return [n for n in self.model.graph.node if name in n.input]

    def array(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else self._np.to_array(t)

    def value(self, name: str) -> np.ndarray | None:
        """A constant whether stored as an initializer or as a Constant node."""
        found = self.array(name)
        node = self.producer(name) if found is None else None
        if node is not None and node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            found = None if attr is None else self._np.to_array(attr.t)
        return found

    def set_array(self, name: str, value: np.ndarray) -> None:
        t = self._np.from_array(value, name)
        self.inits[name].CopyFrom(t)

    def const(self, value, dtype=np.float32) -> str:
        name = self.fresh("c")
        t = self._np.from_array(np.asarray(value, dtype=dtype), name)
        self._new_inits.append(t)
        self.inits[name] = t
        return name

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"er_{stem}_{self._n}"

    def add(self, op: str, inputs: list[str], out: str | None = None, domain: str = "", **attrs):
        from onnx import helper

        out = out or self.fresh(op.lower())
        self._new_nodes.append(helper.make_node(op, inputs, [out], domain=domain, **attrs))
        return out

    def drop(self, node) -> None:
        self._dropped.add(id(node))

    def snapshot(self):
        """A copy of the model with the pending rewrite applied (the original is untouched)."""
        import onnx

        copy = onnx.ModelProto()
        copy.CopyFrom(self.model)
        self._apply(copy)
        return copy

    def finish(self) -> None:
        self._apply(self.model)

    def _apply(self, model) -> None:
        from onnx import helper

        graph = model.graph
        nodes = [n for n in self.model.graph.node if id(n) not in self._dropped]
        nodes += self._new_nodes
        used = {i for n in nodes for i in n.input}
        keep = [t for t in self.model.graph.initializer if t.name in used]
        names = {t.name for t in keep}
        keep += [t for t in self._new_inits if t.name in used and t.name not in names]
        ordered = _toposort(nodes, {i.name for i in graph.input} | set(self.inits))
        ordered = [_clone(n) for n in ordered]
        keep = [_clone(t) for t in keep]
        del graph.node[:]
        graph.node.extend(ordered)
        del graph.initializer[:]
        graph.initializer.extend(keep)
        if not any(o.domain == _MS for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(_MS, 1))


def _clone(proto):
    copy = type(proto)()
    copy.CopyFrom(proto)
    return copy


def _toposort(nodes: list, available: set[str]) -> list:
    ready, out, pending = set(available) | {""}, [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("graph rewrite left a cycle or a dangling input")
        pending = rest
    return out


def _quantizable(g: _Graph, node) -> bool:
    if node.op_type != "MatMul":
        return False
    w = g.array(node.input[1])
    return w is not None and w.ndim == 2 and w.dtype == np.float32


def _fed_by(g: _Graph, node, ops: frozenset[str]) -> bool:
    producer = g.producer(node.input[0])
    return producer is not None and producer.op_type in ops


def _first_token_last_layer(g: _Graph) -> set[str]:
    """Compute the last layer after its K/V projections for the first token only.

    Applies only when the encoder output feeds nothing but a Gather of position 0 (BERT's
    pooler, XLM-R's and DeBERTa's heads): then every other row is dead work. Returns the
    names of the tensors that now hold one row per sequence.
    """
    mhas = g.nodes_of("MultiHeadAttention")
    if not mhas:
        return set()
    mha = mhas[-1]
    q_mm = g.producer(mha.input[0])
    if q_mm is None or q_mm.op_type != "MatMul" or len(mha.input) < 3:
        return set()
    x = q_mm.input[0]
    out = mha.output[0]
    (ao,) = g.consumers(out) or [None]
    if ao is None or ao.op_type != "MatMul":
        return set()
    (sln,) = g.consumers(ao.output[0]) or [None]
    if sln is None or sln.op_type != "SkipLayerNormalization" or x not in sln.input[:2]:
        return set()
    # the encoder's final output must be read at position 0 only
    final = _final_encoder_output(g, sln.output[0])
    readers = g.consumers(final) if final else []
    if not readers or not all(_is_first_token_gather(g, r) for r in readers):
        return set()
    first = g.const(np.array([0], dtype=np.int64), dtype=np.int64)
    x0 = g.add("Gather", [x, first], axis=1)
    q_mm.input[0] = x0
    idx = list(sln.input).index(x)
    sln.input[idx] = x0
    row_only = {x0, out, ao.output[0], sln.output[0]}
    frontier = [sln.output[0]]
    while frontier:  # everything downstream of the gathered rows is one row per sequence
        name = frontier.pop()
        for n in g.consumers(name):
            for o in n.output:
                if o not in row_only:
                    row_only.add(o)
                    frontier.append(o)
    return row_only


def _final_encoder_output(g: _Graph, start: str) -> str | None:
    """Follow the single-consumer chain of the last layer to the last LayerNorm output."""
    name = start
    for _ in range(8):
        readers = g.consumers(name)
        if len(readers) == 1 and readers[0].op_type == "Gather":
            return name
        nxt = [r for r in readers if r.op_type in ("SkipLayerNormalization",)]
        if nxt:
            name = nxt[0].output[0]
            continue
        mm = [r for r in readers if r.op_type in ("MatMul", "BiasGelu", "Gelu", "FastGelu")]
        if not mm:
            return name
        name = mm[0].output[0]
    return None


def _is_first_token_gather(g: _Graph, node) -> bool:
    if node.op_type != "Gather":
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    idx = g.value(node.input[1])
    return axis == 1 and idx is not None and idx.size == 1 and int(idx.reshape(-1)[0]) == 0


def _calibration_pairs() -> list[tuple[str, str]]:
    """Generic English pairs; only per-channel activation ranges are taken from them."""
    queries = [
        "how do vaccines train the immune system",
        "best way to store fresh bread",
        "what causes inflation to rise",
        "symptoms of a broken wrist",
        "why is the sky blue during the day",
        "history of the printing press in europe",
        "how to reset a home wifi router",
        "difference between a virus and a bacterium",
    ]
    passages = [
        "Vaccines expose the body to a harmless piece of a pathogen so that the immune "
        "system learns to recognise it and responds faster when the real infection arrives.",
        "Bread keeps best at room temperature in a paper bag for two days; for longer, slice "
        "it and freeze it, then toast the slices straight from the freezer.",
        "Prices rise when demand outpaces supply, when production costs climb, or when the "
        "money supply grows faster than the economy. Central banks respond with rate changes.",
        "The football season ended with a dramatic penalty shoot-out in the final.",
        "Sunlight is scattered by the molecules of the air, and shorter blue wavelengths "
        "scatter much more strongly than red ones, so the sky looks blue.",
        "Gutenberg's movable type press, around 1440, made books cheaper and spread literacy "
        "across Europe within a few decades, changing religion, science and politics.",
        "Unplug the router, wait thirty seconds, plug it back in. If that fails, hold the "
        "reset button for ten seconds to restore factory settings and set it up again.",
        "Viruses need a host cell to copy themselves, while bacteria are living cells that "
        "reproduce on their own; antibiotics work against bacteria but not against viruses.",
        "Swelling, pain when moving the hand and a visible deformity are common signs; an "
        "x-ray confirms the fracture. " * 3,
        "A short note.",
    ]
    return [(q, p) for i, q in enumerate(queries) for p in passages[i % 3 :: 3][:3]] + [
        (q, passages[i]) for i, q in enumerate(queries)
    ]


def _feeds(model_dir: Path, inputs: list[str], pairs, batch: int = 8) -> list[dict]:
    """Right-padded feeds from the tokenizer.json beside the model (random ids without)."""
    path = model_dir / "tokenizer.json"
    rows: list[tuple[list[int], list[int]]] = []
    if path.exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        tok.no_padding()
        tok.enable_truncation(CALIBRATION_MAX_LENGTH, strategy="only_second")
        rows = [(e.ids, e.type_ids) for e in tok.encode_batch(list(pairs))]
    else:
        rng = np.random.default_rng(0)
        rows = [(list(rng.integers(5, 100, n)), [0] * n) for n in (8, 24, 64, 128)]
    feeds = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        width = max(len(ids) for ids, _ in chunk)
        f = {k: np.zeros((len(chunk), width), dtype=np.int64) for k in inputs}
        for r, (ids, types) in enumerate(chunk):
            f["input_ids"][r, : len(ids)] = ids
            f["attention_mask"][r, : len(ids)] = 1
            if "token_type_ids" in f:
                f["token_type_ids"][r, : len(ids)] = types
        feeds.append(f)
    return feeds


def _calibrate(g: _Graph, model_dir: Path, names: list[str], pairs) -> dict[str, np.ndarray]:
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
    for feed in _feeds(model_dir, inputs, pairs or _calibration_pairs()):
        outs = sess.run(names, feed)
        valid = feed["attention_mask"].astype(bool)
        for name, value in zip(names, outs, strict=True):
            v = np.abs(value)
            if v.ndim == 3 and v.shape[:2] == valid.shape:
                v = v[valid]
            v = v.reshape(-1, v.shape[-1]).max(axis=0)
            amax[name] = np.maximum(amax[name], v) if name in amax else v
    return amax


def _smooth(g: _Graph, groups, amax, alpha: float) -> tuple[dict[str, np.ndarray], int]:
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
        if src is not None and src.op_type == "MultiHeadAttention" and _fold_into_v(g, src, s):
            pass  # attention output = probs @ V: scaling V's columns scales these channels
        elif src is not None and "LayerNormalization" in src.op_type:
            explicit[x] = (1.0 / s).astype(np.float32)
        else:
            continue
        for n, w in zip(nodes, ws, strict=True):
            g.set_array(n.input[1], (w * s[:, None]).astype(np.float32))
        count += 1
    return explicit, count


def _fold_into_v(g: _Graph, mha, s: np.ndarray) -> bool:
    v_mm = g.producer(mha.input[2])
    if v_mm is None or not _quantizable(g, v_mm) or len(mha.input) < 4 or not mha.input[3]:
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


def _reduce(g: _Graph, op: str, x: str) -> str:
    if g.opset >= 18:
        return g.add(op, [x, g.const([1], dtype=np.int64)], keepdims=1)
    return g.add(op, [x], axes=[1], keepdims=1)


def _quantize_group(g: _Graph, x: str, nodes: list, inv_smooth, recipe: dict) -> None:
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
        mm = g.add("MatMulIntegerToFloat", [q, wq_name, one, g.const(w_scale)], domain=_MS)
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


# --------------------------------------------------------------------------- fidelity

Scorer = Callable[[list[tuple[str, str]]], np.ndarray]


def measure_fidelity(ref: Scorer, cand: Scorer, groups, gap_groups: int = 10) -> dict[str, float]:
    """Rank agreement of ``cand`` with ``ref`` per query group, and batch dependence.

    Scorers take (query, passage) pairs and return raw scores. The batch gap is the
    largest |score alone - score inside the group's mixed-length batch| of ``cand``.
    """
    from edgerank.fidelity import rank_agreement

    refs, cands, gap = [], [], 0.0
    for i, (query, passages) in enumerate(groups):
        pairs = [(query, p) for p in passages]
        refs.append(np.asarray(ref(pairs), dtype=np.float64))
        together = np.asarray(cand(pairs), dtype=np.float64)
        cands.append(together)
        if i < gap_groups:
            for j in range(0, len(pairs), 3):
                alone = float(np.asarray(cand([pairs[j]]))[0])
                gap = max(gap, abs(alone - float(together[j])))
    return {**rank_agreement(refs, cands), "batch_gap": gap}


def onnx_scorer(model_path: Path | str, threads: int = 1, max_length: int = 512) -> Scorer:
    """A torch-free scorer over an exported or quantized file (tokenizer.json beside it)."""
    from tokenizers import Tokenizer

    from edgerank.backends.onnx import open_session

    model_path = Path(model_path)
    sess = open_session(model_path, threads)
    inputs = [i.name for i in sess.get_inputs()]
    tok_path = model_path.parent / "tokenizer.json"
    if not tok_path.exists():
        tok_path = model_path.parent.parent / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="only_second")

    def score(pairs: list[tuple[str, str]]) -> np.ndarray:
        encs = tok.encode_batch(list(pairs))
        rows = [(e.ids, e.type_ids) for e in encs]
        feed = {k: np.zeros((len(rows), max(len(r[0]) for r in rows)), np.int64) for k in inputs}
        for r, (ids, types) in enumerate(rows):
            feed["input_ids"][r, : len(ids)] = ids
            feed["attention_mask"][r, : len(ids)] = 1
            if "token_type_ids" in feed:
                feed["token_type_ids"][r, : len(ids)] = types
        (logits,) = sess.run(["logits"], feed)
        return np.asarray(logits, dtype=np.float32).reshape(len(rows), -1)[:, 0]

    return score
