"""The back-off frontier of each INT8 base on one test reranker, measured in one process.

    python bench/int8_frontier.py [--model faq-head] [--bases mixed block dynamic-mixed]

For each base of convert/backoff.py (its ladder of MatMul kinds, convert/int8_files.py),
the accuracy-aware loop runs on the shipped probe with timing not allowed to stop it, and
prints every point: MatMuls moved up to each kind, mean/min Spearman and top-1 kept against
the FP32 graph, speed vs that graph (16 probe pairs, interleaved rounds; the machine is
shared, so read the speeds as rough).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgerank.convert import backoff  # noqa: E402
from edgerank.convert.onnx_export import export_onnx  # noqa: E402
from edgerank.quality import sets  # noqa: E402
from tests.support import minilm_rerankers as mr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="faq-head", choices=sorted(mr.RECIPES))
    ap.add_argument("--bases", nargs="+", default=list(backoff.BASES))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgerank-int8-frontier"))
    args = ap.parse_args()
    ckpt = mr.build(args.model, args.workdir / args.model / "ckpt")
    fp32 = args.workdir / args.model / "fp32" / "model.onnx"
    if not fp32.exists():
        export_onnx(ckpt, fp32.parent)
    probe, cal = sets.shipped(sets.PROBE)[0], sets.shipped(sets.CALIBRATION)[0]
    for base in args.bases:
        t0 = time.perf_counter()
        got = backoff.quantize_accurate(
            fp32, args.workdir / args.model / base, ckpt / "tokenizer.json",
            probe=probe, calibration=cal, base=base, policy=backoff.Policy(min_speedup=0.0),
            progress=lambda m, b=base: print(f"[{b}] {m}", flush=True),
        )  # fmt: skip
        print(json.dumps({"base": base, "seconds": round(time.perf_counter() - t0, 1),
                          "frontier": [p.frontier_row() for p in got.frontier]}))  # fmt: skip


if __name__ == "__main__":
    main()
