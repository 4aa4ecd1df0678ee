"""Where each INT8 kind's time goes, per operator, on the same fused graph.

    python bench/int8_ops.py --workdir DIR [--models faq-head] [--threads 1] [--runs 20]

Issue 14 asks the installed file to run as fast as onnxruntime's dynamic INT8; measured,
it runs 1.5-1.8x ONNX FP32 where the dynamic file runs 2.0-2.4x with VNNI, and 1.2-1.4x
against 1.4-1.7x on AVX2 (README, "Speed per ISA"). This says what the gap is made of.
For one test reranker it builds, from the graph every install starts from
(convert/int8_files.prepare_fp32: fused, first-token last layer), each kind over all
MatMuls (``dynamic``: per-tensor activations, one fused MLAS op; ``token``: per-token
activations behind SmoothQuant; ``block``: MatMulNBits), runs the s32 and s100 sets of
bench/int8_acceptance.py with onnxruntime's profiler on, and sums the kernel time per
operator type: the GEMMs themselves, the ops that quantize activations (row min/max,
centring, QuantizeLinear) and those that apply the scales back (Mul/Add on the output).

DIR is bench/int8_cascade.py's workdir (its ``loop`` holds the prepared and smoothed graphs).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.int8_acceptance import speed_sets  # noqa: E402
from edgerank.convert import int8_files  # noqa: E402
from edgerank.quality.scoring import Scorer  # noqa: E402

GEMM = {"MatMul", "FusedMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits"}


def profile(path: Path, tok: Path, threads: int, rows, runs: int) -> dict[str, float]:
    """Milliseconds per run and operator type, onnxruntime's own kernel timings."""
    import onnxruntime as ort

    from edgerank.backends.onnx import session_options

    s = Scorer(path, tok, threads, 512)
    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(path.with_suffix(""))
    s.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    s.run(rows, batch=len(rows))  # warm-up, also profiled: subtracted below
    for _ in range(runs):
        s.run(rows, batch=len(rows))
    trace = json.loads(Path(s.sess.end_profiling()).read_text())
    per_op: dict[str, float] = collections.defaultdict(float)
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] += ev["dur"] / 1000 / (runs + 1)
    return dict(per_op)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=["faq-head"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    for name in args.models:
        work = args.workdir / name
        loop, tok = work / "loop", work / "ckpt" / "tokenizer.json"
        prepared, smooth = loop / "model.fp32.onnx", loop / "model.smooth.fp32.onnx"
        files = {"fp32": prepared}
        for kind, src in (("dynamic", prepared), ("token", smooth), ("block", prepared)):
            files[kind] = int8_files.build(src, work / f"ops.{kind}.onnx", {}, kind)
        sets = speed_sets(tok)
        for sname, (q, docs) in sets.items():
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


if __name__ == "__main__":
    main()
