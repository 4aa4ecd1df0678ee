"""Accuracy-aware INT8: quantize, prove it on natural text, move up until faithful, and
judge the speed where the deployment serves.

Every MatMul starts at its base's fastest kind (convert/int8_files.py; the default base
starts at ``token``, per-token int8 behind SmoothQuant). The file is measured before it is
installed: INT8 vs the FP32 graph on a held-out natural-text probe
(edgerank/quality/data/probe.jsonl). Below the floor, the MatMuls whose quantization
measurably hurts most move one kind up (``block``, then ``fp32``): one pass over the
calibration text, with a switch per MatMul between its FP32 and quantized outputs,
measures each MatMul's own damage to the logits; the loop then moves the worst 2, 4, 8, ...
of them up and re-measures until the floor holds. Every point is kept as the frontier.

With the cascade (the default; engine/cascade.py) every point is judged as it will serve:
INT8 scores, then the passages within ``margin`` of the INT8 leader rescored with the FP32
graph kept beside it. The margin is twice the largest |INT8 - FP32| on the calibration
groups, measured per point.

Speed is judged at the request shape the deployment serves (Policy.request_shape, a RAG
request by default), not on the probe's 8-passage groups, where the cascade's head is a
larger share than on the 20-200 passages a daemon gets: convert/judge.py times CPU time
and counts the head per request size, models/serving.judge decides on an interval. If
INT8 stops paying before the floor holds, the FP32 graph is installed; an INT8 point that
met the floor is kept beside it, so that a daemon configured for another shape can serve
it (models/serving.py) without a re-import. docs/int8.md holds the figures.

All kinds run on the fused FP32 graph (onnxruntime's BERT fusions) with the last layer
computed for the first token only where the head reads only that row (exact;
convert/graph.first_token_last_layer); that remainder of a few rows stays FP32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerank.convert import int8, int8_files, judge
from edgerank.convert.decision import Cascade, Decision, Figures, Point
from edgerank.engine import cascade as cascade_rule
from edgerank.engine.agreement import rank_agreement
from edgerank.models import serving
from edgerank.models.serving import RequestShape, ServingPlan
from edgerank.quality.fidelity import batch_gap
from edgerank.quality.scoring import GraphScorer

#: mean Spearman per group and share of groups whose FP32 top-1 stays top-1
FLOOR = {"spearman_mean": 0.99, "top1_kept": 0.97}
#: INT8 must serve at least this much faster than the FP32 graph to be worth its noise
MIN_SPEEDUP = serving.MIN_SPEEDUP
#: how many MatMuls (worst first) move one kind up at each step; then all of them
SCHEDULE = (2, 4, 8, 16)
#: the kinds each base climbs through; the first base is the default. ``mixed`` over
#: ``token`` (straight to FP32): covering more MatMuls a little carries over to unseen
#: text better than covering a few exactly (docs/int8.md).
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
    "name": "int8-ladder-v7",
    "first_token_last_layer": True,
    "quantized_ops": ["MatMul"],
}
FUSION = "onnxruntime.transformers bert (MultiHeadAttention, SkipLayerNorm, BiasGelu)"
PROBE_MAX_LENGTH = 256
CASCADE_RULE = cascade_rule.RULE  # what engine/cascade.py serves, as the manifest says it


@dataclass(frozen=True)
class Policy:
    """What an install accepts: the floor, when INT8 stops paying and at which request
    shape, and the user's opt-in to install below the floor (--allow-below-floor)."""

    floor: dict[str, float] | None = None  # None: FLOOR
    min_speedup: float | None = None  # None: MIN_SPEEDUP
    allow_below_floor: bool = False
    #: a file no u8 x s8 kernel can saturate (int8_files.build's ``bounded``); None: when
    #: this CPU's kernel can (the file is measured here, so it must be right here)
    portable: bool | None = None
    #: rescore the near-ties of the INT8 leader with the FP32 graph (kept beside the INT8
    #: file, so the entry takes its memory too); False: INT8 alone (--no-cascade)
    cascade: bool = True
    #: the request the speed is judged at (--request-shape); None: serving.DEFAULT_SHAPE
    request_shape: RequestShape | None = None


Progress = Callable[[str], None]


@dataclass(frozen=True)
class Evidence:
    """The held-out text a point is judged on: the probe, and probe-more for a figure
    within noise of the floor (with its language per probe group, for the pools)."""

    probe: list[tuple[str, list[str]]]
    more: list[tuple[str, list[str]]] | None = None
    probe_langs: list[str] | None = None

    @classmethod
    def shipped(cls) -> Evidence:
        from edgerank.quality import sets

        return cls(sets.shipped(sets.PROBE)[0], sets.shipped(sets.PROBE_MORE)[0],
                   sets.languages(sets.PROBE))  # fmt: skip


def meets(fid: dict[str, float], floor: dict[str, float] = FLOOR) -> bool:
    """Whether figures clear the floor as measured (a prebuilt file's one-off check)."""
    return judge.pooled_meets(fid, floor)


def sensitivities(
    prepared: Path, quantized: Path, names: list[str], tokenizer_json: Path,
    pairs: Sequence[tuple[str, str]], threads: int,
) -> dict[str, float]:  # fmt: skip
    """Each MatMul's own damage: RMS logit change when it alone runs INT8 (all else FP32)."""
    if not names:
        return {}
    path = quantized.with_suffix(".switch.onnx")
    int8._save(int8_files.switch_graph(prepared, quantized, names), path)
    sw = GraphScorer(path, tokenizer_json, threads, 128)
    rows = sw.encode(pairs)
    ones = np.ones(len(names), dtype=np.float32)
    ref = sw.run(rows, {"er_fp32": ones})
    out = {}
    for k, name in enumerate(names):
        mix = ones.copy()
        mix[k] = 0.0
        out[name] = float(np.sqrt(np.mean((sw.run(rows, {"er_fp32": mix}) - ref) ** 2)))
    sw.close()
    path.unlink(missing_ok=True)
    return out


def measure_pair(
    fp32: Path, int8_file: Path, tokenizer_json: Path, max_length: int, threads: int = 2
) -> dict[str, Any]:
    """A ready INT8 file against its FP32 original on the shipped probe (no back-off)."""
    from edgerank.hardware.probe import int8_kernel_here
    from edgerank.quality import sets

    probe, info = sets.shipped(sets.PROBE)
    ref_s = GraphScorer(fp32, tokenizer_json, threads, max_length)
    enc = [ref_s.encode([(q, d) for d in docs]) for q, docs in probe]
    ref = ref_s.score_groups(enc)
    fid = rank_agreement(ref, GraphScorer(int8_file, tokenizer_json, threads,
                                          max_length).score_groups(enc))  # fmt: skip
    return {
        "reference": "onnx fp32 (the publisher's)", "int8_kernel": int8_kernel_here(),
        "probe": info, **Figures.of(fid).to_dict(),
        "floor": dict(FLOOR), "meets_floor": meets(fid),
    }  # fmt: skip


# ------------------------------------------------------------------------------ loop


class _Judge:
    """Everything measured once per install that every point is judged against: the FP32
    graph's scores on the probe (and probe-more, when needed), the calibration groups and
    the pools, and the one-thread timer."""

    def __init__(self, prepared: Path, tok: Path, evidence: Evidence, calibration, *,
                 threads: int, max_length: int, cascade: bool):  # fmt: skip
        self.tok, self.threads, self.max_length = tok, threads, max_length
        self.ref_s = GraphScorer(prepared, tok, threads, max_length)
        self.enc = self.encode(evidence.probe)
        self.ref = self.ref_s.score_groups(self.enc)
        self.timer = judge.Timer(GraphScorer(prepared, tok, 1, max_length), self.enc)
        self.evidence = evidence
        self._more: tuple[list, list] | None = None
        self.cal_enc = self.encode(calibration) if cascade else []
        self.cal_ref = self.ref_s.score_groups(self.cal_enc)
        pools = judge.pools(evidence.probe, evidence.probe_langs) if cascade else []
        self.pool_enc = self.encode(pools)
        self.pool_ref = self.ref_s.score_groups(self.pool_enc)

    def encode(self, groups) -> list:
        return [self.ref_s.encode([(q, d) for d in docs]) for q, docs in groups]

    def more(self) -> tuple[list, list]:
        """probe-more, encoded and scored by the FP32 graph (once, when first needed)."""
        if self._more is None:
            enc = self.encode(self.evidence.more or [])
            self._more = (enc, self.ref_s.score_groups(enc))
        return self._more


def _figures(j: _Judge, cand: GraphScorer, got, floor, margin: float | None):
    """``got`` (the probe's INT8 scores) against the floor, as served (with the cascade
    when ``margin`` is given): (figures, meets); a figure within noise of the floor is
    decided on the probe and probe-more pooled."""
    from edgerank.engine.cascade import with_fp32_head

    def served(ref, got_):
        return got_ if margin is None else [with_fp32_head(g, r, margin)[0]
                                            for r, g in zip(ref, got_, strict=True)]  # fmt: skip

    fid = rank_agreement(j.ref, served(j.ref, got))
    verdict = judge.against(fid, floor)
    if verdict != "near" or not j.evidence.more:
        return Figures.of(fid), verdict == "meets"
    enc, ref = j.more()
    pooled = rank_agreement(j.ref + ref, served(j.ref + ref, got + cand.score_groups(enc)))
    return Figures.of(pooled, "probe + probe-more"), judge.pooled_meets(pooled, floor)


def quantize_accurate(
    fp32_onnx: Path, work: Path, tokenizer_json: Path, *,
    calibration: list[tuple[str, list[str]]], evidence: Evidence | None = None,
    probe: list[tuple[str, list[str]]] | None = None, policy: Policy | None = None,
    threads: int = 2, max_length: int = PROBE_MAX_LENGTH, window: int | None = None,
    base: str = BASES[0], sensitivity_pairs: int = 32, progress: Progress = lambda msg: None,
) -> Decision:  # fmt: skip
    """Find the fastest INT8 file above the floor at the policy's request shape.

    ``evidence``: the held-out sets (default: the shipped probe and probe-more; ``probe``
    alone replaces the probe, with no second set). ``window``: the entry's max length
    (rows up to it are timed; default ``max_length``). The caller decides what a miss
    means (refuse, or install with --allow-below-floor)."""
    policy = policy or Policy()
    if evidence is None:
        evidence = Evidence(probe) if probe is not None else Evidence.shipped()
    floor = dict(FLOOR if policy.floor is None else policy.floor)
    cutoff = MIN_SPEEDUP if policy.min_speedup is None else policy.min_speedup
    shape = policy.request_shape or serving.DEFAULT_SHAPE
    window = window or max_length
    cascade, ladder = policy.cascade, LADDERS[base]
    bounded = policy.portable
    if bounded is None:
        from edgerank.hardware.facts import SATURATING_INT8
        from edgerank.hardware.probe import int8_kernel_here

        bounded = int8_kernel_here() in SATURATING_INT8
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    prep = int8_files.prepare(fp32_onnx, work)
    fixed = dict.fromkeys(prep.row_matmuls, "fp32")
    j = _Judge(prep.path, tokenizer_json, evidence, calibration, threads=threads,
               max_length=max_length, cascade=cascade)  # fmt: skip
    cal_pairs = [(q, d) for q, docs in calibration for d in docs[:1]]
    sens_pairs = cal_pairs[:: max(1, len(cal_pairs) // sensitivity_pairs)][:sensitivity_pairs]
    names = [n for n in int8_files.matmul_names(prep.path) if n not in fixed]
    source, smoothing = prep.path, None
    if "token" in ladder:  # per-token scales still share one step across a token's channels
        source = work / "model.smooth.fp32.onnx"
        smoothing = int8.smoothed_fp32(
            prep.path, source, tokenizer_json.parent, cal_pairs, SMOOTH_ALPHA
        )
    fp32_mib = judge.file_mib(prep.path)
    lengths = sorted({min(n, window) for n in (shape.min_tokens, shape.max_tokens)})
    frontier: list[Point] = []
    rounds: dict[Path, dict] = {}
    sens: dict[str, dict[str, float]] = {}

    def point(kinds: dict[str, str]) -> Point:
        moved = {k: sorted(n for n, v in kinds.items() if v == k) for k in ladder[1:]}
        tag = "-".join(f"{k}{len(v)}" for k, v in moved.items())
        path = int8_files.build(source, work / f"model.int8.{tag}.onnx", {**fixed, **kinds},
                                ladder[0], bounded=bounded)  # fmt: skip
        cand = GraphScorer(path, tokenizer_json, threads, max_length)
        got = cand.score_groups(j.enc)
        if cascade:  # judged as served; INT8 alone's figures on the probe beside them
            alone, ok = Figures.of(rank_agreement(j.ref, got)), False
        else:
            alone, ok = _figures(j, cand, got, floor, None)
        casc, rescored = None, None
        if cascade:
            cal_got = cand.score_groups(j.cal_enc)
            error = max(
                float(np.max(np.abs(a - b))) for a, b in zip(cal_got, j.cal_ref, strict=True)
            )
            figs, ok = _figures(j, cand, got, floor, 2 * error)
            counted = judge.rescored_counts(j.ref, got, 2 * error)
            share = sum(counted) / max(1, sum(len(g) for g in got))
            casc = Cascade(2 * error, error, len(j.cal_enc), figs, share)
            rescored = judge.heads(j.pool_ref, cand.score_groups(j.pool_enc), 2 * error)
        cand.close()
        int8_mib = judge.resident_mib(path, prep.path, cascade)

        def decided(prof) -> bool:
            s = prof.at(shape)
            return s.low >= cutoff or s.high < cutoff

        timed = GraphScorer(path, tokenizer_json, 1, max_length)
        prof, rounds[path] = judge.measured_profile(j.timer, timed, lengths, rescored, decided)
        timed.close()
        verdict = serving.judge(prof, shape, int8_mib=int8_mib, fp32_mib=fp32_mib, cutoff=cutoff)
        p = Point(path, dict(kinds), {k: len(v) for k, v in moved.items()}, alone, casc, prof,
                  verdict, ok)  # fmt: skip
        progress(p.line(ladder[0]))
        frontier.append(p)
        return p

    kinds: dict[str, str] = {}
    chosen = None
    last = point(kinds)
    for rung in ladder[1:]:
        if last.meets_floor and last.pays:
            chosen = last
            break
        if not last.pays:
            break  # INT8 no longer pays: FP32 is the faithful choice
        progress(f"measuring each MatMul's sensitivity before moving the worst to {rung}")
        current = [n for n in names if kinds.get(n, ladder[0]) != rung]
        sens[rung] = sensitivities(source, last.file, current, tokenizer_json, sens_pairs, threads)
        order = sorted(current, key=lambda n: -sens[rung][n])
        for count in (*[c for c in SCHEDULE if c < len(order)], len(order)):
            last = point({**kinds, **dict.fromkeys(order[:count], rung)})
            if last.meets_floor or not last.pays:
                break
        kinds = dict(last.kinds)
    else:
        if last.meets_floor and last.pays:
            chosen = last
    best = max(frontier, key=lambda p: (p.judged.spearman_mean, p.judged.top1_kept))
    common = dict(reference=prep.path, frontier=tuple(frontier), floor=floor,
                  cascade_rule=CASCADE_RULE)  # fmt: skip

    def plan(p: Point) -> ServingPlan:
        """``p`` as the entry keeps it: its profile timed over every row length a daemon
        may serve (up to the window), for the loader's re-judgement at another shape."""
        timed = GraphScorer(p.file, tokenizer_json, 1, max_length)
        more = sorted({n for n in judge.PROFILE_LENGTHS if n <= window} | set(lengths))
        prof, _ = judge.measured_profile(j.timer, timed, more, p.profile.rescored,
                                         lambda _p: True, rounds[p.file])  # fmt: skip
        timed.close()
        return ServingPlan(
            serving.INT8_FILE, serving.FP32_FILE,
            p.cascade.recipe(CASCADE_RULE) if p.cascade else None,
            judge.resident_mib(p.file, prep.path, p.cascade is not None), fp32_mib, prof,
            cutoff, p.verdict,
        )  # fmt: skip

    def recipe(p: Point) -> dict[str, Any]:
        return _recipe(p, ladder, smoothing, bounded, fixed, names, sens, prep, shape)

    def seconds() -> float:
        return round(time.perf_counter() - t_start, 1)

    if chosen is None and not frontier[-1].pays:
        kept = last if last.meets_floor else None
        why = f"slower than {cutoff}x ONNX FP32 at {shape} before the floor held"
        progress(f"INT8 stops paying at {shape} before the floor holds: FP32")
        reasons = [last.verdict.reason, why]
        if kept is not None:
            reasons.append("the INT8 point that met the floor stays beside the FP32 graph, "
                           "for a daemon serving another request shape")  # fmt: skip
        return Decision(
            "fp32", prep.path, meets_floor=True, point=kept,
            plan=plan(kept) if kept else None, recipe=recipe(kept or best),
            reasons=tuple(reasons), rejected=why, seconds=seconds(), **common,
        )  # fmt: skip
    pick = chosen or best
    gap = batch_gap(GraphScorer(pick.file, tokenizer_json, threads, max_length).backend,
                    evidence.probe)  # fmt: skip
    reasons = [pick.verdict.reason]
    if chosen is None:
        reasons.append(
            f"no INT8 point met the floor at {shape}; the most faithful is {pick.file.name}"
        )
    return Decision(
        "int8", pick.file, meets_floor=chosen is not None, point=pick,
        plan=plan(pick) if chosen else None, recipe=recipe(pick), reasons=tuple(reasons),
        batch_gap=gap, seconds=seconds(), **common,
    )  # fmt: skip


def _recipe(p: Point, ladder, smoothing, bounded, fixed, names, sens, prep, shape) -> dict:
    """How the INT8 file the entry holds was made (the frontier's most faithful point when
    none is kept): kinds, smoothing, the fusions or why they failed, and the judge."""
    return {
        **RECIPE,
        "fuse": FUSION if prep.unfused is None else None,
        **({"unfused": prep.unfused} if prep.unfused else {}),
        "base": {k: int8_files.KIND_DOC[k] for k in ladder},
        "smoothing": smoothing,
        "saturation_safe": bounded,
        "matmul_kinds": p.kinds,
        "fp32_matmuls": sorted(n for n, k in p.kinds.items() if k == "fp32"),
        "first_token_fp32": sorted(fixed),
        "matmuls": len(names),
        "matmuls_int8": len(names) - sum(k == "fp32" for k in p.kinds.values()),
        "sensitivity": {
            rung: {k: round(v, 5) for k, v in sorted(s.items(), key=lambda x: -x[1])}
            for rung, s in sens.items()
        },
        "request_shape": str(shape),
        "speed_judge": judge.METHOD,
    }
