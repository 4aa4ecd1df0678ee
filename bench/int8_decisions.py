"""The same import, several times: does the install decide the same way every time?

    python -m bench.int8_decisions --model faq-head --imports 5 [--request-shape 32x128-256]
    stress-ng --cpu 2 --timeout 3600 & python -m bench.int8_decisions ...   # a busy neighbour

Imports one checkpoint of edgerank/testing/minilm_rerankers.py (`edgerank import`'s code
path, default policy; from its FP32 ONNX export unless ``--route checkpoint``)
``--imports`` times into fresh stores, one after another, and prints
per import: what it installed, the verdict at the request shape (speed with its interval,
in units of the FP32 graph), INT8 alone's ratio at that shape, the floor figures each point
was judged on (and on which evidence), the wall and CPU seconds, and the machine's load
average over the import (the neighbours' share). The last line says whether every import
installed the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from edgerank.convert.backoff import Policy
from edgerank.install.store import ModelStore
from edgerank.models.manifest import Manifest
from edgerank.models.serving import RequestShape
from edgerank.testing import minilm_rerankers as mr


def one(ckpt: Path, home: Path, name: str, policy: Policy) -> dict:
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    d = ModelStore(home).import_onnx(name, ckpt, policy=policy)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = Manifest.read(d)
    points = []
    for p in m.recipe["frontier"]:
        judged = p.get("cascade") or p
        points.append({
            "moved": {k: v for k, v in p.items() if k.endswith("_matmuls")},
            "int8_alone_x": p["speed_vs_onnx_fp32"], "int8_alone_interval": p["speed_interval"],
            "served": p["verdict"]["speed"], "serves": p["verdict"]["serves"],
            "spearman": judged["spearman_mean"], "top1": judged["top1_kept"],
            "evidence": judged.get("evidence", "probe"), "meets_floor": p["meets_floor"],
        })  # fmt: skip
    return {
        "installed": m.precision, "model_file": m.model_file,
        "matmul_kinds": m.recipe.get("matmul_kinds"), "reasons": m.recipe.get("reasons"),
        "points": points, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="faq-head", choices=sorted(mr.RECIPES))
    ap.add_argument("--imports", type=int, default=5)
    ap.add_argument("--request-shape", help="as `edgerank import --request-shape`")
    ap.add_argument("--route", choices=["onnx", "checkpoint"], default="onnx",
                    help="the FP32 ONNX export (as pull takes it) or the checkpoint")  # fmt: skip
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgerank-int8-decisions"))
    args = ap.parse_args()
    ckpt = mr.build(args.model, args.workdir / args.model / "ckpt")
    if args.route == "onnx":  # exported once: every import then starts from the same graph
        from edgerank.convert.onnx_export import export_onnx

        graph = args.workdir / args.model / "fp32-onnx"
        if not (graph / "model.onnx").exists():
            export_onnx(ckpt, graph)
        ckpt = graph
    shape = RequestShape.parse(args.request_shape) if args.request_shape else None
    rows = []
    for k in range(args.imports):
        home = args.workdir / args.model / f"home{k}"
        if home.exists():
            import shutil

            shutil.rmtree(home)
        rows.append(one(ckpt, home, args.model, Policy(request_shape=shape)))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| import | installed | verdict at shape (interval) | INT8 alone | Spearman / top-1 "
          "(evidence) | wall / CPU s | load avg |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for k, r in enumerate(rows, 1):
        last = r["points"][-1]
        s = last["served"]
        kinds = {}
        for v in (r["matmul_kinds"] or {}).values():
            kinds[v] = kinds.get(v, 0) + 1
        print(
            f"| {k} | {r['installed']} {kinds or ''} | {s['value']:.2f}x ({s['low']:.2f}-"
            f"{s['high']:.2f}) -> {last['serves']} | {last['int8_alone_x']:.2f}x | "
            f"{last['spearman']:.4f} / {last['top1']:.1%} ({last['evidence']}) | "
            f"{r['wall_s']} / {r['cpu_s']} | {r['load_avg_1min']} |"
        )
    same = len({(r["installed"], json.dumps(r["matmul_kinds"], sort_keys=True)) for r in rows})
    print(f"\nthe same file every time: {'yes' if same == 1 else f'no ({same} different)'}")


if __name__ == "__main__":
    main()
