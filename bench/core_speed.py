"""Issue-2 speed acceptance on the real MiniLM-L6 cross-encoder, all ratios from one run.

    python bench/core_speed.py [--threads 1,2] [--rounds 7]

1. the shipped INT8 ONNX recipe vs torch fp32 (baseline), torch bf16 and ONNX fp32 at
   32 pairs x 128 tokens, 1 and 2 threads, plus single-pair latency;
2. length bucketing vs pad-to-max on mixed-length passages;
3. cold start of `edgerank score` on the INT8 model, and a check that it imports no torch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgerank.backends.onnx import OnnxBackend  # noqa: E402
from edgerank.backends.torch import TorchBackend  # noqa: E402
from edgerank.convert import onnx_export as convert  # noqa: E402
from edgerank.models.manifest import Manifest  # noqa: E402
from edgerank.quality import bench as b  # noqa: E402
from edgerank.store.entries import ModelStore  # noqa: E402
from tests.support import minilm_ce  # noqa: E402


def fp32_model_dir(ckpt: Path, work: Path) -> Path:
    """The un-quantized export as a model directory, for the ONNX fp32 row."""
    d = work / "onnx-fp32"
    onnx = convert.export_onnx(ckpt, d / "export")
    shutil.move(str(onnx), d / "model.onnx")
    for f in ("tokenizer.json", "config.json"):
        shutil.copy2(ckpt / f, d / f)
    Manifest(
        name="minilm-ce-fp32", backend="onnx", precision="fp32", model_file="model.onnx",
        max_length=512, files={"model.onnx": {}, "tokenizer.json": {}, "config.json": {}},
    ).write(d)  # fmt: skip
    return d


def cold_start(model_dir: Path, runs: int = 5) -> dict[str, float | bool]:
    cmd = [sys.executable, "-m", "edgerank", "score", "--model", str(model_dir), "--threads",
           "1", "how long do cats sleep", "Cats sleep sixteen hours.", "Stocks fell."]  # fmt: skip
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        seconds.append(time.perf_counter() - t0)
    bare = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t0)
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", *cmd[1:]], capture_output=True, text=True
    ).stderr
    mods = {line.split("|")[-1].strip() for line in trace.splitlines() if "|" in line}
    return {
        "edgerank_score_s": statistics.median(seconds),
        "python_startup_s": statistics.median(bare),
        "imports_torch": any(m == "torch" or m.startswith("torch.") for m in mods),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = minilm_ce.build_minilm_cross_encoder(work / "ckpt")
        store = ModelStore(work / "home")
        int8_dir = store.import_onnx("minilm-ce", ckpt)
        fp32_dir = fp32_model_dir(ckpt, work)
        refs = {
            "torch_fp32": lambda t: TorchBackend(ckpt, precision="fp32", threads=t),
            "torch_bf16": lambda t: TorchBackend(ckpt, precision="bf16", threads=t),
            "onnx_fp32": lambda t: OnnxBackend.from_dir(fp32_dir, threads=t),
        }
        rows = b.backend_report(
            lambda t: OnnxBackend.from_dir(int8_dir, threads=t), refs, counts, rounds=args.rounds
        )
        buckets = []
        for t in counts:
            be = OnnxBackend.from_dir(int8_dir, threads=t)
            buckets.append({"threads": t, **b.bucketing_report(be)})
            be.close()
        report = {
            "recipe": Manifest.read(int8_dir).recipe,
            "fidelity_at_import": Manifest.read(int8_dir).fidelity,
            "throughput": rows,
            "bucketing": buckets,
            "cold_start": cold_start(int8_dir),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print("recipe:", json.dumps(report["recipe"]))
    print("fidelity at import:", json.dumps(report["fidelity_at_import"]))
    print("\n# 32 pairs x 128 tokens; x_torch_fp32 = speed relative to torch fp32, same run")
    print(b.format_table(rows))
    print("\n# length bucketing vs pad-to-max (INT8 backend)")
    print(b.format_table(buckets))
    print("\n# cold start of `edgerank score` (INT8 model, 2 documents)")
    print(b.format_table([report["cold_start"]]))


if __name__ == "__main__":
    main()
