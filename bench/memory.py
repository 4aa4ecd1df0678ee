"""Memory of one rerank request in the real daemon: idle, peak and after-request RSS.

    python -m bench.memory                  # onnx, onnx with onnxruntime's arena, gguf, biencoder
    python -m bench.memory --cases onnx,onnx_arena --requests 3 --json

Each case is a fresh `python -m edgerank.server.daemon` (HTTP on a Unix socket) serving the
MiniLM-L6 cross-encoder (edgerank/testing/minilm_ce.py: real MiniLM weights, fitted head) as
INT8 ONNX or GGUF q8_0, or the embedded all-MiniLM-L6-v2 bi-encoder. The request is the black-box
probe's: 100 documents of ~256 tokens, POSTed to /v1/rerank `--requests` times. Read from
/proc/PID/status: VmRSS idle (after the warm-up), VmHWM over the requests (the high-water
mark is reset through /proc/PID/clear_refs first), VmRSS after the last one. `onnx_arena`
is the same daemon with onnxruntime's defaults (CPU memory arena and memory patterns on,
no shrinkage, whole batches per run: as edgerank ran before): the baseline of the memory
fix, and of its speed (seconds per request, median, and the ratio to the baseline, measured
in the same run).

The plan it is held to is the chooser's (planning/memory.py): the model's memory_mib plus
activations for max_batch_tokens (8192) plus the runtime overhead; `peak - idle` should
stay within the activation budget, and `after - idle` near zero.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: onnxruntime as edgerank configured it before the fix: its defaults (arena, patterns on)
ARENA_DAEMON = textwrap.dedent(
    """
    import sys
    import onnxruntime as ort
    from edgerank.backends import onnx

    shipped = onnx.session_options

    def with_arena(threads):
        so = shipped(threads)
        so.enable_cpu_mem_arena = True
        so.enable_mem_pattern = True
        return so

    onnx.session_options = with_arena
    onnx.run_options = lambda: None  # no arena shrinkage after each run
    onnx.RUN_TOKENS = 1 << 30  # the whole batch in one run
    from edgerank.server import daemon
    sys.argv[0] = "edgerank.server.daemon"
    daemon._main()
    """
)
CASES = ("onnx", "onnx_arena", "gguf", "biencoder")


def prepare(work: Path) -> None:
    """The MiniLM-L6 cross-encoder as INT8 ONNX and GGUF q8_0 (imports torch: own process)."""
    from edgerank.install.store import ModelStore
    from edgerank.testing import minilm_ce

    store = ModelStore(work / "home")
    installed = store.installed().get("minilm-ce", [])
    if "onnx" in installed and "gguf" in installed:
        return
    ckpt = minilm_ce.build_minilm_cross_encoder(work / "minilm-ce")
    if "onnx" not in installed:
        store.import_onnx("minilm-ce", ckpt)
    if "gguf" not in installed:
        store.import_gguf("minilm-ce", ckpt, quants=("q8_0",))


def documents(n: int, words: int, seed: int = 0) -> list[str]:
    """English words, about one MiniLM token each: ~`words` tokens per document."""
    import random

    from edgerank.testing.tiny_models import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024  # kB -> MiB
    return out


def _post(path: Path, body: dict) -> dict:
    payload = json.dumps(body).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(600)
        s.connect(str(path))
        s.sendall(
            b"POST /v1/rerank HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    head, _, body_bytes = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace") + body_bytes[:300].decode())
    return json.loads(body_bytes)


def measure(case: str, work: Path, docs: list[str], requests: int, threads: int) -> dict:
    from edgerank.install.store import ModelStore

    store = work / "home"
    entries = ModelStore(store)
    model = {
        "onnx": entries.path("minilm-ce", "onnx"),
        "onnx_arena": entries.path("minilm-ce", "onnx"),
        "gguf": entries.path("minilm-ce", "gguf"),
        "biencoder": "all-minilm-l6-v2",
    }[case]
    tmp = Path(tempfile.mkdtemp(prefix="edgerank-mem-"))
    http = tmp / "http.sock"
    flags = ["--model", str(model), "--listen", "", "--socket", str(tmp / "g.sock")]
    flags += ["--http-socket", str(http), "--threads", str(threads), "--home", str(store)]
    flags += ["--log-level", "warning"]
    if case == "onnx_arena":
        script = tmp / "arena_daemon.py"
        script.write_text(ARENA_DAEMON)
        cmd = [sys.executable, str(script), *flags]
    else:
        cmd = [sys.executable, "-m", "edgerank.server.daemon", *flags]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERANK_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 300
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read())
            try:
                _post(http, {"query": "warm up", "documents": ["a short one"]})
                break
            except (OSError, RuntimeError):
                time.sleep(0.2)
        idle = _status(proc.pid)["VmRSS"]
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        query = "how do winter storms affect the river ship and harbour traffic"
        seconds = []
        afters = []
        tokens = 0
        for _ in range(requests):
            t0 = time.perf_counter()
            answer = _post(http, {"query": query, "documents": docs, "return_documents": False})
            seconds.append(time.perf_counter() - t0)
            afters.append(_status(proc.pid)["VmRSS"])
            tokens = answer["usage"]["total_tokens"]
        peak = _status(proc.pid)["VmHWM"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "case": case,
        "idle_mib": idle,
        "peak_mib": peak,
        "after_mib": afters[-1],
        "after_each_mib": afters,
        "peak_over_idle_mib": peak - idle,
        "after_over_idle_mib": afters[-1] - idle,
        "tokens": tokens,
        "seconds": statistics.median(seconds),
    }


def plan(max_batch_tokens: int) -> dict[str, int]:
    """What the chooser budgets for MiniLM-L6 INT8 at this token budget."""
    from edgerank.catalog.load import load_catalog
    from edgerank.planning import memory as choose

    spec = load_catalog().get("ms-marco-minilm-l6")
    activations = math.ceil(choose.activation_kib_per_token(spec.hidden) * max_batch_tokens / 1024)
    weights = choose.weights_mib(spec, "int8")
    overhead = choose.RUNTIME_OVERHEAD_MIB["onnx"]
    return {
        "weights_mib": weights,
        "activations_mib": activations,
        "overhead_mib": overhead,
        "need_mib": weights + activations + overhead,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--words", type=int, default=250, help="~tokens per document")
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgerank-memory-bench"))
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        prepare(args.work)
        return
    cases = [c for c in args.cases.split(",") if c]
    if {"onnx", "onnx_arena", "gguf"} & set(cases):
        cmd = [sys.executable, __file__, "--prepare", "--work", str(args.work)]
        subprocess.run(cmd, check=True)
    docs = documents(args.docs, args.words)
    rows = [measure(c, args.work, docs, args.requests, args.threads) for c in cases]
    base = {r["case"]: r["seconds"] for r in rows}.get("onnx_arena")
    for r in rows:
        if base and r["case"].startswith("onnx"):
            r["x_speed_vs_arena"] = round(base / r["seconds"], 3)
    report = {"plan_minilm_int8_8192_tokens": plan(8192), "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"# {args.docs} documents x ~{args.words} tokens, /v1/rerank, {args.requests} requests")
    print(f"# plan: {report['plan_minilm_int8_8192_tokens']}")
    head = ("case", "idle", "peak", "after", "peak-idle", "after-idle", "s/request", "x speed")
    print("{:<12} {:>6} {:>6} {:>6} {:>10} {:>11} {:>10} {:>8}".format(*head))
    for r in rows:
        print(
            f"{r['case']:<12} {r['idle_mib']:>6} {r['peak_mib']:>6} {r['after_mib']:>6} "
            f"{r['peak_over_idle_mib']:>10} {r['after_over_idle_mib']:>11} "
            f"{r['seconds']:>10.2f} {r.get('x_speed_vs_arena', ''):>8}"
        )


if __name__ == "__main__":
    main()
