"""Where each INT8 kind's time goes, per operator, on the same fused graph.

    python -m bench.int8_ops --workdir DIR [--models faq-head] [--threads 1] [--runs 20]
                             [--heldout]

Issue 14 asks the installed file to run as fast as onnxruntime's dynamic INT8; it does
not (README, "Speed per ISA"), and this says what the gap is made of.
For one test reranker it builds, from the graph every install starts from
(convert/int8_files.prepare_fp32: fused, first-token last layer), each kind over all
MatMuls (``dynamic``: per-tensor activations, one fused MLAS op; ``token``: per-token
activations behind SmoothQuant; ``block``: MatMulNBits), runs the s32 and s100 sets of
bench/int8_acceptance.py with onnxruntime's profiler on, and sums the kernel time per
operator type: the GEMMs themselves, the ops that quantize activations (row min/max, the
scale and zero point, QuantizeLinear) and those that apply them back (Mul/Add on the output).

``--heldout`` also says what each kind buys: Spearman and top-1 kept against the FP32
graph on the 139 held-out groups of bench/int8_acceptance.py, each file built as an import
on this CPU builds it (``bounded`` where the int8 kernel saturates; ``dynamic`` as the
peers ship it, unbounded), and the whole-graph speed vs FP32 from the profiled runs.

DIR is bench/int8_acceptance.py's or bench/int8_cascade.py's workdir (the checkpoint and
its export); the prepared and smoothed graphs are made in its ``loop`` where absent, as the
install makes them.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from bench.int8_acceptance import speed_sets  # noqa: E402
from edgerank.convert import backoff, int8, int8_files  # noqa: E402
from edgerank.engine.agreement import rank_agreement  # noqa: E402
from edgerank.hardware.facts import SATURATING_INT8  # noqa: E402
from edgerank.hardware.probe import int8_kernel_here  # noqa: E402
from edgerank.quality import sets  # noqa: E402
from edgerank.quality.scoring import GraphScorer as Scorer  # noqa: E402
from edgerank.testing import minilm_rerankers as mr  # noqa: E402

GEMM = {"MatMul", "FusedMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits"}


def profile(path: Path, tok: Path, threads: int, rows, runs: int) -> dict[str, float]:
    """Milliseconds per run and operator type, onnxruntime's own kernel timings."""
    import onnxruntime as ort

    from edgerank.backends.onnx import session_options

    s = Scorer(path, tok, threads, 512)
    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    s.backend._session = sess  # the serving backend's batching, with profiling on
    s.backend.score(rows)  # warm-up, also profiled: subtracted below
    for _ in range(runs):
        s.backend.score(rows)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = collections.defaultdict(float)
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] += ev["dur"] / 1000 / (runs + 1)
    return dict(per_op)


def _prepare(work: Path, loop: Path, smooth: Path) -> None:
    """The fused graph and its SmoothQuant twin, as convert/backoff.quantize_accurate
    makes them (same calibration pairs and alpha)."""
    loop.mkdir(parents=True, exist_ok=True)
    prepared, _ = int8_files.prepare_fp32(work / "fp32" / "model.onnx", loop)
    cal, _ = sets.shipped(sets.CALIBRATION)
    pairs = [(q, d) for q, docs in cal for d in docs[:1]]
    int8.smoothed_fp32(prepared, smooth, work / "ckpt", pairs, backoff.SMOOTH_ALPHA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=["faq-head"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--heldout", action="store_true", help="also each kind's held-out fidelity")
    ap.add_argument("--kinds", nargs="*", default=["dynamic", "token", "block"])
    ap.add_argument("--sets", nargs="*", default=["s32", "s100"])
    args = ap.parse_args()
    saturates = int8_kernel_here() in SATURATING_INT8  # build as an import here would
    for name in args.models:
        work = args.workdir / name
        loop, tok = work / "loop", work / "ckpt" / "tokenizer.json"
        prepared, smooth = loop / "model.fp32.onnx", loop / "model.smooth.fp32.onnx"
        if not smooth.exists():
            _prepare(work, loop, smooth)
        files = {"fp32": prepared}
        for kind, src in (("dynamic", prepared), ("token", smooth), ("block", prepared)):
            if kind in args.kinds:
                bounded = saturates and kind != "dynamic"
                files[kind] = int8_files.build(
                    src, work / f"ops.{kind}.onnx", {}, kind, bounded=bounded
                )
        if args.heldout:
            _heldout(name, files, tok)
        for sname, (q, docs) in speed_sets(tok).items():
            if sname not in args.sets:
                continue
            rows = Scorer(prepared, tok, 1, 512).encode([(q, d) for d in docs])
            table = {k: profile(f, tok, args.threads, rows, args.runs) for k, f in files.items()}
            print(f"\n{name} {sname} @ {args.threads} thread(s): ms per run")
            ops = sorted({o for t in table.values() for o in t}, key=lambda o: -max(
                t.get(o, 0.0) for t in table.values()))  # fmt: skip
            print("| op | " + " | ".join(table) + " |")
            print("|---|" + "---|" * len(table))
            rows_out = [(o, lambda t, o=o: t.get(o, 0.0)) for o in ops] + [
                ("**GEMM**", lambda t: sum(v for o, v in t.items() if o in GEMM)),
                ("**rest**", lambda t: sum(v for o, v in t.items() if o not in GEMM)),
                ("**all**", lambda t: sum(t.values())),
            ]
            for label, value in rows_out:
                cells = " | ".join(f"{value(t):.2f}" for t in table.values())
                print(f"| {label} | {cells} |")
            base = sum(table["fp32"].values())
            print(
                "x FP32: "
                + ", ".join(f"{k} {base / sum(t.values()):.2f}" for k, t in table.items())
            )


def _heldout(name: str, files: dict[str, Path], tok: Path) -> None:
    """Each file's rank agreement with the FP32 graph on the held-out groups."""
    groups = mr.heldout_groups()
    ref_s = Scorer(files["fp32"], tok, 2, 512)
    enc = [ref_s.encode([(q, d) for d in docs]) for q, docs in groups]
    ref = ref_s.score_groups(enc)
    print(f"\n{name}: {len(groups)} held-out groups vs the FP32 graph")
    for kind, path in files.items():
        if kind != "fp32":
            fig = rank_agreement(ref, Scorer(path, tok, 2, 512).score_groups(enc))
            print(f"  {kind}: Spearman {fig['spearman_mean']:.4f} (min {fig['spearman_min']:.3f})"
                  f", top-1 kept {fig['top1_kept']:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
