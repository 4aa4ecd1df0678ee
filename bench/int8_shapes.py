"""INT8 speed at the catalog's model shapes: edgerank vs onnxruntime dynamic INT8 and
sentence-transformers' INT8 export, in one run.

    python -m bench.int8_shapes [--shapes minilm xlmr-base xlmr-large deberta-base]
        [--threads 1 2] [--sets s32 s100] [--rounds 3] [--vocab 32000] [--workdir DIR]
        [--shares s32=0.05 s100=0.03] [--out FILE]

Shapes: ``minilm`` is a real-weight MiniLM-L6 reranker (edgerank/testing/minilm_rerankers.py,
``--minilm`` picks which), imported with edgerank's default policy (ModelStore.import_onnx)
and served as `edgerank score` serves it (startup/load.py: the entry and, when its recipe has
one, the cascade). The others are random-weight checkpoints at the real shapes of
edgerank/testing/arch_models.py (XLM-R base/large, DeBERTa-v2): random weights rank by noise,
so an import's fidelity judgement on them means nothing and the bench builds the file the
import starts from instead (convert/int8_files.prepare_fp32, SmoothQuant on the shipped
calibration text, every MatMul ``token`` but the first-token last layer's). Its rows:

- ``edgerank-int8``: that file alone;
- ``edgerank-int8+cascade``: the same with the FP32 graph rescoring, unpadded as
  engine/cascade.py does, the INT8 leaders: the share of passages given by ``--shares``
  (what the real-weight MiniLM entries rescore at that request size, leader first), since
  a random model's margin and near-ties say nothing of a trained one's.

Peers: ``ort-dynamic-int8`` (quantize_dynamic, per-channel QInt8, of the plain export) and
``st-int8`` (sentence-transformers' CrossEncoder, ONNX backend, its dynamic INT8 export for
avx512_vnni, its own tokenizer and batches of 32); baselines ``torch-fp32`` and ``onnx-fp32``
(the plain export). Every candidate scores the same s32 (32 passages of ~128 tokens) and
s100 (100 passages of 16-244 tokens) sets, rounds interleaved (each round starts at another
candidate); per candidate the median wall time and the median CPU time of this process
(less disturbed by neighbours on a shared box; at 1 thread it is the work itself), and both
as ratios against torch FP32 and ONNX FP32 of the same rounds.

``--vocab``: embedding rows of the random checkpoints (default: the real models'). The
embedding is a Gather, so a smaller table changes memory, not the encoder's speed.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.int8_acceptance import open_st, prepare, speed_sets, st_int8  # noqa: E402
from edgerank.backends.onnx import OnnxBackend  # noqa: E402
from edgerank.backends.padding import plan_batches  # noqa: E402
from edgerank.convert import backoff, int8, int8_files  # noqa: E402
from edgerank.engine.rank import score_documents  # noqa: E402
from edgerank.hardware.facts import SATURATING_INT8  # noqa: E402
from edgerank.hardware.probe import int8_kernel_here  # noqa: E402
from edgerank.quality import sets  # noqa: E402
from edgerank.testing import arch_models, minilm_rerankers  # noqa: E402


def checkpoint(shape: str, work: Path, vocab: int | None, minilm: str) -> Path:
    if shape == "minilm":
        return minilm_rerankers.build(minilm, work / "ckpt")
    return arch_models.build(shape, work / "ckpt", vocab_size=vocab)


def edgerank_file(ckpt: Path, work: Path) -> tuple[Path, Path]:
    """The file an import starts from (all ``token``, the row MatMuls FP32) and its FP32
    reference, built as convert/backoff.quantize_accurate builds them."""
    loop = work / "loop"
    out = loop / "model.int8.token.onnx"
    if out.exists():
        return out, loop / "model.fp32.onnx"
    loop.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "config.json"):
        shutil.copy2(ckpt / f, loop / f)
    prepared, rows = int8_files.prepare_fp32(work / "fp32" / "model.onnx", loop)
    cal, _ = sets.shipped(sets.CALIBRATION)
    pairs = [(q, d) for q, docs in cal for d in docs[:1]]
    smooth = loop / "model.smooth.fp32.onnx"
    int8.smoothed_fp32(prepared, smooth, loop, pairs, backoff.SMOOTH_ALPHA)
    bounded = int8_kernel_here() in SATURATING_INT8
    int8_files.build(smooth, out, dict.fromkeys(rows, "fp32"), "token", bounded=bounded)
    return out, prepared


def default_entry(name: str, ckpt: Path, work: Path) -> tuple[Path, dict]:
    """edgerank's default import of a real checkpoint (cached in the workdir)."""
    from edgerank.install.store import ModelStore
    from edgerank.models.manifest import Manifest

    store = ModelStore(work / "home")
    path = store.path(name, "onnx")
    if not (path / "manifest.json").exists():
        t0, c0 = time.perf_counter(), time.process_time()
        path = store.import_onnx(name, ckpt, progress=print)
        print(
            f"import: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} CPU-s"
        )
    m = Manifest.read(path)
    kinds: dict[str, int] = {}
    for k in m.recipe.get("matmul_kinds", {}).values():
        kinds[k] = kinds.get(k, 0) + 1
    return path, {"precision": m.precision, "kinds": kinds, "cascade": m.recipe.get("cascade")}


def measured_shares(entry: Path, test_sets: dict) -> dict[str, float]:
    """The share of each set's passages the entry's cascade rescores ({} without one)."""
    from edgerank.startup.load import load

    served = load(str(entry), threads=2)
    try:
        if served.cascade is None:
            return {}
        out = {}
        for sname, (q, docs) in test_sets.items():
            before = served.cascade.rescored
            score_documents(served.backend, q, docs, cascade=served.cascade)
            out[sname] = round((served.cascade.rescored - before) / len(docs), 4)
        return out
    finally:
        served.close()


def leaders(int8_be, ref_be, share: float):
    """INT8 scores, then the FP32 graph on the ``share`` of passages the INT8 pass ranks
    first, batched unpadded as engine/cascade.py batches a head."""

    def score(q: str, docs: list[str]) -> np.ndarray:
        raw = score_documents(int8_be, q, docs).raw
        k = max(1, round(share * len(docs)))
        top = set(np.argsort(-raw)[:k].tolist())
        items = [it for it in ref_be.encode(q, docs, _opts()) if it.doc in top]
        for batch in plan_batches([it.n_tokens for it in items], 8192, max_padding=1.0):
            ref_be.score([items[i] for i in batch])
        return raw

    return score


def _opts():
    from edgerank.backends.base import ScoreOptions

    return ScoreOptions()


def candidates(shape, ckpt, work, threads, shares, entry):
    """name -> {set name -> (query, docs) -> scores}, all at ``threads`` threads."""
    import torch

    from edgerank.backends.torch import TorchBackend
    from edgerank.startup.load import load

    torch.set_num_threads(threads)
    torch_be = TorchBackend(ckpt, precision="fp32", threads=threads, max_length=512)
    onnx_fp32 = OnnxBackend.from_file(work / "fp32" / "model.onnx", 512, threads=threads)
    dyn = OnnxBackend.from_file(work / "dyn" / "model.onnx", 512, threads=threads, precision="int8")
    out = {
        "torch-fp32": lambda q, ds: score_documents(torch_be, q, ds).raw,
        "onnx-fp32": lambda q, ds: score_documents(onnx_fp32, q, ds).raw,
        "ort-dynamic-int8": lambda q, ds: score_documents(dyn, q, ds).raw,
    }
    if entry is not None:
        served = load(str(entry), threads=threads)
        out["edgerank-default"] = lambda q, ds: (
            score_documents(served.backend, q, ds, cascade=served.cascade).raw
        )
    else:
        file, ref = edgerank_file(ckpt, work)
        int8_be = OnnxBackend.from_file(file, 512, threads=threads, precision="int8")
        ref_be = OnnxBackend.from_file(ref, 512, threads=threads)
        out["edgerank-int8"] = lambda q, ds: score_documents(int8_be, q, ds).raw
        for sname, share in shares.items():
            out[f"edgerank-int8+cascade@{sname}"] = leaders(int8_be, ref_be, share)
    try:
        d, rel = st_int8(ckpt, work)
        ce = open_st(d, rel, threads)
        out["st-int8"] = lambda q, ds: np.asarray(
            ce.predict([(q, x) for x in ds], batch_size=32, activation_fn=torch.nn.Identity())
        )
    except Exception as exc:  # its ONNX backend needs optimum
        print(f"st-int8 left out: {str(exc).splitlines()[0]}", file=sys.stderr)
    return out


def timed(fns: dict, q: str, docs: list[str], rounds: int) -> dict[str, dict]:
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn(q, docs[:4])  # warm-up: sessions and arenas, at a fraction of a round's work
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[k](q, docs)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}
    tw, tc = med["torch-fp32"]
    ow, oc = med["onnx-fp32"]
    return {
        k: {
            "ms": round(w * 1000, 1),
            "cpu_ms": round(c * 1000, 1),
            "x_torch": round(tw / w, 2),
            "x_onnx": round(ow / w, 2),
            "cpu_x_torch": round(tc / c, 2),
            "cpu_x_onnx": round(oc / c, 2),
            "spread": [round(min(wall[k]) / w, 2), round(max(wall[k]) / w, 2)],
        }  # fmt: skip
        for k, (w, c) in med.items()
    }


def run_shape(shape: str, args) -> dict:
    work = args.workdir / (shape if shape != "minilm" else f"minilm-{args.minilm}")
    if shape != "minilm" and args.vocab:
        work = work.with_name(f"{work.name}-v{args.vocab}")
    work.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint(shape, work, args.vocab, args.minilm)
    prepare(ckpt, work)
    entry, info = (None, {"edgerank": "first-rung file (random weights)"})
    if shape == "minilm":
        entry, info = default_entry(args.minilm, ckpt, work)
    test_sets = {k: v for k, v in speed_sets(ckpt / "tokenizer.json").items() if k in args.sets}
    report = {"shape": shape, "entry": info, "speed": {}}
    if entry is not None:
        report["rescored_share"] = measured_shares(entry, test_sets)
        if report["rescored_share"]:  # the shares the random shapes' rows then use
            args.shares = dict(report["rescored_share"])
        print(json.dumps({"shape": shape, "entry": info, "shares": report["rescored_share"]}))
    big = shape != "minilm"
    rounds = args.rounds_big if big and args.rounds_big else args.rounds
    for t in args.threads_big if big and args.threads_big else args.threads:
        fns = candidates(shape, ckpt, work, t, args.shares, entry)
        for sname, (q, docs) in test_sets.items():
            if big and args.sets_big and sname not in args.sets_big:
                continue
            row = {k: f for k, f in fns.items() if "@" not in k or k.endswith(f"@{sname}")}
            report["speed"][f"{sname}@{t}"] = timed(row, q, docs, rounds)
            print(json.dumps({"shape": shape, f"{sname}@{t}": report["speed"][f"{sname}@{t}"]}),
                  flush=True)  # fmt: skip
    report["files_mib"] = {
        str(f.relative_to(work)): round(f.stat().st_size / 2**20, 1)
        for f in [*work.glob("*/model*.onnx"), *work.glob("loop/model.int8*.onnx")]
    }
    # every candidate of the shape held at once, plus torch's checkpoint and the build
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"shape": shape, "files_mib": report["files_mib"],
                      "peak_rss_mib": report["peak_rss_mib"]}), flush=True)  # fmt: skip
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["minilm", "xlmr-base", "deberta-base"])
    ap.add_argument("--minilm", default="faq-head", choices=list(minilm_rerankers.RECIPES))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sets", nargs="+", default=["s32", "s100"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, help="embedding rows of the random checkpoints")
    ap.add_argument("--threads-big", type=int, nargs="+", help="--threads for the random shapes")
    ap.add_argument("--rounds-big", type=int, help="--rounds for the random shapes")
    ap.add_argument("--sets-big", nargs="+", help="--sets for the random shapes")
    ap.add_argument(
        "--shares", nargs="+", default=["s32=0.06", "s100=0.03"],
        help="share of passages the cascade rescores per set (random shapes)",
    )  # fmt: skip
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgerank-int8-shapes"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.shares = {k: float(v) for k, v in (s.split("=") for s in args.shares)}
    print(f"int8 kernel: {int8_kernel_here()}")
    reports = []
    for shape in args.shapes:
        reports.append(run_shape(shape, args))
        if args.out:
            args.out.write_text(json.dumps(reports, indent=1))
    print("\n| shape | set@threads | candidate | ms | CPU ms | x torch | x onnx fp32 | "
          "CPU x onnx fp32 | spread |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        for key, row in r["speed"].items():
            for k, v in row.items():
                cells = [v[c] for c in ("ms", "cpu_ms", "x_torch", "x_onnx", "cpu_x_onnx")]
                print(f"| {r['shape']} | {key} | {k} | " + " | ".join(map(str, cells))
                      + f" | {v['spread']} |")  # fmt: skip


if __name__ == "__main__":
    main()
