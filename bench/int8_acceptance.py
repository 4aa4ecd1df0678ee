"""INT8 acceptance (issues 14 and 27): what `edgerank import` installs, against torch FP32,
ONNX FP32 and the peers' INT8, on fidelity, on what a user sees, and on speed.

    python -m bench.int8_acceptance [--models faq-head gloss-head admin-e2e] [--rounds 5]

For each test reranker of edgerank/testing/minilm_rerankers.py (three real-weight MiniLM-L6
cross-encoders built offline, none tuned for the recipe):

1. `edgerank import`'s code path (ModelStore.import_onnx), timed (wall and this process's
   CPU seconds), with what it installed and why: ``edgerank-default`` with the default
   policy (``--request-shape``, ``--portable``, ``--min-speedup``, ``--no-cascade`` change
   it); where that installed the FP32 graph, ``edgerank-int8-cascade`` as well (the INT8
   point forced, to measure it); with ``--with-no-cascade``, ``edgerank-no-cascade`` (the
   ladder climbing to meet the floor without the cascade);
2. on the held-out Debian FAQ groups (139 x 8; a document no calibration, probe or model
   training used), every candidate against torch FP32 (512-token truncation): Spearman and
   top-1 kept, and what a user sees: the labelled positive's (the section's own
   paragraph) MRR and top-1 rate, torch FP32's own beside them. Entries are scored through
   edgerank's own path (startup/, as `edgerank score`: the file and, when its recipe
   has one, the cascade's FP32 rescoring of near-ties; ``<row>-alone``: the same INT8 file
   without it);
3. speed in one run, candidates interleaved over ``--rounds`` rounds (medians), at 1 and 2
   threads, on s32 = 32 passages of ~128 tokens and s100 = 100 passages of 16-244 tokens:
   torch FP32, ONNX FP32 (the plain export), the installed entries, onnxruntime
   quantize_dynamic per-channel QInt8 of the plain export, and sentence-transformers'
   CrossEncoder ONNX backend with its dynamic INT8 export (its own tokenizer and batching).
Ratios are against torch FP32 and ONNX FP32 of the same round set. The machine is shared:
the spread (min/max over rounds, relative to the median) is printed beside each figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from edgerank.backends.onnx import OnnxBackend  # noqa: E402
from edgerank.convert.backoff import Policy  # noqa: E402
from edgerank.engine.agreement import rank_agreement  # noqa: E402
from edgerank.engine.rank import score_documents  # noqa: E402
from edgerank.install.store import ModelStore  # noqa: E402
from edgerank.models.manifest import Manifest  # noqa: E402
from edgerank.models.serving import RequestShape  # noqa: E402
from edgerank.testing import minilm_rerankers as mr  # noqa: E402


def speed_sets(tok_json: Path) -> dict[str, tuple[str, list[str]]]:
    """s32 and s100 from held-out prose: words added until the pair reaches its length."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_json))
    words = " ".join(d for _, docs in mr.heldout_groups() for d in docs).split()
    query = "How do I keep my Debian system up to date?"

    def passage(start: int, tokens: int) -> str:
        n = max(4, tokens // 2)
        while len(tok.encode(query, " ".join(words[start : start + n])).ids) < tokens:
            n += 4
        while n > 4 and len(tok.encode(query, " ".join(words[start : start + n])).ids) > tokens:
            n -= 1
        return " ".join(words[start : start + n])

    rng = random.Random(14)
    s32 = [passage(rng.randrange(len(words) - 400), 128) for _ in range(32)]
    lengths = [int(math.exp(rng.uniform(math.log(16), math.log(244)))) for _ in range(100)]
    s100 = [passage(rng.randrange(len(words) - 400), n) for n in lengths]
    return {"s32": (query, s32), "s100": (query, s100)}


def st_int8(ckpt: Path, work: Path):
    """sentence-transformers' CrossEncoder with its ONNX backend and dynamic INT8 export."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    d = work / "st"
    if not d.exists():
        shutil.copytree(ckpt, d)
        ce = CrossEncoder(str(d), backend="onnx")
        ce.save_pretrained(str(d))
        export_dynamic_quantized_onnx_model(ce, "avx512_vnni", str(d))
    files = sorted((d / "onnx").glob("*qint8*.onnx"))
    return d, files[0].relative_to(d)


def open_st(d: Path, rel: Path, threads: int):
    import onnxruntime as ort
    from sentence_transformers import CrossEncoder

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    ce = CrossEncoder(
        str(d), backend="onnx", max_length=512,
        model_kwargs={"file_name": str(rel), "session_options": so},
    )  # fmt: skip
    return ce


def candidates(ckpt: Path, installed: dict[str, Path], work: Path, threads: int) -> dict:
    """name -> (query, docs) -> raw scores, all at ``threads`` threads. ``installed``: the
    entries to score, by row name; each as `edgerank score` serves it (its cascade too),
    and the INT8 file of a cascaded entry also alone (``<row>-alone``)."""
    import torch

    from edgerank.backends.torch import TorchBackend
    from edgerank.startup.load import load

    torch.set_num_threads(threads)
    plain = work / "fp32" / "model.onnx"
    dyn = work / "dyn" / "model.onnx"
    out = {"torch-fp32": TorchBackend(ckpt, precision="fp32", threads=threads, max_length=512)}
    out["onnx-fp32"] = OnnxBackend.from_file(plain, 512, threads=threads)
    served = {row: load(str(d), threads=threads) for row, d in installed.items()}
    for row, loaded in served.items():
        if loaded.cascade is not None:
            out[f"{row}-alone"] = loaded.backend
    out["ort-dynamic-int8"] = OnnxBackend.from_file(dyn, 512, threads=threads, precision="int8")
    fns = {k: (lambda q, ds, b=b: score_documents(b, q, ds).raw) for k, b in out.items()}
    for row, loaded in served.items():
        fns[row] = lambda q, ds, x=loaded: score_documents(x.backend, q, ds, cascade=x.cascade).raw
    try:
        d, rel = st_int8(ckpt, work)
        ce = open_st(d, rel, threads)
    except Exception as exc:  # its ONNX backend needs optimum, which not every box has
        print(f"st-int8 left out: {str(exc).splitlines()[0]}", file=sys.stderr)
        return fns
    fns["st-int8"] = lambda q, ds: np.asarray(
        ce.predict([(q, x) for x in ds], batch_size=32, activation_fn=torch.nn.Identity())
    )
    return fns


def prepare(ckpt: Path, work: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgerank.convert.onnx_export import export_onnx

    if not (work / "fp32" / "model.onnx").exists():
        export_onnx(ckpt, work / "fp32")
    (work / "dyn").mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "config.json"):
        shutil.copy2(work / "fp32" / f, work / "dyn" / f)
    quantize_dynamic(
        str(work / "fp32" / "model.onnx"), str(work / "dyn" / "model.onnx"),
        weight_type=QuantType.QInt8, per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )  # fmt: skip


def positive_quality(scores: list[np.ndarray], labels: list[list[int]]) -> dict[str, float]:
    """What a user sees: the labelled positive (label 2, the section's own paragraph) as
    ranked by these scores: mean reciprocal rank of the first one, and the share of groups
    whose top passage is one."""
    rr, top = [], []
    for s, lab in zip(scores, labels, strict=True):
        order = np.argsort(-np.asarray(s), kind="stable")
        ranks = [r for r, i in enumerate(order, 1) if lab[i] == 2]
        rr.append(1.0 / ranks[0] if ranks else 0.0)
        top.append(float(lab[order[0]] == 2))
    return {"mrr": round(float(np.mean(rr)), 4), "top1": round(float(np.mean(top)), 4)}


def imported(store: ModelStore, name: str, ckpt: Path, policy: Policy, lines: list) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    path = store.import_onnx(name, ckpt, progress=lambda m: lines.append(f"[{name}] {m}"),
                             policy=policy)  # fmt: skip
    m = Manifest.read(path)
    return {
        "path": path, "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1), "precision": m.precision,
        "fp32_matmuls": m.recipe.get("fp32_matmuls"),
        "matmul_kinds": dict(Counter(m.recipe.get("matmul_kinds", {}).values())),
        "reasons": m.recipe.get("reasons"), "verdict": m.serving.get("verdict"),
        "frontier": m.recipe.get("frontier"), "probe_fidelity": m.fidelity,
    }  # fmt: skip


def run_model(
    name: str, work: Path, rounds: int, threads: list[int], policy: Policy = Policy(),
    no_cascade: bool = False,
) -> dict:  # fmt: skip
    """``policy``: the default import's (the table's first row); an INT8 + cascade import
    is added where that one installed FP32, and a ``--no-cascade`` one when asked."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpt = mr.build(name, work / "ckpt")
    built = time.perf_counter() - t0
    lines: list[str] = []
    imports = {"edgerank-default": imported(ModelStore(work / "home"), name, ckpt, policy, lines)}
    if imports["edgerank-default"]["precision"] != "int8":
        forced = dataclasses.replace(policy, min_speedup=0.0)
        imports["edgerank-int8-cascade"] = imported(ModelStore(work / "home-int8"), name, ckpt,
                                                    forced, lines)  # fmt: skip
    if no_cascade:
        alone = dataclasses.replace(policy, cascade=False)
        imports["edgerank-no-cascade"] = imported(ModelStore(work / "home-alone"), name, ckpt,
                                                  alone, lines)  # fmt: skip
    installed = {row: x["path"] for row, x in imports.items()}
    prepare(ckpt, work)
    rows = mr.load_groups(mr.HELDOUT)
    groups = [(g["query"], g["documents"]) for g in rows]
    labels = [g["labels"] for g in rows]
    fns = candidates(ckpt, installed, work, max(threads))
    ref = [fns["torch-fp32"](q, ds) for q, ds in groups]
    fidelity, quality = {}, {"torch-fp32": positive_quality(ref, labels)}
    for k, fn in fns.items():
        if k != "torch-fp32":
            got = [fn(q, ds) for q, ds in groups]
            fidelity[k] = {x: round(v, 4) for x, v in rank_agreement(ref, got).items()}
            quality[k] = positive_quality(got, labels)
    sets = speed_sets(ckpt / "tokenizer.json")
    speed = {}
    for t in threads:
        fns = candidates(ckpt, installed, work, t)
        for sname, (q, ds) in sets.items():
            times: dict[str, list[float]] = {k: [] for k in fns}
            for fn in fns.values():
                fn(q, ds)  # warm-up
            names = list(fns)
            for r in range(rounds):
                for k in names[r % len(names) :] + names[: r % len(names)]:
                    s = time.perf_counter()
                    fns[k](q, ds)
                    times[k].append(time.perf_counter() - s)
            med = {k: statistics.median(v) for k, v in times.items()}
            speed[f"{sname}@{t}"] = {
                k: {
                    "ms": round(med[k] * 1000, 1),
                    "x_torch": round(med["torch-fp32"] / med[k], 2),
                    "x_onnx_fp32": round(med["onnx-fp32"] / med[k], 2),
                    "spread": [round(min(v) / med[k], 2), round(max(v) / med[k], 2)],
                }
                for k, v in times.items()
            }
    for x in imports.values():
        x["path"] = str(x["path"])
    return {
        "model": name, "weights_sha256": mr.fingerprint(ckpt), "build_s": round(built, 1),
        "imports": imports, "import_log": lines, "heldout_fidelity_vs_torch_fp32": fidelity,
        "heldout_positive_quality": quality, "speed": speed,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(mr.RECIPES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgerank-int8-acceptance"))
    ap.add_argument("--out", type=Path, help="also write the JSON report here")
    ap.add_argument(
        "--portable", action="store_true", default=None,
        help="import as `edgerank import --portable-int8` (weights no int8 kernel saturates)",
    )  # fmt: skip
    ap.add_argument("--min-speedup", type=float, help="as Policy.min_speedup (0: never FP32)")
    ap.add_argument("--no-cascade", action="store_true", help="install INT8 alone")
    ap.add_argument("--request-shape", help="as `edgerank import --request-shape`")
    ap.add_argument(
        "--with-no-cascade", action="store_true",
        help="also import with --no-cascade (the ladder climbing to meet the floor alone)",
    )  # fmt: skip
    args = ap.parse_args()
    policy = Policy(
        portable=args.portable, min_speedup=args.min_speedup, cascade=not args.no_cascade,
        request_shape=RequestShape.parse(args.request_shape) if args.request_shape else None,
    )  # fmt: skip
    reports = []
    for name in args.models:
        rep = run_model(name, args.workdir / name, args.rounds, args.threads, policy,
                        args.with_no_cascade)  # fmt: skip
        reports.append(rep)
        print(json.dumps(rep), flush=True)
        if args.out:
            args.out.write_text(json.dumps(reports, indent=1))
    print("\n| model | import | installed | verdict | import wall / CPU s |")
    print("|---|---|---|---|---|")
    for r in reports:
        for row, x in r["imports"].items():
            why = (x["verdict"] or {}).get("reason") or "; ".join(x["reasons"] or [])
            print(f"| {r['model']} | {row} | {x['precision']} {x['matmul_kinds']} | {why} | "
                  f"{x['wall_s']} / {x['cpu_s']} |")  # fmt: skip
    print("\n| model | candidate | Spearman mean/min vs torch FP32 | top-1 kept | positive MRR | "
          "positive top-1 |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in reports:
        for k, q in r["heldout_positive_quality"].items():
            f = r["heldout_fidelity_vs_torch_fp32"].get(k, {})
            fig = (
                f"{f['spearman_mean']}/{f['spearman_min']} | {f['top1_kept']:.1%}"
                if f
                else "1 | 100%"
            )
            print(f"| {r['model']} | {k} | {fig} | {q['mrr']} | {q['top1']:.1%} |")
    print("\n| model | set@threads | candidate | ms | x torch fp32 | x onnx fp32 | spread |")
    print("|---|---|---|---|---|---|---|")
    for r in reports:
        for key, row in r["speed"].items():
            for k, v in row.items():
                print(
                    f"| {r['model']} | {key} | {k} | {v['ms']} | {v['x_torch']} | "
                    f"{v['x_onnx_fp32']} | {v['spread']} |"
                )


if __name__ == "__main__":
    main()
