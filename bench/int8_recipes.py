"""INT8 ONNX recipes against torch FP32, speed and fidelity, measured in one process.

    python bench/int8_recipes.py [--threads 1 2] [--recipes shipped dynamic ...] [--reps 7]

Model: the real all-MiniLM-L6-v2 encoder as a cross-encoder with a fitted head
(tests/support/minilm_ce.py). Speed: one batch of 32 pairs x 128 tokens, median over ``--reps``
runs, candidates interleaved within each repeat so that machine noise hits them alike;
ratio = torch FP32 median / candidate median, same run. Fidelity: against torch FP32 on
60 query groups x 12 passages (mean Spearman, FP32 top-1 kept, alone-vs-batch gap).
ONNX sessions: intra_op = threads, inter_op 1, spinning off, ORT_ENABLE_ALL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgerank.backends.onnx import OnnxBackend  # noqa: E402
from edgerank.convert import int8 as convert  # noqa: E402
from edgerank.convert.onnx_export import export_onnx  # noqa: E402
from edgerank.quality.fidelity import backend_scorer, measure  # noqa: E402
from tests.support import minilm_ce  # noqa: E402


def _dynamic(fp32: Path, out: Path, fused: bool, reduce_range: bool = False) -> None:
    """onnxruntime's stock quantize_dynamic: per-tensor activation scales over the batch."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = fp32
    if fused:
        src = out.with_name(out.stem + ".fused.onnx")
        onnx.save(convert._fused(fp32), str(src))
    quantize_dynamic(
        str(src), str(out), weight_type=QuantType.QInt8, per_channel=True,
        reduce_range=reduce_range, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )  # fmt: skip


def _nbits(fp32: Path, out: Path, block: int) -> None:
    """MatMulNBits 8-bit, symmetric blocks, accuracy_level 4 (int8 compute, Q8_0-like)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        convert._fused(fp32), bits=8, block_size=block, is_symmetric=True, accuracy_level=4
    )
    q.process()
    onnx.save(q.model.model, str(out))


def _fused_fp32(fp32: Path, out: Path) -> None:
    import onnx

    onnx.save(convert._fused(fp32), str(out))


RECIPES = {
    "ort-fp32": lambda fp32, out: out.write_bytes(fp32.read_bytes()),
    "ort-fp32-fused": _fused_fp32,
    "dynamic-s8": lambda fp32, out: _dynamic(fp32, out, fused=False),
    "dynamic-s8-fused": lambda fp32, out: _dynamic(fp32, out, fused=True),
    "nbits8-b32-acc4": lambda fp32, out: _nbits(fp32, out, 32),
    "nbits8-b128-acc4": lambda fp32, out: _nbits(fp32, out, 128),
    "shipped": lambda fp32, out: convert.quantize_int8(fp32, out),
    "token-v1": lambda fp32, out: convert.quantize_int8(
        fp32, out, {"name": "w8a8-token-smooth-v1", "ffn_down_fp32": False}
    ),
    "token-symmetric": lambda fp32, out: convert.quantize_int8(
        fp32, out, {"activations": "symmetric"}
    ),
    "token-no-smooth": lambda fp32, out: convert.quantize_int8(fp32, out, {"smooth_alpha": None}),
    "token-all-layers": lambda fp32, out: convert.quantize_int8(
        fp32, out, {"first_token_last_layer": False, "last_layer_fp32": False}
    ),
}
DEFAULT = [
    "ort-fp32", "ort-fp32-fused", "dynamic-s8-fused", "nbits8-b32-acc4", "token-v1", "shipped",
]  # fmt: skip


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _speed(files: dict[str, Path], ckpt: Path, threads: int, reps: int) -> dict[str, float]:
    """Median seconds per 32 x 128 batch; torch fp32 and bf16 timed in the same loop."""
    import torch

    torch.set_num_threads(threads)
    ref = minilm_ce.torch_scorer(ckpt)
    ids, mask, types = minilm_ce._batch(ref.tokenizer, minilm_ce.long_pairs())
    assert tuple(ids.shape) == (32, 128), ids.shape
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    feed["token_type_ids"] = types.numpy()
    targs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    model = ref.model

    def torch_fp32():
        with torch.inference_mode():
            model(**targs)

    def torch_bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(**targs)

    runs = {"torch-fp32": torch_fp32, "torch-bf16": torch_bf16}
    for name, path in files.items():
        sess = _session(path, threads)
        wanted = {i.name for i in sess.get_inputs()}
        f = {k: v for k, v in feed.items() if k in wanted}
        runs[name] = lambda s=sess, f=f: s.run(None, f)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up: allocations, kernel packing
        fn()
    for _ in range(reps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _single_pair(path: Path, ckpt: Path, threads: int, reps: int) -> float:
    sess = _session(path, threads)
    tok = minilm_ce.load_tokenizer(ckpt)
    ids, mask, types = minilm_ce._batch(tok, minilm_ce.long_pairs()[:1])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    feed["token_type_ids"] = types.numpy()
    sess.run(None, feed)
    t = []
    for _ in range(reps * 5):
        t0 = time.perf_counter()
        sess.run(None, feed)
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--recipes", nargs="+", default=DEFAULT, choices=sorted(RECIPES))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--groups", type=int, default=60)
    ap.add_argument("--no-fidelity", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgerank-bench-int8"))
    args = ap.parse_args(argv)

    ckpt = minilm_ce.build_minilm_cross_encoder(args.workdir / "minilm-ce")
    onnx_dir = args.workdir / "onnx"
    fp32 = onnx_dir / "model.onnx"
    if not fp32.exists():
        export_onnx(ckpt, onnx_dir)
    files: dict[str, Path] = {}
    for name in args.recipes:
        out = onnx_dir / f"{name}.onnx"
        t0 = time.perf_counter()
        RECIPES[name](fp32, out)
        files[name] = out
        mb = out.stat().st_size / 2**20
        print(f"built {name}: {mb:.1f} MB in {time.perf_counter() - t0:.1f} s", flush=True)

    speed = {t: _speed(files, ckpt, t, args.reps) for t in args.threads}
    fid: dict[str, dict] = {}
    if not args.no_fidelity:
        ref = minilm_ce.torch_scorer(ckpt, threads=args.threads[-1])
        groups = minilm_ce.query_groups(args.groups, 12)
        cache: dict[int, np.ndarray] = {}

        def cached_ref(pairs):  # the torch reference is the same for every candidate
            key = hash(tuple(pairs))
            if key not in cache:
                cache[key] = ref(pairs)
            return cache[key]

        for name, path in files.items():
            cand = backend_scorer(OnnxBackend.from_file(path, 128, threads=args.threads[-1]))
            fid[name] = measure(cached_ref, cand, groups)
        with_bf16 = _bf16_fidelity(ckpt, groups, cached_ref)
        fid["torch-bf16"] = with_bf16

    cols = " | ".join(f"{t} thr ms | x fp32" for t in args.threads)
    print(f"\n| candidate | {cols} | Spearman | top-1 kept | max |diff| | batch gap |")
    print("|---" * (1 + 2 * len(args.threads) + 4) + "|")
    for name in ["torch-fp32", "torch-bf16", *files]:
        cells = []
        for t in args.threads:
            s = speed[t][name]
            cells.append(f"{s * 1000:.0f} | {speed[t]['torch-fp32'] / s:.2f}")
        f = fid.get(name)
        tail = (
            f"{f['spearman_mean']:.4f} | {f['top1_kept']:.3f} | {f['max_abs_diff']:.3f} | "
            f"{f['batch_gap']:.1e}"
            if f
            else ("(reference) | | |" if name == "torch-fp32" else "- | - | - | -")
        )
        print(f"| {name} | {' | '.join(cells)} | {tail} |")
    if "shipped" in files:
        for t in args.threads:
            ms = _single_pair(files["shipped"], ckpt, t, args.reps) * 1000
            print(f"single pair (128 tokens), shipped, {t} thread(s): {ms:.1f} ms")


def _bf16_fidelity(ckpt: Path, groups, ref) -> dict:
    import torch

    scorer = minilm_ce.torch_scorer(ckpt)
    model = scorer.model

    def bf16(pairs):
        ids, mask, types = minilm_ce._batch(scorer.tokenizer, pairs)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        return out[:, 0].float().numpy()

    return measure(ref, bf16, groups)


if __name__ == "__main__":
    main()
