"""Issue-12 acceptance: a RAG-like trace against the daemon with no cache, the in-process
cache, Redis, and both, in the same run.

    python -m bench.cache_speed [--model DIR | --model all-minilm-l6-v2] [--threads 2]
        [--pool 100] [--k 20] [--requests 300] [--zipf 1.1] [--clients 8] [--corpus 3000]
        [--segments 5]

The trace: a pool of `pool` queries, each with its own top-`k` passages drawn from a corpus
of `corpus` mixed-length passages (20-200 words); `requests` requests pick their query
Zipf-distributed over the pool (rank r with weight 1/r^zipf), the way popular questions
dominate RAG traffic. Every configuration replays the very same trace with `clients`
concurrent gRPC clients (closed loop) against its own daemon (TCP port 0, READY=1 awaited
over a real sd_notify socket; the Redis rows each with a fresh redis-server on a Unix
socket). The daemons run side by side and the trace is replayed in `segments` parts, each
against every daemon in a rotating order, so the drift of a shared machine hits all alike.
Hit rate and the daemon's own latency per outcome come from its /metrics.

Without --model it builds the real MiniLM-L6 cross-encoder and imports it as INT8 ONNX.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent

from edgerank.proto.edgerank.v1 import reranker_pb2 as pb  # noqa: E402
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc  # noqa: E402
from edgerank.quality import bench as b  # noqa: E402
from edgerank.testing.redis_server import RedisServer  # noqa: E402


def make_trace(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    rng = random.Random(7)
    corpus = b.mixed_length_passages(args.corpus, seed=11, lo=20, hi=200)
    pool = [(b.synthetic_text(rng.randint(5, 12), rng), rng.sample(corpus, args.k))
            for _ in range(args.pool)]  # fmt: skip
    weights = 1.0 / np.arange(1, args.pool + 1) ** args.zipf
    picks = np.random.default_rng(3).choice(args.pool, args.requests, p=weights / weights.sum())
    return [pool[i] for i in picks]


class Daemon:
    """`edgerank serve` as a subprocess: gRPC on TCP port 0, HTTP (/metrics) on port 0."""

    def __init__(self, model: str, threads: int, work: Path, flags: list[str]):
        notify = work / f"notify-{time.monotonic_ns()}.sock"
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(str(notify))
        ns.settimeout(600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERANK_")}
        env["NOTIFY_SOCKET"] = str(notify)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgerank", "serve", "--model", model, "--listen",
             "127.0.0.1:0", "--http", "127.0.0.1:0", "--threads", str(threads),
             "--log-level", "info", *flags],
            env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        self.lines: list[str] = []
        listening = threading.Event()

        def drain() -> None:
            for line in self.proc.stderr:  # type: ignore[union-attr]
                self.lines.append(line.rstrip())
                if "listening on" in line:
                    listening.set()

        threading.Thread(target=drain, daemon=True).start()
        while b"READY=1" not in ns.recv(4096):
            pass
        ns.close()
        listening.wait(10)
        line = next(x for x in self.lines if "listening on" in x)
        self.grpc = "127.0.0.1:" + re.search(r"tcp port (\d+)", line).group(1)
        self.http = re.search(r"(http://[^,\s]+)", line).group(1)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = urllib.request.urlopen(f"{self.http}/metrics", timeout=10).read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def replay(address: str, trace: list[tuple[str, list[str]]], clients: int) -> dict:
    """Closed loop: `clients` workers send the trace's requests in order, one at a time each."""
    latencies: list[float] = []
    failures = 0
    queue = iter(trace)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RerankerStub(channel)
        await stub.Info(pb.InfoRequest())

        async def worker() -> None:
            nonlocal failures
            for query, docs in queue:
                t0 = time.perf_counter()
                try:
                    await stub.Rerank(pb.RerankRequest(query=query, documents=docs), timeout=600)
                except grpc.aio.AioRpcError:
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"wall": wall, "failures": failures, "latencies": latencies}


def quantile(m: dict, outcome: str, q: float) -> float:
    """histogram_quantile over edgerank_cache_request_seconds{outcome}, in ms (bucket top)."""
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in m.items()
        if name == "edgerank_cache_request_seconds_bucket" and dict(labels)["outcome"] == outcome
    )
    total = buckets[-1][1] if buckets else 0
    if not total:
        return float("nan")
    return next(le for le, count in buckets if count >= q * total) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model directory or name; default: build MiniLM-L6 CE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pool", type=int, default=100)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--corpus", type=int, default=3000)
    ap.add_argument("--segments", type=int, default=5, help="interleaving rounds")
    args = ap.parse_args()
    trace = make_trace(args)
    seen: set[str] = set()
    repeats = 0
    for q, _ in trace:
        repeats += q in seen
        seen.add(q)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from edgerank.install.store import ModelStore
            from edgerank.testing import minilm_ce

            ckpt = minilm_ce.build_minilm_cross_encoder(work / "ckpt")
            model = str(ModelStore(work / "home").import_onnx("minilm-ce", ckpt))
        mib = str(256 << 20)
        configs = {
            "no cache": ["--cache-bytes", "0"],
            "in-process": ["--cache-bytes", mib],
            "redis": ["--cache-bytes", "0", "--cache-url", "REDIS"],
            "in-process+redis": ["--cache-bytes", mib, "--cache-url", "REDIS"],
        }
        # every daemon up at once; the trace in segments, each replayed against every
        # daemon in a rotating order, so the load of this shared machine hits all alike
        redis = {n: RedisServer() for n, flags in configs.items() if "REDIS" in flags}
        daemons: dict[str, Daemon] = {}
        runs = {n: {"wall": 0.0, "failures": 0, "latencies": []} for n in configs}
        try:
            for name, flags in configs.items():
                flags = [redis[name].url if f == "REDIS" else f for f in flags]
                daemons[name] = Daemon(model, args.threads, work, flags)
            cut = np.linspace(0, len(trace), args.segments + 1).astype(int)
            names = list(configs)
            for seg in range(args.segments):
                part = trace[cut[seg] : cut[seg + 1]]
                for name in names[seg % len(names) :] + names[: seg % len(names)]:
                    r = asyncio.run(replay(daemons[name].grpc, part, args.clients))
                    runs[name]["wall"] += r["wall"]
                    runs[name]["failures"] += r["failures"]
                    runs[name]["latencies"] += r["latencies"]
            metrics = {name: d.metrics() for name, d in daemons.items()}
        finally:
            for d in daemons.values():
                d.stop()
            for server in redis.values():
                server.close()
        rows = []
        for name in configs:
            r, m = runs[name], metrics[name]
            ms = np.array(r["latencies"]) * 1000
            hits = sum(v for (n, _), v in m.items() if n == "edgerank_cache_hits_total")
            misses = m.get(("edgerank_cache_misses_total", ()), 0.0)
            coalesced = m.get(("edgerank_cache_coalesced_total", ()), 0.0)
            pairs = hits + misses + coalesced
            req_s = len(ms) / r["wall"]
            rows.append(
                {
                    "config": name,
                    "req_per_s": req_s,
                    "pairs_per_s": req_s * args.k,
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p95_ms": float(np.percentile(ms, 95)),
                    "p99_ms": float(np.percentile(ms, 99)),
                    "hit_rate": hits / pairs if pairs else 0.0,
                    "coalesced": coalesced / pairs if pairs else 0.0,
                    "hit_p50_ms": quantile(m, "hit", 0.5),
                    "hit_p99_ms": quantile(m, "hit", 0.99),
                    "miss_p50_ms": quantile(m, "miss", 0.5),
                    "failures": r["failures"],
                }
            )
        base = rows[0]["req_per_s"]
        for row in rows:
            row["speedup"] = row["req_per_s"] / base
        label = "/".join(Path(model).parts[-2:])  # the entry's name and backend
        print(
            f"# trace: {args.requests} requests, pool {args.pool} queries (Zipf s={args.zipf}), "
            f"top-{args.k} passages of 20-200 words from a corpus of {args.corpus}; "
            f"{args.clients} clients; {args.threads} threads; model {label}"
        )
        print(f"# repeated queries in the trace: {repeats / len(trace):.1%} (the best hit rate)")
        print("# hit_*/miss_*: the daemon's histogram (bucket upper bounds); others: clients'")
        print(b.format_table(rows))


if __name__ == "__main__":
    main()
