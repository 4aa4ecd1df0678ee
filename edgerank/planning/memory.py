"""The memory model: what a candidate needs (weights + activations + runtime) at a token budget.

Activations follow models.md's "0.3-0.55 GB at batch 16 x 512 tokens (fp32)" for hidden
384..1024, i.e. 37.5..68.75 KiB per token, linear in the hidden size; half of it at
fp16/bf16; the gguf path of an LLM adds its KV cache per token (catalog, else as much again
as the activations). The token budget starts at 16 x 512 (CPU) or 32 x 512 (GPU) and halves
down to 512 until the need fits. The same figures size the daemon's batches, so the memory
the choice promises is the memory a request can take.
"""

from __future__ import annotations

import math

from edgerank.catalog.spec import ModelSpec

#: process overhead besides weights and activations (python + runtime), MiB
RUNTIME_OVERHEAD_MIB = {"onnx": 150, "biencoder": 150, "gguf": 150, "torch": 400}


#: host RAM a torch process with a CUDA context needs, MiB
TORCH_CUDA_HOST_MIB = 1024


#: VRAM kept free for the CUDA context and allocator slack, MiB
VRAM_RESERVE_MIB = 512
CPU_TOKEN_BUDGETS = (8192, 4096, 2048, 1024, 512)
GPU_TOKEN_BUDGETS = (16384, 8192, 4096, 2048, 1024, 512)


#: assumed hidden size where the catalog has none (only an 8B LLM today): errs large
UNKNOWN_HIDDEN = 4096


def activation_kib_per_token(hidden: int | None) -> float:
    """fp32 activations per batch token (models.md: 0.3-0.55 GB at 16 x 512, hidden 384-1024)."""
    h = hidden or UNKNOWN_HIDDEN
    return max(16.0, 37.5 + (h - 384) * 31.25 / 640)


def compute_cost(spec: ModelSpec) -> float:
    """Multiply-adds per token, in millions (12 x hidden^2 per layer); params when unknown."""
    if spec.layers and spec.hidden:
        return 12 * spec.layers * spec.hidden**2 / 1e6
    return spec.params_m


def weights_mib(spec: ModelSpec, precision: str) -> int:
    mem = spec.memory_mib
    if precision in mem:
        return mem[precision]
    if precision in ("fp16", "bf16"):
        return mem.get("fp16") or math.ceil(mem["fp32"] / 2)
    if precision == "fp32":
        return mem.get("fp32") or mem["fp16"] * 2
    raise KeyError(precision)


def reference_mib(spec: ModelSpec, backend: str, precision: str) -> int:
    """The FP32 graph an ONNX INT8 install keeps beside its INT8 file, for the cascade's
    rescoring of near-ties (engine/cascade.py; on by default, `--no-cascade` drops it): its
    encoder weights, which every rescored passage reads. Its embedding table is left out:
    the install maps the reference's weights from their file (install/onnx.py), and a
    rescore reads a few of its rows (bench/memory.py measures what stays). Counted for
    every ONNX INT8 candidate, so an entry imported without it is planned on the safe side.
    0 for everything else."""
    if backend != "onnx" or precision != "int8" or "fp32" not in spec.memory_mib:
        return 0
    fp32 = weights_mib(spec, "fp32")
    if not (spec.layers and spec.hidden and spec.params_m):
        return fp32
    encoder = 12 * spec.layers * spec.hidden**2 / 1e6  # millions of parameters
    return math.ceil(fp32 * min(1.0, encoder / spec.params_m))


def memory_need(
    spec: ModelSpec, backend: str, precision: str, on_gpu: bool, budget_mib: int
) -> tuple[int, int, str]:
    """(need, tokens, breakdown) at the largest token budget that fits; smallest if none."""
    weights = weights_mib(spec, precision)
    reference = 0 if on_gpu else reference_mib(spec, backend, precision)
    per_token = activation_kib_per_token(spec.hidden)
    if precision in ("fp16", "bf16"):
        per_token /= 2
    if backend == "gguf" and spec.is_llm:
        per_token += spec.kv_cache_kib_per_token or per_token
    if on_gpu:
        budgets, overhead = GPU_TOKEN_BUDGETS, VRAM_RESERVE_MIB
    else:
        budgets, overhead = CPU_TOKEN_BUDGETS, RUNTIME_OVERHEAD_MIB[backend]
    for tokens in budgets:
        act = math.ceil(per_token * tokens / 1024)
        need = weights + reference + act + overhead
        if need <= budget_mib or tokens == budgets[-1]:
            what = "VRAM reserve" if on_gpu else "runtime"
            ref = f" + FP32 reference {reference}" if reference else ""
            breakdown = (
                f"weights {weights}{ref} + activations {act} at {tokens} tokens + {what} {overhead}"
            )
            return need, tokens, breakdown
    raise AssertionError("unreachable")


def full_batch_need(spec: ModelSpec, backend: str, precision: str) -> int:
    """An LLM on the CPU at the largest CPU budget, KV cache included."""
    per_token = activation_kib_per_token(spec.hidden)
    per_token += spec.kv_cache_kib_per_token or per_token
    act = math.ceil(per_token * CPU_TOKEN_BUDGETS[0] / 1024)
    return weights_mib(spec, precision) + act + RUNTIME_OVERHEAD_MIB[backend]


#: an ONNX import at its peak (docs/int8.md, "The import a small box can run"): a fixed
#: part (Python, onnxruntime, onnx, tokenizers, the probe and calibration text) and a
#: multiple of the FP32 graph (the graphs the loop holds at once: fused FP32, smoothed, a
#: candidate, its one-thread twin, the sensitivity switch graph, their sessions)
IMPORT_FIXED_MIB = 750
IMPORT_PER_FP32 = 8.0
#: a checkpoint's export adds torch and the model in it, which stay loaded while the graph
#: is quantized in the same process (MiniLM-L6 from its checkpoint: docs/newcomer.md)
EXPORT_FIXED_MIB = 600
EXPORT_PER_FP32 = 2.0


def import_need_mib(fp32_mib: float, export: bool = False) -> int:
    """Peak memory of quantizing an FP32 graph of ``fp32_mib`` here (``export``: from a
    checkpoint, through torch first)."""
    need = IMPORT_FIXED_MIB + IMPORT_PER_FP32 * fp32_mib
    if export:
        need += EXPORT_FIXED_MIB + EXPORT_PER_FP32 * fp32_mib
    return math.ceil(need)
