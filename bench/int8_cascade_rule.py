"""Which rescoring rule the cascade should serve: the 2e head, or the leader first (served
since recipe v6's cascade entries; this replays both on the same scores).

    python -m bench.int8_cascade_rule [--workdir DIR] [--models gloss-head admin-e2e]

DIR is bench/int8_acceptance.py's workdir after a run with the cascade on (each model's
installed entry, INT8 file and FP32 reference, and its checkpoint). Both rules rest on the
same bound, no score moves by more than e = margin / 2 between the files:

- ``2e`` (what engine/cascade.py served first): rescore every passage within 2e of the INT8
  leader, FP32's winner w among them;
- ``leader-first`` (what engine/cascade.py serves now): rescore the INT8 leader, then, in
  INT8 order, every passage whose INT8 score is at least the best FP32 score so far minus
  e. w satisfies int8(w) >= fp32(w) - e >= best - e, so it is never skipped, and the
  threshold rises as FP32 scores come in: the head is 0-2e wide instead of always 2e. The
  price is rounds of FP32 calls in a row, and fewer FP32 scores in the answer, so less of
  FP32's order below the top.

For the 139 held-out Debian FAQ groups (fidelity vs torch FP32 and the share rescored) and
the s32 / s100 speed sets (share only), it replays both rules on the installed files' own
scores: no timing, so the machine's load does not matter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.int8_acceptance import speed_sets  # noqa: E402
from edgerank.engine.agreement import rank_agreement  # noqa: E402
from edgerank.engine.cascade import head, with_fp32_head  # noqa: E402
from edgerank.engine.rank import score_documents  # noqa: E402
from edgerank.startup.load import load  # noqa: E402
from edgerank.testing import minilm_rerankers as mr  # noqa: E402


def whole_head(int8: np.ndarray, fp32: np.ndarray, margin: float) -> tuple[np.ndarray, int]:
    """The first rule: every passage within ``margin`` of the INT8 leader rescored."""
    h = head(int8, margin)
    out = np.array(int8, copy=True)
    out[h] = fp32[h]
    return out, len(h)


def first_point(name: str, work: Path):
    """Without an installed entry: the file an import tries first (all ``token``, built as
    bench/int8_shapes.py builds it) with the cascade the import would give it, margin = 2 x
    the largest |INT8 - FP32| on the shipped calibration groups."""
    from bench.int8_shapes import edgerank_file
    from edgerank.backends.onnx import OnnxBackend
    from edgerank.engine.cascade import Cascade
    from edgerank.quality import sets

    ckpt = mr.build(name, work / "ckpt")
    if not (work / "fp32" / "model.onnx").exists():
        from edgerank.convert.onnx_export import export_onnx

        export_onnx(ckpt, work / "fp32")
    file, ref = edgerank_file(ckpt, work)
    int8 = OnnxBackend.from_file(file, 512, threads=2, precision="int8")
    fp32 = OnnxBackend.from_file(ref, 512, threads=2)
    cal, _ = sets.shipped(sets.CALIBRATION)
    err = max(
        float(np.max(np.abs(score_documents(int8, q, ds).raw - score_documents(fp32, q, ds).raw)))
        for q, ds in cal
    )
    return SimpleNamespace(backend=int8, cascade=Cascade(fp32, 2 * err), close=lambda: None)


def run_model(name: str, work: Path, build: bool = False) -> None:
    if build:
        served = first_point(name, work)
    else:
        served = load(str(work / "home" / "models" / name / "onnx"), threads=2)
    if served.cascade is None:
        sys.exit(f"{name}: the installed entry has no cascade (run int8_acceptance without it)")
    c = served.cascade
    torch_ref = mr.torch_scorer(work / "ckpt")
    held = mr.heldout_groups()
    extra = list(speed_sets(work / "ckpt" / "tokenizer.json").items())
    ref, got = [], {"int8 alone": [], "2e": [], "leader-first": []}
    shares: dict[str, list[float]] = {"2e": [], "leader-first": []}
    for i, (q, docs) in enumerate(held + [g for _, g in extra]):
        int8 = score_documents(served.backend, q, docs).raw.astype(np.float64)
        fp32 = score_documents(c.reference, q, docs).raw.astype(np.float64)
        rules = {
            "2e": whole_head(int8, fp32, c.margin),
            "leader-first": with_fp32_head(int8, fp32, c.margin),
        }
        for rule, (_, n) in rules.items():
            shares[rule].append(n / len(docs))
        if i < len(held):
            ref.append(np.asarray(torch_ref([(q, d) for d in docs]), dtype=np.float64))
            got["int8 alone"].append(int8)
            for rule, (scores, _) in rules.items():
                got[rule].append(scores)
    served.close()
    n = len(held)
    print(f"\n{name}: margin {c.margin:.3f}")
    print("| rule | Spearman mean | top-1 kept | rescored: held-out / " +
          " / ".join(k for k, _ in extra) + " |")  # fmt: skip
    print("|---|---|---|---|")
    for rule, scores in got.items():
        f = rank_agreement(ref, scores)
        cells = "-"
        if rule in shares:
            s = shares[rule]
            cells = " / ".join(f"{x:.1%}" for x in [float(np.mean(s[:n])), *s[n:]])
        print(f"| {rule} | {f['spearman_mean']:.4f} | {f['top1_kept']:.1%} | {cells} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(mr.RECIPES))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgerank-int8-acceptance"))
    ap.add_argument(
        "--build", action="store_true",
        help="no installed entries: build the first point an import tries and its cascade",
    )  # fmt: skip
    args = ap.parse_args()
    for name in args.models:
        run_model(name, args.workdir / name, args.build)


if __name__ == "__main__":
    main()
