#!/usr/bin/env python3
"""The memory a pod serving MODEL needs, from `edgerank models --json`, as Kubernetes
resources: request = the planner's need (weights at the precision + activations of one
full batch + runtime overhead, the figures `edgerank probe --explain` prints), limit = that
plus 30% headroom (allocator slack, the tokenizer's buffers, a request being parsed while
a batch runs). CPU: one core requested (the HPA's 100%), no CPU limit (throttling a
latency-bound process only adds tail latency).

    python deploy/k8s/resources.py ms-marco-minilm-l6 --precision int8 --max-batch-tokens 8192

Prints the `resources:` block for deploy/k8s/base/deployment.yaml; tests/deploy/test_k8s.py
checks that the base's figures are this script's for the model and budget it sets. With
--systemd, the unit's MemoryMax= instead (the limit): deploy/systemd/check.sh sets it so.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys

HEADROOM = 1.3
ROUND_MIB = 32


def catalog_rows(edgerank: list[str]) -> list[dict]:
    out = subprocess.run(
        [*edgerank, "models", "--json"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def resources(row: dict, precision: str, max_batch_tokens: int) -> dict:
    # the planner's own memory model (edgerank/planning/memory.py), so the two never disagree
    from edgerank.planning.memory import RUNTIME_OVERHEAD_MIB, activation_kib_per_token

    backend = "biencoder" if row["kind"] == "bi-encoder" else "onnx"
    if precision not in row["memory_mib"]:
        have = ", ".join(row["memory_mib"])
        sys.exit(f"resources.py: {row['name']} has no {precision} figure ({have})")
    if "hidden" not in row:
        sys.exit("resources.py: this edgerank's `models --json` has no hidden size (too old)")
    weights = row["memory_mib"][precision]
    per_token = activation_kib_per_token(row.get("hidden"))
    if precision in ("fp16", "bf16"):
        per_token /= 2
    activations = math.ceil(per_token * max_batch_tokens / 1024)
    need = weights + activations + RUNTIME_OVERHEAD_MIB[backend]

    def up(mib: float) -> str:
        return f"{math.ceil(mib / ROUND_MIB) * ROUND_MIB}Mi"

    return {
        "requests": {"cpu": "1", "memory": up(need)},
        "limits": {"memory": up(need * HEADROOM)},
        "_breakdown": f"weights {weights} + activations {activations} at {max_batch_tokens} "
        f"tokens + runtime {RUNTIME_OVERHEAD_MIB[backend]} = {need} MiB",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--edgerank", default=shutil.which("edgerank") or "edgerank")
    ap.add_argument("--systemd", action="store_true", help="print the unit's MemoryMax= line")
    args = ap.parse_args()
    rows = {r["name"]: r for r in catalog_rows([args.edgerank])}
    if args.model not in rows:
        sys.exit(f"resources.py: {args.model!r} is not in the catalog ({', '.join(rows)})")
    res = resources(rows[args.model], args.precision, args.max_batch_tokens)
    print(f"# {res.pop('_breakdown')}")
    if args.systemd:
        print(f"MemoryMax={res['limits']['memory'].removesuffix('Mi')}M")
        return
    print("resources:")
    for kind, values in res.items():
        print(f"  {kind}:")
        for k, v in values.items():
            print(f'    {k}: "{v}"' if k == "cpu" else f"    {k}: {v}")


if __name__ == "__main__":
    main()
