"""What rescoring the near-tie head in FP32 would buy: held-out top-1, and its price.

    python -m bench.int8_cascade [--models faq-head gloss-head admin-e2e] [--workdir DIR]

bench/int8_noise.py shows why 8-bit activations keep FP32's top-1 in 95-97% of the 139
held-out groups, not reliably 97%: the misses are near-ties, and no 8-bit recipe's noise
is small enough for every near-tie of unseen text. A cascade does not need it to be:
score every passage with the INT8 file, then rescore in FP32 only the passages whose INT8
score lies within ``margin`` of the INT8 leader (nothing when the leader is alone there).
If no score moves by more than e between the files, FP32's winner w and the INT8 leader l
satisfy int8(w) >= fp32(w) - e >= fp32(l) - e >= int8(l) - 2e, so a margin of 2e always
holds w, and the rescored head then ranks as FP32 does.

e is taken from the calibration groups (edgerank/quality/data/calibration.jsonl, disjoint
from the probe and from the held-out set): their largest |INT8 - FP32| (``max``) or its
99th percentile (``p99``). For every point of the install's frontier (the accuracy-aware
loop, run into a kept workdir) this prints, against torch FP32 on the held-out groups:

- Spearman and top-1 kept, INT8 alone and with the cascade at each margin;
- the share of passages the cascade rescored there (groups of 8: rescoring two is 25%),
  and on the speed sets of bench/int8_acceptance.py (one query, 32 and 100 passages: the
  shape of a RAG request);
- the speed that share leaves, in units of ONNX FP32: 1 / (1/ratio + share), with
  ``ratio`` the frontier's own INT8 vs FP32 figure (FP32 rescoring of a share s of the
  pairs costs about s of an FP32 pass).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from bench.int8_acceptance import speed_sets  # noqa: E402
from edgerank.backends.onnx import OnnxBackend  # noqa: E402
from edgerank.convert import backoff  # noqa: E402
from edgerank.convert.onnx_export import export_onnx  # noqa: E402
from edgerank.engine.agreement import rank_agreement  # noqa: E402
from edgerank.engine.cascade import with_fp32_head  # noqa: E402
from edgerank.engine.rank import score_documents  # noqa: E402
from edgerank.quality import sets  # noqa: E402
from edgerank.testing import minilm_rerankers as mr  # noqa: E402


def run_model(name: str, work: Path, threads: int) -> dict:
    ckpt = mr.build(name, work / "ckpt")
    if not (work / "fp32" / "model.onnx").exists():
        export_onnx(ckpt, work / "fp32")
    cal, _ = sets.shipped(sets.CALIBRATION)
    probe, _ = sets.shipped(sets.PROBE)
    loop = work / "loop"
    loop.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ckpt / "tokenizer.json", loop / "tokenizer.json")  # OnnxBackend.from_file
    found = backoff.quantize_accurate(
        work / "fp32" / "model.onnx", loop, ckpt / "tokenizer.json",
        probe=probe, calibration=cal, threads=threads, progress=print,
    )  # fmt: skip
    torch_ref = mr.torch_scorer(ckpt)
    held = mr.heldout_groups()
    ref = [torch_ref([(q, d) for d in ds]) for q, ds in held]

    def scores(path: Path, groups) -> list[np.ndarray]:
        b = OnnxBackend.from_file(path, 512, threads=threads)
        try:
            return [score_documents(b, q, ds).raw.astype(np.float64) for q, ds in groups]
        finally:
            b.close()

    fp32_file = loop / "model.fp32.onnx"
    speed = list(speed_sets(ckpt / "tokenizer.json").values())
    fp_cal, fp_held, fp_speed = (
        scores(fp32_file, cal),
        scores(fp32_file, held),
        scores(fp32_file, speed),
    )
    out = {"model": name, "installed": found.recipe["matmul_kinds"], "points": []}
    for f, p in ((p.file, p.frontier_row()) for p in found.frontier):
        q_cal, q_held, q_speed = scores(f, cal), scores(f, held), scores(f, speed)
        err = np.abs(np.concatenate(q_cal) - np.concatenate(fp_cal))
        row = {
            "file": f.name, "speed_vs_onnx_fp32": p.get("speed_vs_onnx_fp32"),
            "calibration_error": {"max": float(err.max()), "p99": float(np.quantile(err, 0.99))},
            "alone": _fig(rank_agreement(ref, q_held)),
        }  # fmt: skip
        for rule, e in row["calibration_error"].items():
            m = 2 * e
            done = [with_fp32_head(a, b, m) for a, b in zip(q_held, fp_held, strict=True)]
            share = sum(n for _, n in done) / sum(len(a) for a in q_held)
            sp = [
                with_fp32_head(a, b, m)[1] / len(a) for a, b in zip(q_speed, fp_speed, strict=True)
            ]
            ratio = row["speed_vs_onnx_fp32"] or float("nan")
            row[f"cascade_{rule}"] = {
                "margin": round(m, 4),
                **_fig(rank_agreement(ref, [s for s, _ in done])),
                "share_heldout": round(share, 3),
                "share_s32": round(sp[0], 3), "share_s100": round(sp[1], 3),
                "speed_s32": round(1 / (1 / ratio + sp[0]), 2),
                "speed_s100": round(1 / (1 / ratio + sp[1]), 2),
            }  # fmt: skip
        out["points"].append(row)
        print(json.dumps(row), flush=True)
    return out


def _fig(f: dict) -> dict:
    return {k: round(f[k], 4) for k in ("spearman_mean", "spearman_min", "top1_kept")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(mr.RECIPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgerank-int8-cascade"))
    args = ap.parse_args()
    reports = [run_model(n, args.workdir / n, args.threads) for n in args.models]
    print("\n| model | point | x FP32 | alone Sp / top-1 | cascade | margin | Sp / top-1 | "
          "rescored held-out / s32 / s100 | x FP32 s32 / s100 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        for p in r["points"]:
            a = p["alone"]
            for rule in ("max", "p99"):
                c = p[f"cascade_{rule}"]
                print(
                    f"| {r['model']} | {p['file'][11:-5]} | {p['speed_vs_onnx_fp32']} | "
                    f"{a['spearman_mean']} / {a['top1_kept']:.1%} | {rule} | {c['margin']} | "
                    f"{c['spearman_mean']} / {c['top1_kept']:.1%} | "
                    f"{c['share_heldout']:.1%} / {c['share_s32']:.1%} / {c['share_s100']:.1%} | "
                    f"{c['speed_s32']} / {c['speed_s100']} |"
                )


if __name__ == "__main__":
    main()
