"""Issue 14, item 5: pairs/s per batch shape (token budget x pair cap), per backend and thread
count, each as a ratio to the 8192-token uncapped default timed in the same rounds.

    python -m bench.batch_shapes MODEL [--fp32 PATH] [--threads 1 2] [--rounds 7] [--json]

MODEL is an ONNX model directory or a store entry's name ($EDGERANK_HOME). The FP32 row is
--fp32 (an ONNX graph with tokenizer.json beside it or one directory up), else the graph the
entry keeps beside its INT8 file (recipe reference_file), else left out. The request and the
grid are `edgerank probe --calibrate`'s (edgerank/quality/shapes.py): natural prose from the
probe set, 16-250 tokens, cut by each shape with plan_batches as the daemon's batcher does,
shapes interleaved round by round (medians). The machine is shared: the spread (min/max over
rounds, relative to the median) stands beside each figure, and a ratio compares shapes of one
backend at one thread count only.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from edgerank.backends.base import Backend  # noqa: E402
from edgerank.backends.onnx import OnnxBackend  # noqa: E402
from edgerank.backends.registry import open_reference  # noqa: E402
from edgerank.install.store import ModelStore  # noqa: E402
from edgerank.models.manifest import MANIFEST, Manifest  # noqa: E402
from edgerank.planning.measured import shape_key  # noqa: E402
from edgerank.quality import bench as b  # noqa: E402
from edgerank.quality import shapes  # noqa: E402

DEFAULT = shape_key(shapes.BUDGETS[0], None)


def openers(model: str, fp32: Path | None) -> dict[str, Callable[[int], Backend]]:
    """row name -> open at n threads: the entry, then its FP32 graph when there is one."""
    entry = Path(model) if (Path(model) / MANIFEST).is_file() else ModelStore().path(model, "onnx")
    m = Manifest.read(entry)
    out: dict[str, Callable[[int], Backend]] = {
        f"onnx-{m.precision}": lambda t: OnnxBackend.from_dir(entry, threads=t)
    }
    if fp32 is not None:
        out["onnx-fp32"] = lambda t: OnnxBackend.from_file(fp32, m.max_length, threads=t)
    elif m.precision != "fp32" and m.recipe.get("reference_file"):
        out["onnx-fp32"] = lambda t: open_reference(entry, threads=t)
    return out


def measure(opener: Callable[[int], Backend], threads: int, rounds: int, passages: int) -> list:
    be = opener(threads)
    try:
        items = shapes.request(be, passages)
        timed = shapes.timings(be, items, shapes.grid(), rounds=rounds, warmup=1)
    finally:
        be.close()
    base = timed[DEFAULT].median
    rows = []
    for key, t in timed.items():
        rows.append(
            {
                "shape": key,
                "pairs_per_s": round(t.per_second, 1),
                f"x_{DEFAULT}": round(base / t.median, 3),
                "spread": f"{min(t.seconds) / t.median:.2f}-{max(t.seconds) / t.median:.2f}",
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="ONNX model directory or store entry name")
    ap.add_argument("--fp32", type=Path, help="the model's FP32 ONNX graph (optional)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--passages", type=int, default=shapes.PASSAGES)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    args = ap.parse_args()
    report: dict[str, list] = {}
    for t in args.threads:
        for name, opener in openers(args.model, args.fp32).items():
            rows = measure(opener, t, args.rounds, args.passages)
            report[f"{name}@{t}"] = rows
            if not args.json:
                print(f"\n{name}, {t} thread(s), {args.passages} passages:", flush=True)
                print(b.format_table(rows), flush=True)
    if args.json:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
