"""What an INT8 import costs a small box: peak RSS and time, per model size.

    python -m bench.import_memory [--shapes minilm-l6 bert-base bert-base-250k] [--route onnx]

Each import runs in a fresh process (`edgerank import`'s code path, ModelStore.import_onnx)
from a directory holding an FP32 `model.onnx` and its tokenizer (``--route onnx``: no
torch, what `pull` does with a hub's FP32 ONNX) or from the checkpoint (``--route
checkpoint``: torch exports it first); its peak RSS is that process's ru_maxrss. Shapes:

- ``minilm-l6``: the real-weight MiniLM-L6 cross-encoder (edgerank/testing/minilm_ce.py),
  imported with the default policy (its whole ladder);
- ``bert-base``: BERT at 12 x 768 (MiniLM's 30522-token vocabulary), random weights built
  here: a random model ranks noise, so it is imported with a floor of 0 (the first INT8
  point is installed; the ladder never climbs): its memory and time of one point;
- ``bert-base-250k``: the same with a 250002-token vocabulary (XLM-R base's embeddings).

Printed beside each: the FP32 graph's size and what planning/memory.import_need_mib
predicts for it (the check `import` and `pull` make before they start).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "minilm-l6": None,
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "vocab_size": 30522},
    "bert-base-250k": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                       "intermediate_size": 3072, "vocab_size": 250002},
}  # fmt: skip
CHILD = """
import json, resource, sys, time
from pathlib import Path
from edgerank.convert.backoff import Policy
from edgerank.install.store import ModelStore
policy = Policy(allow_below_floor=True) if {default} else Policy(floor={{"spearman_mean": 0.0}})
t0, c0 = time.perf_counter(), time.process_time()
d = ModelStore(Path({home!r})).import_onnx("m", Path({src!r}), policy=policy)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(json.dumps({{"wall_s": round(time.perf_counter() - t0, 1),
                  "cpu_s": round(time.process_time() - c0, 1), "peak_rss_mib": peak}}))
"""


def checkpoint(shape: str, work: Path) -> Path:
    """The shape's checkpoint (built once; random weights for all but minilm-l6)."""
    out = work / shape / "ckpt"
    if (out / "config.json").exists():
        return out
    if SHAPES[shape] is None:
        from edgerank.testing import minilm_ce

        return minilm_ce.build_minilm_cross_encoder(out)
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from edgerank.testing import minilm_ce

    torch.manual_seed(0)
    base = minilm_ce.model_dir()
    cfg = BertConfig(**SHAPES[shape], num_labels=1, max_position_embeddings=512)
    BertForSequenceClassification(cfg).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (base / f).exists():
            shutil.copy2(base / f, out / f)
    return out


def fp32_dir(shape: str, work: Path) -> Path:
    """An FP32 ONNX export of the checkpoint with its tokenizer, as a hub publishes it."""
    out = work / shape / "onnx"
    if not (out / "model.onnx").exists():
        from edgerank.convert.onnx_export import export_onnx

        export_onnx(checkpoint(shape, work), out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--route", choices=["onnx", "checkpoint"], default="onnx")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgerank-import-memory"))
    ap.add_argument("--prepare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prepare:  # in its own process: torch stays out of the measured one
        src = fp32_dir(args.prepare, args.workdir)
        if args.route == "checkpoint":
            src = checkpoint(args.prepare, args.workdir)
        print(src)
        return
    from edgerank.planning.memory import import_need_mib

    rows = []
    for shape in args.shapes:
        prep = [sys.executable, __file__, "--prepare", shape, "--route", args.route,
                "--workdir", str(args.workdir)]  # fmt: skip
        src = Path(
            subprocess.run(prep, check=True, capture_output=True, text=True).stdout.split()[-1]
        )
        onnx_dir = args.workdir / shape / "onnx"
        fp32_mib = sum(p.stat().st_size for p in onnx_dir.glob("model.onnx*")) / 2**20
        home = args.workdir / shape / "home"
        shutil.rmtree(home, ignore_errors=True)
        code = CHILD.format(default=SHAPES[shape] is None, home=str(home),
                            src=str(src))  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        got = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({
            "shape": shape, "route": args.route, "fp32_mib": round(fp32_mib),
            "predicted_mib": import_need_mib(fp32_mib, export=args.route == "checkpoint"),
            "process_wall_s": round(time.perf_counter() - t0, 1), **got,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| shape | route | FP32 graph MiB | peak RSS MiB | predicted MiB | import wall / CPU s |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['route']} | {r['fp32_mib']} | {r['peak_rss_mib']} | "
              f"{r['predicted_mib']} | {r['wall_s']} / {r['cpu_s']} |")  # fmt: skip


if __name__ == "__main__":
    main()
