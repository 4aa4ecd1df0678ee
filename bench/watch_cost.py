"""What the fidelity watch costs: the daemon's CPU seconds per request with fidelity_sample
0 (off), 0.1 and 1.0, on the same requests, in the same run (issue 14, item 4).

    python -m bench.watch_cost [--requests 60] [--docs 20] [--threads 1]

Builds the real-weights MiniLM-L6 cross-encoder (edgerank/testing/minilm_ce.py), imports it as
INT8 ONNX and keeps its FP32 export beside it as the reference. Each daemon runs as a
subprocess; its CPU time (user + system, /proc/PID/stat) is read after the requests and
after the watch has drained its samples. Clients send one request at a time, so the watch
finds idle gaps between them, as it would on a lightly loaded box.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx  # noqa: E402

from edgerank.convert.backoff import Policy  # noqa: E402
from edgerank.convert.onnx_export import export_onnx  # noqa: E402
from edgerank.install.store import ModelStore  # noqa: E402
from edgerank.models.manifest import Manifest  # noqa: E402
from edgerank.testing import minilm_ce  # noqa: E402
from edgerank.testing.procs import cpu_s, free_port  # noqa: E402

#: seconds without a new fidelity sample after the last request: the watch has drained
DRAIN_S = 3.0


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def run(entry: Path, sample: float, groups, threads: int) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERANK_")}
    cmd = [sys.executable, "-m", "edgerank", "serve", "--model", str(entry), "--listen", "",
           "--http", f"127.0.0.1:{port}", "--threads", str(threads), "--log-level", "warning",
           "--fidelity-sample", str(sample)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as c:
            while True:
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            start = cpu_s(proc.pid)
            t0 = time.perf_counter()
            for query, docs in groups:
                assert c.post("/v2/rerank", json={"query": query, "documents": docs}).is_success
            wall = time.perf_counter() - t0
            # drained when the sample count holds still for DRAIN_S (seeded sampling takes
            # about sample x requests, not exactly); every run polls alike, so they pay alike
            last, since = -1.0, time.perf_counter()
            while time.perf_counter() - since < DRAIN_S:
                now = metric(c.get("/metrics").text, "edgerank_fidelity_samples")
                now = 0.0 if math.isnan(now) else now  # off: no gauge at all
                if now != last:
                    last, since = now, time.perf_counter()
                time.sleep(0.2)
            text = c.get("/metrics").text
            cpu = cpu_s(proc.pid) - start
    finally:
        proc.terminate()
        proc.wait(60)
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "samples": metric(text, "edgerank_fidelity_samples"),
        "spearman": metric(text, "edgerank_fidelity_spearman"),
        "top1": metric(text, "edgerank_fidelity_top1_agreement"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgerank-watch")
    args = ap.parse_args()
    ckpt = minilm_ce.build_minilm_cross_encoder(args.work / "minilm-ce")
    entry = args.work / "entry"
    if not (entry / "model.fp32.onnx").exists():
        # an INT8 entry whatever this box's speed says (the watch needs INT8 vs FP32)
        any_speed = Policy(min_speedup=0.0, allow_below_floor=True)
        installed = ModelStore(args.work / "home").import_onnx("minilm-ce", ckpt, policy=any_speed)
        shutil.rmtree(entry, ignore_errors=True)
        shutil.copytree(installed, entry)
        shutil.copy2(export_onnx(ckpt, args.work / "fp32"), entry / "model.fp32.onnx")
        m = Manifest.read(entry)
        m.recipe = {**m.recipe, "reference_file": "model.fp32.onnx"}
        m.files = {rel: {} for rel in (*m.files, "model.fp32.onnx")}
        m.write(entry)
    groups = minilm_ce.query_groups(args.requests, args.docs)
    rows = {s: run(entry, s, groups, args.threads) for s in (0.0, 0.1, 1.0)}
    base = rows[0.0]["cpu_s"]
    what = f"{args.requests} requests x {args.docs} passages, {args.threads} thread(s)"
    print(f"# {what}, one request at a time")
    print("| fidelity_sample | CPU s | CPU x off | wall s | samples | Spearman | top-1 |")
    print("|---|---|---|---|---|---|---|")
    for s, r in rows.items():
        print(f"| {s:g} | {r['cpu_s']:.2f} | {r['cpu_s'] / base:.2f} | {r['wall_s']:.2f} | "
              f"{r['samples']:.0f} | {r['spearman']:.4f} | {r['top1']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
