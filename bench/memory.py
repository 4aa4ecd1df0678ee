"""Memory of one rerank request in the real daemon: idle, peak and after-request RSS.

    python -m bench.memory                  # every case below
    python -m bench.memory --cases onnx,onnx_alone,onnx_fp32 --requests 3 --json

Each case is a fresh `python -m edgerank.server.daemon` (HTTP on a Unix socket) serving the
MiniLM-L6 cross-encoder (edgerank/testing/minilm_ce.py: real MiniLM weights, fitted head):

- ``onnx``: the INT8 entry with its cascade (the FP32 reference beside it, its weights in
  a mapped external-data file, opened unpacked: what `edgerank import` installs);
- ``onnx_ref_packed``: the same entry with the reference as it was before: one file, read
  into the process and its MatMul weights packed (the baseline of the reference's cost);
- ``onnx_alone``: INT8 without the cascade (`--no-cascade`);
- ``onnx_fp32``: the FP32 graph alone (what the import installs where INT8 does not pay);
- ``onnx_arena``: ``onnx`` with onnxruntime's defaults (arena and memory patterns on, no
  shrinkage, whole batches per run: the baseline of the arena fix, and of its speed);
- ``gguf``: GGUF q8_0; ``biencoder``: the embedded all-MiniLM-L6-v2.

The request is the black-box probe's: 100 documents of ~256 tokens, POSTed to /v1/rerank
`--requests` times. Read from /proc/PID/status: VmRSS idle (after the warm-up), VmHWM over
the requests (the high-water mark is reset through /proc/PID/clear_refs first), VmRSS after
the last one, and RssAnon / RssFile idle (mapped weights are file pages: clean, shared
between processes, given back under pressure). Seconds per request: the median, and the
ratio to ``onnx_arena`` where both ran.

The plan it is held to is the chooser's (planning/memory.py): the model's memory_mib (and
the FP32 reference of an INT8 entry) plus activations for max_batch_tokens (8192) plus the
runtime overhead; `idle` is what the overhead and weights must cover, `peak - idle` should
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
CASES = ("onnx", "onnx_ref_packed", "onnx_alone", "onnx_fp32", "onnx_arena", "gguf", "biencoder")
#: the reference opened as before: packed weights from a one-file graph (read in)
PACKED_REF_DAEMON = textwrap.dedent(
    """
    import sys
    from edgerank.backends import registry
    from edgerank.backends.onnx import OnnxBackend

    def packed(model_dir, *, threads=1, manifest=None):
        from pathlib import Path
        return OnnxBackend.from_file(Path(model_dir) / "model.fp32.packed.onnx", 512,
                                     threads=threads)

    registry.open_reference = packed
    from edgerank.server import daemon
    sys.argv[0] = "edgerank.server.daemon"
    daemon._main()
    """
)
#: entry name per case (prepare installs them)
ENTRIES = {
    "onnx": "minilm-ce",
    "onnx_ref_packed": "minilm-ce",
    "onnx_arena": "minilm-ce",
    "onnx_alone": "minilm-ce-alone",
    "onnx_fp32": "minilm-ce-fp32",
}


def prepare(work: Path, gguf: bool = True) -> None:
    """The MiniLM-L6 cross-encoder as INT8 ONNX and GGUF q8_0 (imports torch: own process)."""
    import onnx

    from edgerank.convert.backoff import Policy
    from edgerank.install.store import ModelStore
    from edgerank.testing import minilm_ce

    store = ModelStore(work / "home")
    installed = store.installed()
    ckpt = minilm_ce.build_minilm_cross_encoder(work / "minilm-ce")
    policies = {  # whatever the speed verdict here: each case needs its own file
        "minilm-ce": Policy(min_speedup=0.0, allow_below_floor=True),
        "minilm-ce-alone": Policy(min_speedup=0.0, allow_below_floor=True, cascade=False),
        "minilm-ce-fp32": Policy(min_speedup=1e9),
    }
    for name, policy in policies.items():
        if "onnx" not in installed.get(name, []):
            store.import_onnx(name, ckpt, policy=policy)
    entry = store.path("minilm-ce", "onnx")
    packed = entry / "model.fp32.packed.onnx"
    if not packed.exists():  # the reference in one file, outside the manifest's list
        onnx.save(onnx.load(str(entry / "model.fp32.onnx")), str(packed))
    if gguf and "gguf" not in installed.get("minilm-ce", []):
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
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
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
    if case in ENTRIES:
        model = entries.path(ENTRIES[case], "onnx")
    else:
        model = {"gguf": entries.path("minilm-ce", "gguf"), "biencoder": "all-minilm-l6-v2"}[case]
    tmp = Path(tempfile.mkdtemp(prefix="edgerank-mem-"))
    http = tmp / "http.sock"
    flags = ["--model", str(model), "--listen", "", "--socket", str(tmp / "g.sock")]
    flags += ["--http-socket", str(http), "--threads", str(threads), "--home", str(store)]
    flags += ["--log-level", "warning"]
    if case in ("onnx_arena", "onnx_ref_packed"):
        script = tmp / f"{case}_daemon.py"
        script.write_text(ARENA_DAEMON if case == "onnx_arena" else PACKED_REF_DAEMON)
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
        idle_status = _status(proc.pid)
        idle = idle_status["VmRSS"]
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
        "idle_anon_mib": idle_status["RssAnon"],
        "idle_file_mib": idle_status["RssFile"],
        "peak_mib": peak,
        "after_mib": afters[-1],
        "after_each_mib": afters,
        "peak_over_idle_mib": peak - idle,
        "after_over_idle_mib": afters[-1] - idle,
        "tokens": tokens,
        "seconds": statistics.median(seconds),
    }


def plan(max_batch_tokens: int) -> dict[str, dict]:
    """What the chooser budgets for MiniLM-L6 at this token budget (planning/memory.py):
    the ONNX INT8 candidate (its FP32 reference counted) and the FP32 graph, split up."""
    from edgerank.catalog.load import load_catalog
    from edgerank.planning import memory as choose

    spec = load_catalog().get("ms-marco-minilm-l6")
    activations = math.ceil(choose.activation_kib_per_token(spec.hidden) * max_batch_tokens / 1024)
    out = {}
    for precision in ("int8", "fp32"):
        weights = choose.weights_mib(spec, precision)
        reference = choose.reference_mib(spec, "onnx", precision)
        overhead = choose.RUNTIME_OVERHEAD_MIB["onnx"]
        out[precision] = {
            "weights_mib": weights, "reference_mib": reference,
            "activations_mib": activations, "overhead_mib": overhead,
            "need_mib": weights + reference + activations + overhead,
        }  # fmt: skip
    return out


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
    cases = [c for c in args.cases.split(",") if c]
    if args.prepare:
        prepare(args.work, gguf="gguf" in cases)
        return
    if (set(ENTRIES) | {"gguf"}) & set(cases):
        cmd = [sys.executable, __file__, "--prepare", "--work", str(args.work)]
        cmd += ["--cases", ",".join(cases)]
        subprocess.run(cmd, check=True)
    docs = documents(args.docs, args.words)
    rows = [measure(c, args.work, docs, args.requests, args.threads) for c in cases]
    base = {r["case"]: r["seconds"] for r in rows}.get("onnx_arena")
    for r in rows:
        if base and r["case"].startswith("onnx"):
            r["x_speed_vs_arena"] = round(base / r["seconds"], 3)
    report = {"plan_minilm_8192_tokens": plan(8192), "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"# {args.docs} documents x ~{args.words} tokens, /v1/rerank, {args.requests} requests")
    for precision, figures in report["plan_minilm_8192_tokens"].items():
        print(f"# plan, {precision}: {figures}")
    head = ("case", "idle", "anon", "file", "peak", "after", "peak-idle", "after-idle",
            "s/request", "x speed")  # fmt: skip
    print("{:<16} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>11} {:>10} {:>8}".format(*head))
    for r in rows:
        print(
            f"{r['case']:<16} {r['idle_mib']:>6} {r['idle_anon_mib']:>6} "
            f"{r['idle_file_mib']:>6} {r['peak_mib']:>6} {r['after_mib']:>6} "
            f"{r['peak_over_idle_mib']:>10} {r['after_over_idle_mib']:>11} "
            f"{r['seconds']:>10.2f} {r.get('x_speed_vs_arena', ''):>8}"
        )


if __name__ == "__main__":
    main()
