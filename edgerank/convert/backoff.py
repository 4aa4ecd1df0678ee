"""Accuracy-aware INT8: quantize, prove it on natural text, move up until faithful.

Every MatMul starts at its base's fastest kind (convert/int8_files.py; the default base
starts at ``token``: per-token int8 behind SmoothQuant, 1.8-1.9x FP32 with VNNI, about
1.2-1.4x on AVX2, README "Speed per ISA"). The file is
measured before it is installed: INT8 vs the FP32 graph on a held-out natural-text probe
(edgerank/quality/data/probe.jsonl, or more). Below the floor, the MatMuls whose
quantization measurably hurts most move one kind up (``block``: int8 per row and block of
32, faithful but slower; then ``fp32``): one pass over the calibration text, with a switch
per MatMul between its FP32 and quantized outputs, measures each MatMul's own damage to the
logits; the loop then moves the worst 2, 4, 8, ... of them up and re-measures on the probe
until the floor holds. Every point is kept as the frontier. If INT8 stops paying (under
MIN_SPEEDUP x the FP32 graph) before the floor holds, the FP32 graph is what gets
installed.

With the cascade (the default; engine/cascade.py) every point is judged as it will serve:
INT8 scores, then the passages within ``margin`` of the INT8 leader rescored with the FP32
graph kept beside it. The margin is twice the largest |INT8 - FP32| on the calibration
groups, measured per point; the probe then gives the figures with the rescoring applied,
the share of pairs rescored, and the speed that leaves: 1 / (1/ratio + share), in units of
the FP32 graph, on the probe's 8-passage groups (a RAG request's 32-100 passages rescore a
smaller share, bench/int8_cascade.py). The share stands for the FP32 time because the head
is rescored unpadded (engine/cascade.py), at the same cost per token as a full pass.

All kinds run on the fused FP32 graph (onnxruntime's BERT fusions: LayerNorm, GELU,
attention) with the last layer computed for the first token only where the head
reads only that row (exact; convert/graph.first_token_last_layer); that remainder of a few
rows stays FP32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerank.convert import int8, int8_files
from edgerank.quality.scoring import Scorer

#: mean Spearman per group and share of groups whose FP32 top-1 stays top-1
FLOOR = {"spearman_mean": 0.99, "top1_kept": 0.97}
#: INT8 must be at least this much faster than the FP32 graph to be worth its noise
MIN_SPEEDUP = 1.1
#: how many MatMuls (worst first) move one kind up at each step; then all of them
SCHEDULE = (2, 4, 8, 16)
#: the kinds each base climbs through; the first base is the default. ``mixed`` over
#: ``token`` (straight to FP32), measured on faq-head: token's 2 FP32 MatMuls passed the
#: probe (0.993 / 97.9%, 1.58x) but kept FP32's top-1 in 93.5% of the held-out groups;
#: mixed's 8 ``block`` (0.994 / 97.1%, 1.32x) kept 97.1% there. Covering more MatMuls a
#: little carries over to unseen text better than covering a few exactly.
LADDERS = {
    "mixed": ("token", "block", "fp32"),
    "dynamic-mixed": ("dynamic", "block", "fp32"),
    "token": ("token", "fp32"),
    "block": ("block", "fp32"),
    "dynamic": ("dynamic", "fp32"),
}
BASES = tuple(LADDERS)
#: SmoothQuant migration strength in front of the ``token`` kind (the paper's default)
SMOOTH_ALPHA = 0.5
RECIPE = {
    "name": "int8-ladder-v6",
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
    #: a file no u8 x s8 kernel can saturate (int8_files.build's ``bounded``); None: when
    #: this CPU's kernel can (the file is measured here, so it must be right here)
    portable: bool | None = None
    #: rescore the near-ties of the INT8 leader with the FP32 graph (kept beside the INT8
    #: file, so the entry takes its memory too); False: INT8 alone (--no-cascade)
    cascade: bool = True


Progress = Callable[[str], None]


def meets(fid: dict[str, float], floor: dict[str, float] = FLOOR) -> bool:
    """Whether the probe's figures clear the floor, as measured (no margin: one standard
    error on top-1, i.e. at most 2 misses in 140, was tried on three models and moved
    them to all-``block`` for 20% of their speed, with the same held-out top-1)."""
    return all(fid.get(k, -1.0) >= v for k, v in floor.items())


# ---------------------------------------------------------------------- measurements


def sensitivities(
    prepared: Path, quantized: Path, names: list[str], tokenizer_json: Path,
    pairs: Sequence[tuple[str, str]], threads: int,
) -> dict[str, float]:  # fmt: skip
    """Each MatMul's own damage: RMS logit change when it alone runs INT8 (all else FP32)."""
    sw = Scorer(int8_files.switch_graph(prepared, quantized, names), tokenizer_json, threads, 128)
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


def speed_ratio(fp32: Scorer, cands: dict[str, Scorer], rows, rounds: int = 5) -> dict[str, float]:
    """FP32 seconds / candidate seconds on the same rows, rounds interleaved, each graph's
    fastest round.

    The fastest, not the median: the ratio decides whether INT8 still pays (MIN_SPEEDUP),
    and on 2 shared vCPUs a disturbed round is slow, never fast. The same two files (faq-head
    FP32 vs 8 ``block``), four repeats of five rounds on an idle box: medians 0.93-1.48x,
    minima 1.27-1.41x; one median under 1.1 installed FP32 for a file that pays 1.2x.
    """
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
    base = min(times["fp32"])
    return {k: base / min(v) for k, v in times.items() if k != "fp32"}


def speed_rows(encoded_groups, n: int = 16) -> list:
    """``n`` probe rows of typical length (evenly spaced over the 10th-90th percentile of
    the length-sorted probe), timed as one batch.

    Why not any n rows: one batch pads to its longest row, and a probe passage truncated
    at the probe's max_length made every timed row that long (16 rows, 2 of them at 256
    tokens, ran as 16 x 256): 2.3x the work of the rows themselves on every timed run,
    about a fifth of an import's wall time, and a ratio measured at a length the probe
    barely has.
    """
    rows = sorted((r for g in encoded_groups for r in g), key=lambda r: len(r[0]))
    lo, hi = len(rows) // 10, max(len(rows) // 10 + 1, len(rows) * 9 // 10)
    step = max(1, (hi - lo) // n)
    return rows[lo:hi:step][:n]


def batch_gap(scorer: Scorer, encoded_groups, n_groups: int = 8) -> float:
    """Largest |score alone - score inside its group's length-sorted batch|."""
    gap = 0.0
    for g in encoded_groups[:n_groups]:
        together = scorer.run(g)
        for i in range(0, len(g), 3):
            gap = max(gap, abs(float(scorer.run([g[i]])[0]) - float(together[i])))
    return gap


def agreement(ref: list[np.ndarray], cand: list[np.ndarray]) -> dict[str, float]:
    from edgerank.engine.agreement import rank_agreement

    return rank_agreement(ref, cand)


def cascade_figures(
    ref: list[np.ndarray], got: list[np.ndarray], cal_ref: list[np.ndarray],
    cal_got: list[np.ndarray], ratio: float,
) -> dict[str, Any]:  # fmt: skip
    """A point as the cascade serves it: its margin (twice the largest |INT8 - FP32| of the
    calibration groups), the probe's figures with each group's head rescored in FP32, the
    share of pairs rescored and the speed left in units of the FP32 graph."""
    from edgerank.engine.cascade import with_fp32_head

    error = max(float(np.max(np.abs(a - b))) for a, b in zip(cal_got, cal_ref, strict=True))
    margin = 2 * error
    done = [with_fp32_head(g, r, margin) for r, g in zip(ref, got, strict=True)]
    served, rescored = [s for s, _ in done], sum(n for _, n in done)
    share = rescored / max(1, sum(len(g) for g in got))
    speed = 1.0 / (1.0 / ratio + share) if ratio > 0 else 0.0
    return {
        "margin": round(margin, 5), "calibration_error_max": round(error, 5),
        **_rounded(agreement(ref, served)),
        "rescored_share": round(share, 4), "speed_vs_onnx_fp32": round(speed, 3),
    }  # fmt: skip


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
    from edgerank.hardware.probe import int8_kernel_here

    return {
        "reference": "onnx fp32 (the publisher's)", "int8_kernel": int8_kernel_here(),
        "probe": info, **_rounded(fid),
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
    cascade = policy.cascade
    ladder = LADDERS[base]
    bounded = policy.portable
    if bounded is None:
        from edgerank.hardware.facts import SATURATING_INT8
        from edgerank.hardware.probe import int8_kernel_here

        bounded = int8_kernel_here() in SATURATING_INT8
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    prepared, row_mms = int8_files.prepare_fp32(fp32_onnx, work)
    fixed = dict.fromkeys(row_mms, "fp32")
    ref_s = Scorer(prepared, tokenizer_json, threads, max_length)
    enc = [ref_s.encode([(q, d) for d in docs]) for q, docs in probe]
    ref = ref_s.score_groups(enc)
    timed = speed_rows(enc)
    cal_enc = [ref_s.encode([(q, d) for d in docs]) for q, docs in calibration] if cascade else []
    cal_ref = ref_s.score_groups(cal_enc) if cascade else []
    cal_pairs = [(q, d) for q, docs in calibration for d in docs[:1]]
    sens_pairs = cal_pairs[:: max(1, len(cal_pairs) // sensitivity_pairs)][:sensitivity_pairs]
    names = [n for n in int8_files.matmul_names(prepared) if n not in fixed]
    source, smoothing = prepared, None
    if "token" in ladder:  # per-token scales still share one step across a token's channels
        source = work / "model.smooth.fp32.onnx"
        smoothing = int8.smoothed_fp32(
            prepared, source, tokenizer_json.parent, cal_pairs, SMOOTH_ALPHA
        )

    frontier: list[dict[str, Any]] = []
    sens: dict[str, dict[str, float]] = {}

    def point(kinds: dict[str, str]) -> dict[str, Any]:
        moved = {k: sorted(n for n, v in kinds.items() if v == k) for k in ladder[1:]}
        tag = "-".join(f"{k}{len(v)}" for k, v in moved.items())
        out = work / f"model.int8.{tag}.onnx"
        path = int8_files.build(source, out, {**fixed, **kinds}, ladder[0], bounded=bounded)
        cand = Scorer(path, tokenizer_json, threads, max_length)
        got = cand.score_groups(enc)
        fid = agreement(ref, got)
        ratio = speed_ratio(ref_s, {"c": cand}, timed)["c"]
        counts = {f"{k}_matmuls": len(v) for k, v in moved.items()}
        p = {**counts, **_rounded(fid), "speed_vs_onnx_fp32": round(ratio, 3)}
        line = (
            f"INT8 ({ladder[0]}; " + ", ".join(f"{len(v)} {k}" for k, v in moved.items())
            + f"): Spearman {fid['spearman_mean']:.4f}, top-1 kept {fid['top1_kept']:.1%}, "
            f"{ratio:.2f}x ONNX FP32"
        )  # fmt: skip
        if cascade:
            c = p["cascade"] = cascade_figures(ref, got, cal_ref, cand.score_groups(cal_enc), ratio)
            line += (
                f"; with FP32 near-tie rescoring (margin {c['margin']:.3f}, "
                f"{c['rescored_share']:.1%} of pairs): Spearman {c['spearman_mean']:.4f}, "
                f"top-1 kept {c['top1_kept']:.1%}, {c['speed_vs_onnx_fp32']:.2f}x"
            )
        progress(line)
        frontier.append({**p, "file": path.name, "kinds": dict(kinds)})
        return frontier[-1]

    def judged(p: dict[str, Any]) -> dict[str, Any]:
        """A point's figures as it would serve: with the cascade when that is on."""
        return p["cascade"] if cascade else p

    def ok(p: dict[str, Any]) -> bool:
        return meets(judged(p), floor)

    def pays(p: dict[str, Any]) -> bool:
        return judged(p)["speed_vs_onnx_fp32"] >= min_speedup

    kinds: dict[str, str] = {}
    chosen = None
    last = point(kinds)
    for rung in ladder[1:]:
        if ok(last) and pays(last):
            chosen = last
            break
        if not pays(last):
            break  # INT8 no longer pays: FP32 is the faithful choice
        progress(f"measuring each MatMul's sensitivity before moving the worst to {rung}")
        current = [n for n in names if kinds.get(n, ladder[0]) != rung]
        sens[rung] = sensitivities(
            source, work / last["file"], current, tokenizer_json, sens_pairs, threads
        )
        order = sorted(current, key=lambda n: -sens[rung][n])
        for count in (*[c for c in SCHEDULE if c < len(order)], len(order)):
            last = point({**kinds, **dict.fromkeys(order[:count], rung)})
            if ok(last) or not pays(last):
                break
        kinds = dict(last["kinds"])
    else:
        if ok(last) and pays(last):
            chosen = last
    best_int8 = max(frontier, key=lambda p: (judged(p)["spearman_mean"], judged(p)["top1_kept"]))
    pick = chosen or best_int8
    result: dict[str, Any] = {
        "recipe": {
            **RECIPE,
            "base": {k: int8_files.KIND_DOC[k] for k in ladder},
            "smoothing": smoothing,
            "saturation_safe": bounded,
            "matmul_kinds": pick["kinds"],
            "fp32_matmuls": sorted(n for n, k in pick["kinds"].items() if k == "fp32"),
            "first_token_fp32": sorted(fixed),
            "matmuls": len(names),
            "matmuls_int8": len(names) - sum(k == "fp32" for k in pick["kinds"].values()),
            "sensitivity": {
                rung: {k: round(v, 5) for k, v in sorted(s.items(), key=lambda x: -x[1])}
                for rung, s in sens.items()
            },
        },
        "frontier": [{k: v for k, v in p.items() if k not in ("kinds", "file")} for p in frontier],
        "floor": dict(floor),
        "seconds": round(time.perf_counter() - t_start, 1),
    }

    def installed(p: dict[str, Any], meets_floor: bool) -> dict[str, Any]:
        path = work / p["file"]
        gap = batch_gap(Scorer(path, tokenizer_json, threads, max_length), enc)
        fid = {**{k: judged(p)[k] for k in _FIG if k in judged(p)}, "batch_gap": gap}
        out = {**result, "file": path, "precision": "int8", "meets_floor": meets_floor}
        if cascade:  # the figures above are the cascade's; INT8 alone's beside them
            c = p["cascade"]
            fid["rescored_share"] = c["rescored_share"]
            fid["int8_alone"] = {k: p[k] for k in _FIG if k in p}
            out["recipe"] = {**result["recipe"], "cascade": {
                "margin": c["margin"], "calibration_error_max": c["calibration_error_max"],
                "calibration_groups": len(cal_enc), "rule": CASCADE_RULE,
            }}  # fmt: skip
        return {**out, "fidelity": fid}

    if chosen is not None:
        return installed(chosen, True)
    if not pays(frontier[-1]):
        progress(f"INT8 stops paying (< {min_speedup}x FP32) before the floor holds: FP32")
        why = f"slower than {min_speedup}x ONNX FP32 before the floor held"
        return {**result, "file": prepared, "precision": "fp32", "meets_floor": True,
                "fidelity": {"reference": "itself"}, "int8_rejected": why}  # fmt: skip
    return installed(best_int8, False)


CASCADE_RULE = (
    "passages scored within margin of the INT8 leader are rescored with the FP32 graph "
    "(reference_file); margin = 2 x the largest |INT8 - FP32| on the calibration groups"
)
_FIG = (
    "groups", "spearman_mean", "spearman_min", "top1_kept", "max_abs_diff", "speed_vs_onnx_fp32",
)  # fmt: skip


def _rounded(fid: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in fid.items()}
