"""Issue-3 acceptance: the daemon's throughput against the raw backend, same pairs, same run.

    python bench/daemon_speed.py [--model DIR] [--threads 2] [--docs 16] [--rounds 3]

Without --model it builds the real MiniLM-L6 cross-encoder and imports it as INT8 ONNX.
The daemon runs as a subprocess on a Unix socket (READY=1 awaited over a real sd_notify
socket); each round measures the backend alone, then the daemon at 1, 8 and 64 clients.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgerank import client  # noqa: E402
from edgerank.backends.onnx import OnnxBackend  # noqa: E402
from edgerank.engine.rank import score_documents  # noqa: E402
from edgerank.quality import bench as b  # noqa: E402


def start_daemon(model: Path, threads: int, work: Path) -> tuple[subprocess.Popen, str]:
    sock, notify = work / "er.sock", work / "notify.sock"
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(notify))
    ns.settimeout(300)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERANK_")}
    env["NOTIFY_SOCKET"] = str(notify)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerank", "serve", "--model", str(model), "--socket", str(sock),
         "--listen", "", "--threads", str(threads), "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    while b"READY=1" not in ns.recv(4096):
        pass
    ns.close()
    return proc, f"unix:{sock}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=24)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from edgerank.store.entries import ModelStore
            from tests.support import minilm_ce

            ckpt = minilm_ce.build_minilm_cross_encoder(work / "ckpt")
            model = ModelStore(work / "home").import_onnx("minilm-ce", ckpt)
        rng = random.Random(1)
        query = b.synthetic_text(8, rng)
        docs = b.mixed_length_passages(args.docs, seed=3, lo=20, hi=120)
        proc, addr = start_daemon(model, args.threads, work)
        try:
            backend = OnnxBackend.from_dir(model, threads=args.threads)
            direct = score_documents(backend, query, docs).raw
            remote = client.rerank(addr, query, docs)
            same = all(abs(r.raw - float(direct[r.index])) < 1e-6 for r in remote.ranked)
            print(f"daemon answers equal direct scoring: {same}")
            client.bench(addr, query, docs, concurrency=8, requests=16)  # warm-up
            raw, levels = [], {1: [], 8: [], 64: []}
            lat: dict[int, dict] = {}
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for _ in range(args.requests):
                    score_documents(backend, query, docs)
                raw.append(args.requests * len(docs) / (time.perf_counter() - t0))
                for c in levels:
                    r = client.bench(
                        addr, query, docs, concurrency=c, requests=max(args.requests, c)
                    )
                    levels[c].append(r["pairs_per_s"])
                    lat[c] = r
            raw_m = statistics.median(raw)
            nan = float("nan")
            rows = [{"clients": "backend alone", "pairs_per_s": raw_m, "share_of_raw": 1.0,
                     "p50_ms": nan, "p95_ms": nan, "p99_ms": nan}]  # fmt: skip
            for c, v in levels.items():
                rows.append(
                    {
                        "clients": c,
                        "pairs_per_s": statistics.median(v),
                        "share_of_raw": statistics.median(v) / raw_m,
                        "p50_ms": lat[c]["p50_ms"],
                        "p95_ms": lat[c]["p95_ms"],
                        "p99_ms": lat[c]["p99_ms"],
                    }
                )
            print(f"# {len(docs)} docs/request, {args.threads} threads, medians of {args.rounds}")
            print(b.format_table(rows))
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
