"""Issue-6 acceptance: HTTP throughput against gRPC, same daemon, same pairs, same clients.

    python bench/http_speed.py [--model DIR] [--threads 2] [--docs 16] [--rounds 3]

One daemon process serves gRPC and HTTP on loopback TCP. Each round, for 1, 8 and 64
closed-loop clients, it measures gRPC (edgerank.v1 Rerank over grpc.aio) and HTTP (Jina
/v1/rerank over one aiohttp session, documents not echoed, the same truncation), in turn.
Two daemons are measured: the real MiniLM-L6 cross-encoder in INT8 (what a user gets) and
the same tokenizer with a backend that returns zeros at once (`null`), so that what is left
is the transports' and the service's own cost: the HTTP layer's overhead is the difference.
The client runs on the same machine, so beside wall-clock figures the table gives the
daemon's own CPU time per request (from /proc), which the client's cost does not blur.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgerank import client  # noqa: E402
from edgerank.quality import bench as b  # noqa: E402

DAEMON = textwrap.dedent(
    """
    import sys
    import numpy as np
    from edgerank.server import daemon
    from edgerank.backends.onnx import OnnxBackend
    from edgerank.server.settings import load

    class Null:
        # the real tokenizer, no inference: what remains is transport + service
        def __init__(self, inner):
            self.inner = inner
        def encode(self, *args):
            return self.inner.encode(*args)
        def score(self, batch):
            return np.zeros(len(batch), dtype=np.float32)
        def info(self):
            return self.inner.info()
        def close(self):
            self.inner.close()

    model, threads, null, listen, http = sys.argv[1:6]

    def factory(settings):
        backend = OnnxBackend.from_dir(model, threads=int(threads))
        return (Null(backend) if null == "1" else backend), [], {}

    flags = {"listen": listen, "http": http, "socket": "", "log_level": "warning"}
    sys.exit(daemon.run(load(flags, env={}, config="/dev/null"), factory))
    """
)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (the daemon's own cost, not the client's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path, threads: int, null: bool) -> tuple[subprocess.Popen, str, str]:
    grpc_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERANK_")}
    listen, http = f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"
    args = [str(model), str(threads), "1" if null else "0", listen, http]
    proc = subprocess.Popen([sys.executable, "-c", DAEMON, *args], env=env, cwd=ROOT)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{http}/health", timeout=5).status_code == 200:
                return proc, listen, f"http://{http}"
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the daemon did not become ready")


async def _http_bench(base: str, query: str, docs: list[str], concurrency: int, requests: int):
    import aiohttp

    body = {"query": query, "documents": docs, "return_documents": False}
    latencies: list[float] = []
    left = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, connector=connector) as session:
        async with session.get("/health") as r:  # connect first, as the gRPC bench does
            await r.read()

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                async with session.post("/v1/rerank", json=body) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"HTTP {r.status}: {await r.text()}")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "pairs_per_s": len(latencies) * len(docs) / wall,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
    }


def http_bench(base, query, docs, concurrency, requests):
    return asyncio.run(_http_bench(base, query, docs, concurrency, requests))


def measure(model: Path, args, null: bool, query: str, docs: list[str]) -> list[dict]:
    proc, grpc_addr, http_base = start(model, args.threads, null)
    levels = (1, 8, 64)
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        n = args.requests * (8 if null else 1)
        client.bench(grpc_addr, query, docs, concurrency=8, requests=16)  # warm-up
        http_bench(http_base, query, docs, 8, 16)
        for _ in range(args.rounds):
            for c in levels:
                cpu0 = cpu_s(proc.pid)
                g = client.bench(grpc_addr, query, docs, concurrency=c, requests=max(n, c))
                cpu1 = cpu_s(proc.pid)
                assert not g["failures"], g["failures"]
                g["cpu_ms"] = (cpu1 - cpu0) * 1000 / g["requests"]
                h = http_bench(http_base, query, docs, c, max(n, c))
                h["cpu_ms"] = (cpu_s(proc.pid) - cpu1) * 1000 / max(n, c)
                runs.setdefault(("grpc", c), []).append(g)
                runs.setdefault(("http", c), []).append(h)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    rows = []
    for c in levels:
        g, h = runs[("grpc", c)], runs[("http", c)]
        g_tp = statistics.median(r["pairs_per_s"] for r in g)
        h_tp = statistics.median(r["pairs_per_s"] for r in h)
        g_p50 = statistics.median(r["p50_ms"] for r in g)
        h_p50 = statistics.median(r["p50_ms"] for r in h)
        rows.append(
            {
                "backend": "null" if null else "int8",
                "clients": c,
                "grpc_pairs_per_s": g_tp,
                "http_pairs_per_s": h_tp,
                "http_over_grpc": h_tp / g_tp,
                "grpc_p50_ms": g_p50,
                "http_p50_ms": h_p50,
                "http_minus_grpc_p50_ms": h_p50 - g_p50,
                # the daemon's CPU per request: the server-side cost, whatever the client costs
                "grpc_cpu_ms": statistics.median(r["cpu_ms"] for r in g),
                "http_cpu_ms": statistics.median(r["cpu_ms"] for r in h),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from edgerank.store.entries import ModelStore
            from tests.support import minilm_ce

            ckpt = minilm_ce.build_minilm_cross_encoder(Path(tmp) / "ckpt")
            model = ModelStore(Path(tmp) / "home").import_onnx("minilm-ce", ckpt)
        query = b.synthetic_text(8, random.Random(1))
        docs = b.mixed_length_passages(args.docs, seed=3, lo=20, hi=120)
        rows = measure(model, args, False, query, docs) + measure(model, args, True, query, docs)
    print(f"# {len(docs)} docs/request, {args.threads} threads, medians of {args.rounds} rounds")
    print(b.format_table(rows))


if __name__ == "__main__":
    main()
