"""Accuracy-aware INT8: quantize, prove it on natural text, back off until faithful.

Two bases (bench/int8_frontier.py measures both): onnxruntime's own dynamic quantization
(weights int8 per output channel, activations uint8 with ONE scale per tensor, computed at
run time; MLAS's fused DynamicQuantizeMatMul) is the fastest INT8 here, but on real
sentences it ranks far from FP32 (faq-head, 140 natural-text groups: Spearman 0.945, top-1
kept 88%, all MatMuls INT8) and needed more than 24 of 32 MatMuls in FP32 before the
floor, where it no longer paid. The per-token W8A8 base (convert/int8.py: uint8 scales per
token, SmoothQuant on the LayerNorm-fed MatMuls) starts at 0.979 / 93% and passes 0.99
Spearman with 8-12 of 32 MatMuls in FP32, so it is the default; its top-1 on the probe
stayed at 95-96.4% up to 12 kept (faq-head, gloss-head), and by then it no longer paid
1.1x on a loaded 2-vCPU box, so those installs ended in FP32. Both run on the
fused FP32 graph (onnxruntime's BERT fusions: LayerNorm, GELU, attention) with the last
layer computed for the first token only where the head reads only that row (exact;
convert/graph.first_token_last_layer).

Speed alone is not the promise, so the file is measured before it is installed: INT8 vs
the FP32 graph on a held-out natural-text probe (edgerank/quality/data/probe.jsonl, or
more). Below the floor, the MatMuls whose quantization measurably hurts most stay FP32:
one pass over the calibration text, with a switch per MatMul between its FP32 and INT8
outputs, measures each MatMul's own damage to the logits; the loop then keeps the worst
ones in FP32 (1, 2, 3, 4, 6, 8, ... of them) and re-measures on the probe until the floor
holds. Every point is kept as the frontier. If INT8 stops paying (under MIN_SPEEDUP x the
FP32 graph) before the floor holds, the FP32 graph is what gets installed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerank.quality.scoring import Scorer

#: mean Spearman per group and share of groups whose FP32 top-1 stays top-1
FLOOR = {"spearman_mean": 0.99, "top1_kept": 0.97}
#: INT8 must be at least this much faster than the FP32 graph to be worth its noise
MIN_SPEEDUP = 1.1
#: how many MatMuls the loop keeps FP32 at each step (worst first)
SCHEDULE = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 36, 48, 72)
RECIPE = {
    "name": "w8-dynamic-backoff-v3",
    "fuse": "onnxruntime.transformers bert (MultiHeadAttention, SkipLayerNorm, BiasGelu)",
    "first_token_last_layer": True,
    "quantized_ops": ["MatMul"],
}
PROBE_MAX_LENGTH = 256


@dataclass(frozen=True)
class Policy:
    """What an install accepts: the floor, when INT8 stops paying, and the user's opt-in
    to install below the floor (the CLI's --allow-below-floor)."""

    floor: dict[str, float] | None = None  # None: FLOOR
    min_speedup: float | None = None  # None: MIN_SPEEDUP
    allow_below_floor: bool = False


#: 7-bit weights (vpmaddubsw saturation on AVX2) measured no better here: full 8-bit
REDUCE_RANGE = False
Progress = Callable[[str], None]


def meets(fid: dict[str, float], floor: dict[str, float] = FLOOR) -> bool:
    return all(fid.get(k, -1.0) >= v for k, v in floor.items())


# --------------------------------------------------------------------------- graphs


def prepare_fp32(fp32_onnx: Path, work: Path) -> tuple[Path, Path]:
    """The fused FP32 graph, and the same with the first-token last layer where it applies
    (the FP32 reference and the FP32 candidate; the token base rewrites the fused one)."""
    import onnx

    from edgerank.convert.graph import Graph, first_token_last_layer
    from edgerank.convert.int8 import _fused, _save

    model, _why = _fused(fp32_onnx)
    fused = work / "model.fused.onnx"
    _save(model, fused)
    g = Graph(onnx.load(str(fused)))
    first_token_last_layer(g)
    g.finish()
    out = work / "model.fp32.onnx"
    _save(g.model, out)
    return fused, out


def quantized_matmuls(prepared: Path, quantized: Path) -> list[str]:
    """The MatMuls of ``prepared`` that ``quantized`` no longer computes in FP32."""
    import onnx

    plain = {n.output[0] for n in onnx.load(str(quantized)).graph.node if n.op_type == "MatMul"}
    model = onnx.load(str(prepared))
    inits = {t.name for t in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and n.output[0] not in plain
    ]


class Base:
    """One way to quantize: ``build(keep_fp32, out)`` writes the INT8 file."""

    def __init__(self, name: str, fused: Path, prepared: Path, calibration_pairs):
        self.name, self.fused, self.prepared = name, fused, prepared
        self.pairs = calibration_pairs
        self.ranges: dict[str, np.ndarray] = {}  # activation ranges: calibrated once

    def build(self, keep: Sequence[str], out: Path) -> Path:
        if self.name == "dynamic":
            return quantize(self.prepared, out, keep)
        from edgerank.convert import int8

        recipe = {**TOKEN_BASE, "fp32_matmuls": list(keep)}
        int8.quantize_int8(self.fused, out, recipe, calibration=self.pairs, ranges=self.ranges)
        return out


#: per-token W8A8 (convert/int8.py) with SmoothQuant on the LayerNorm-fed MatMuls; the V fold
#: is off so that every INT8 MatMul still reads its FP32 input (the sensitivity switch
#: needs that) and v2's structural FFN-down rule is replaced by measured back-off
TOKEN_BASE = {"fuse": False, "ffn_down_fp32": False, "fold_v": False}
#: bases in the order tried; bench/int8_frontier.py has both frontiers on three models
BASES = ("token", "dynamic")


def quantize(
    prepared: Path, out: Path, keep_fp32: Sequence[str] = (), reduce_range: bool = REDUCE_RANGE
) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["MatMul"], nodes_to_exclude=list(keep_fp32),
        reduce_range=reduce_range,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )  # fmt: skip
    return out


def switch_graph(prepared: Path, quantized: Path, names: list[str]):
    """The INT8 graph with an input ``er_fp32`` (one float per MatMul): 1 = use that MatMul's
    FP32 output, 0 = its INT8 output. One session then measures any mix."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

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
        idx = numpy_helper.from_array(np.array(k, dtype=np.int64), f"er_k{k}")
        new_inits.append(idx)
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
    from edgerank.convert.graph import _toposort

    ready = {i.name for i in q.graph.input} | {t.name for t in q.graph.initializer}
    nodes = _toposort(list(q.graph.node), ready)
    del q.graph.node[:]
    q.graph.node.extend(nodes)
    return q


# -------------------------------------------------------------------------- scoring


# ---------------------------------------------------------------------- measurements


def sensitivities(
    prepared: Path, quantized: Path, names: list[str], tokenizer_json: Path,
    pairs: Sequence[tuple[str, str]], threads: int,
) -> dict[str, float]:  # fmt: skip
    """Each MatMul's own damage: RMS logit change when it alone runs INT8 (all else FP32)."""
    sw = Scorer(switch_graph(prepared, quantized, names), tokenizer_json, threads, 128)
    if not names:
        return {}
    rows = sw.encode(pairs)
    ones = np.ones(len(names), dtype=np.float32)
    ref = sw.run(rows, {"er_fp32": ones})
    out = {}
    for k, name in enumerate(names):
        mix = ones.copy()
        mix[k] = 0.0
        out[name] = float(np.sqrt(np.mean((sw.run(rows, {"er_fp32": mix}) - ref) ** 2)))
    return out


def speed_ratio(fp32: Scorer, cands: dict[str, Scorer], rows, rounds: int = 4) -> dict[str, float]:
    """FP32 seconds / candidate seconds on the same rows, rounds interleaved, medians."""
    runs = {"fp32": fp32, **cands}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for s in runs.values():
        s.run(rows)
    for r in range(rounds):
        names = list(runs)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runs[name].run(rows)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["fp32"])
    return {k: base / statistics.median(v) for k, v in times.items() if k != "fp32"}


def batch_gap(scorer: Scorer, encoded_groups, n_groups: int = 8) -> float:
    """Largest |score alone - score inside its group's length-sorted batch|."""
    gap = 0.0
    for g in encoded_groups[:n_groups]:
        together = scorer.run(g)
        for i in range(0, len(g), 3):
            gap = max(gap, abs(float(scorer.run([g[i]])[0]) - float(together[i])))
    return gap


def agreement(ref: list[np.ndarray], cand: list[np.ndarray]) -> dict[str, float]:
    from edgerank.quality.fidelity import rank_agreement

    return rank_agreement(ref, cand)


def measure_pair(
    fp32: Path, int8: Path, tokenizer_json: Path, max_length: int, threads: int = 2
) -> dict[str, Any]:
    """A ready INT8 file against its FP32 original on the shipped probe (no back-off)."""
    from edgerank.quality import sets

    probe, info = sets.shipped(sets.PROBE)
    ref_s = Scorer(fp32, tokenizer_json, threads, max_length)
    enc = [ref_s.encode([(q, d) for d in docs]) for q, docs in probe]
    ref = ref_s.score_groups(enc)
    fid = agreement(ref, Scorer(int8, tokenizer_json, threads, max_length).score_groups(enc))
    return {
        "reference": "onnx fp32 (the publisher's)", "probe": info, **_rounded(fid),
        "floor": dict(FLOOR), "meets_floor": meets(fid),
    }  # fmt: skip


# ------------------------------------------------------------------------------ loop


def quantize_accurate(
    fp32_onnx: Path, work: Path, tokenizer_json: Path, *,
    probe: list[tuple[str, list[str]]], calibration: list[tuple[str, list[str]]],
    policy: Policy | None = None, threads: int = 2, max_length: int = PROBE_MAX_LENGTH,
    base: str = BASES[0], sensitivity_pairs: int = 32, progress: Progress = lambda msg: None,
) -> dict[str, Any]:  # fmt: skip
    """Find the fastest INT8 file above ``floor``; return the decision and every figure.

    Returns {"file": Path to install, "precision": "int8" | "fp32", "meets_floor": bool,
    "recipe": {...}, "fidelity": {...}, "frontier": [...]}. The caller decides what a
    miss means (refuse, or install with --allow-below-floor).
    """
    policy = policy or Policy()
    floor = dict(FLOOR if policy.floor is None else policy.floor)
    min_speedup = MIN_SPEEDUP if policy.min_speedup is None else policy.min_speedup
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    fused, prepared = prepare_fp32(fp32_onnx, work)
    ref_s = Scorer(prepared, tokenizer_json, threads, max_length)
    enc = [ref_s.encode([(q, d) for d in docs]) for q, docs in probe]
    ref = ref_s.score_groups(enc)
    speed_rows = [row for g in enc[:: max(1, len(enc) // 16)] for row in g[:1]][:16]
    cal_pairs = [(q, d) for q, docs in calibration for d in docs[:1]]
    quant = Base(base, fused, prepared, cal_pairs)
    switch_src = fused if base == "token" else prepared

    frontier: list[dict[str, Any]] = []
    order: list[str] = []
    names: list[str] = []
    sens: dict[str, float] = {}
    chosen: dict[str, Any] | None = None
    tried: set[int] = set()
    for count in SCHEDULE:
        count = min(count, len(order)) if count else 0  # the last point: every MatMul FP32
        if count in tried:
            break
        tried.add(count)
        keep = order[:count]
        path = quant.build(keep, work / f"model.int8.keep{count}.onnx")
        names = names or quantized_matmuls(switch_src, path)
        cand = Scorer(path, tokenizer_json, threads, max_length)
        fid = agreement(ref, cand.score_groups(enc))
        ratio = speed_ratio(ref_s, {"c": cand}, speed_rows)["c"]
        point = {"fp32_matmuls": count, **_rounded(fid), "speed_vs_onnx_fp32": round(ratio, 3)}
        frontier.append({**point, "file": path.name, "kept": keep})
        progress(
            f"INT8 ({base}) with {count} MatMul(s) in FP32: Spearman {fid['spearman_mean']:.4f}, "
            f"top-1 kept {fid['top1_kept']:.1%}, {ratio:.2f}x ONNX FP32"
        )
        if meets(fid, floor) and ratio >= min_speedup:
            chosen = frontier[-1]
            break
        if ratio < min_speedup:
            break  # INT8 no longer pays: FP32 is the faithful choice
        if not order:
            progress("measuring each MatMul's sensitivity on the calibration text")
            cal = cal_pairs[:: max(1, len(cal_pairs) // sensitivity_pairs)][:sensitivity_pairs]
            sens = sensitivities(switch_src, path, names, tokenizer_json, cal, threads)
            order = sorted(names, key=lambda n: -sens[n])
    best_int8 = max(frontier, key=lambda p: (p["spearman_mean"], p["top1_kept"]))
    result: dict[str, Any] = {
        "recipe": {
            **RECIPE,
            "base": BASE_DOC[base],
            "fp32_matmuls": (chosen or best_int8)["kept"],
            "matmuls_int8": len(names) - len((chosen or best_int8)["kept"]),
            "sensitivity": {k: round(v, 5) for k, v in sorted(sens.items(), key=lambda x: -x[1])},
        },
        "frontier": [{k: v for k, v in p.items() if k not in ("kept", "file")} for p in frontier],
        "floor": dict(floor),
        "seconds": round(time.perf_counter() - t_start, 1),
    }

    def installed(point: dict[str, Any], meets_floor: bool) -> dict[str, Any]:
        path = work / point["file"]
        gap = batch_gap(Scorer(path, tokenizer_json, threads, max_length), enc)
        fid = {**{k: point[k] for k in _FIG if k in point}, "batch_gap": gap}
        return {**result, "file": path, "precision": "int8", "meets_floor": meets_floor,
                "fidelity": fid}  # fmt: skip

    if chosen is not None:
        return installed(chosen, True)
    if frontier[-1]["speed_vs_onnx_fp32"] < min_speedup:
        progress(f"INT8 stops paying (< {min_speedup}x FP32) before the floor holds: FP32")
        why = f"slower than {min_speedup}x ONNX FP32 before the floor held"
        return {**result, "file": prepared, "precision": "fp32", "meets_floor": True,
                "fidelity": {"reference": "itself"}, "int8_rejected": why}  # fmt: skip
    return installed(best_int8, False)


BASE_DOC = {
    "token": "W8A8 per-token uint8 activations in-graph, int8 per-channel 7-bit weights, "
    "SmoothQuant 0.5 on LayerNorm-fed MatMuls (convert/int8.quantize_int8)",
    "dynamic": "onnxruntime quantize_dynamic: QInt8 weights per channel, uint8 activations "
    "per tensor at run time",
}
_FIG = (
    "groups", "spearman_mean", "spearman_min", "top1_kept", "max_abs_diff", "speed_vs_onnx_fp32",
)  # fmt: skip


def _rounded(fid: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in fid.items()}
