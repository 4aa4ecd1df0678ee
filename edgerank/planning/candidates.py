"""Candidates and their evaluation: every (model, backend, precision, device) the catalog allows,
with each reason to refuse it (language, licence, remote code, install, memory, policy).

Records live here, apart from the ranking, so that the ranking and the explanation can be
read (and tested) without the evaluation rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

from edgerank.catalog import quants
from edgerank.catalog.spec import ModelSpec
from edgerank.hardware.facts import Gpu, Hardware
from edgerank.planning.memory import (
    CPU_TOKEN_BUDGETS,
    TORCH_CUDA_HOST_MIB,
    full_batch_need,
    memory_need,
)

if TYPE_CHECKING:
    from edgerank.planning.measured import Measured

#: (model, backend, precision, device) -> what calibration measured for it
Calibration = Mapping[tuple[str, str, str, str], "Measured"]


Prefer = Literal["quality", "speed"]


#: what the base install provides (onnxruntime is a base dependency)
DEFAULT_BACKENDS: frozenset[str] = frozenset({"onnx", "biencoder"})


#: an LLM reranker on the CPU must fit in this share of the memory budget at the full batch
LLM_CPU_RAM_SHARE = 0.5


BF16_ISA = frozenset({"amx_bf16", "avx512_bf16"})


#: pip extra that brings each optional backend
EXTRAS = {"gguf": "gguf", "torch": "cuda"}


PRECISION_ORDER = ("fp16", "bf16", "int8", *quants.SERVED, "fp32")


@dataclass(frozen=True)
class Wishes:
    languages: tuple[str, ...] = ("en",)
    #: None = whatever the hardware leaves
    memory_ceiling_mib: int | None = None
    prefer: Prefer = "quality"
    #: a forced catalog model / backend, or None to let choose() decide
    model: str | None = None
    backend: str | None = None
    allow_non_commercial: bool = False
    allow_remote_code: bool = False


@dataclass(frozen=True)
class Candidate:
    model: str
    backend: str
    precision: str
    device: str

    def __str__(self) -> str:
        return f"{self.model} {self.backend}/{self.precision} on {self.device}"


class Verdict(NamedTuple):
    candidate: Candidate
    accepted: bool
    reason: str


@dataclass(frozen=True)
class Choice:
    model: ModelSpec
    backend: str
    precision: str
    device: str  # "cpu" | "cuda:0"
    threads: int
    #: padded tokens per batch: the memory budget's, or a smaller measured-faster one
    batch_token_budget: int
    #: estimated need and the budget it was checked against (host RAM, or free VRAM on cuda)
    memory_need_mib: int
    memory_budget_mib: int
    #: the quality figure that ranked it (None: no published figure) and its group
    quality: float | None
    quality_group: str
    wishes: Wishes
    #: one entry per candidate considered: the accepted one first, then every rejection
    reasons: tuple[Verdict, ...]
    #: things the user should know (fallback, remote code, a language not listed...)
    warnings: tuple[str, ...] = ()
    #: `edgerank pull NAME` when a better model would run here once installed (the
    #: composition root replaces it with a command this install can run, and says why)
    suggestion: str | None = None
    suggestion_why: str = ""
    #: calibration figures of the chosen model's candidates on this machine, best first
    measured: tuple[Measured, ...] = ()
    #: pairs per batch at most (None = no cap), from the same shape as batch_token_budget
    batch_max_pairs: int | None = None
    #: the shape is the fastest calibration measured within the memory budget (else the
    #: memory budget itself, without a cap), and the words that say so
    batch_measured: bool = False
    batch_reason: str = ""

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.model.name, self.backend, self.precision, self.device)


def covers(spec: ModelSpec, language: str) -> bool:
    """'multi' models cover everything; a 'multi' wish needs a 'multi' model."""
    return "multi" in spec.languages or language in spec.languages


def quality_group(languages: tuple[str, ...]) -> str:
    groups = {lang if lang in ("en", "zh") else "multi" for lang in languages}
    return groups.pop() if len(groups) == 1 else "multi"


def quality_for(spec: ModelSpec, languages: tuple[str, ...]) -> float | None:
    """The weakest figure over the wished languages' groups; a missing group uses 'multi'."""
    values = []
    for lang in languages:
        group = lang if lang in ("en", "zh") else "multi"
        value = spec.quality.get(group, spec.quality.get("multi"))
        if value is None:
            return None
        values.append(value)
    return min(values)


def extra_hint(backend: str, device: str | None = None) -> str:
    """The pip command that brings ``backend``; torch for a CPU comes from the convert
    extra's pinned CPU wheel (the cuda extra's unpinned torch pulls CUDA's libraries)."""
    if backend == "torch" and device == "cpu":
        return "pip install 'edgerank[convert]': torch's CPU wheel"
    extra = EXTRAS.get(backend)
    if extra:
        return f"pip install 'edgerank[{extra}]'"
    return "reinstall edgerank"


@dataclass
class Evaluation:
    spec: ModelSpec
    cand: Candidate
    quality: float | None
    #: (code, message); the first one is the reason shown
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    need_mib: int = 0
    budget_mib: int = 0
    tokens: int = 0
    measured: Measured | None = None

    @property
    def viable(self) -> bool:
        return not self.failures

    @property
    def is_fallback(self) -> bool:
        return self.spec.kind == "bi-encoder"

    @property
    def on_gpu(self) -> bool:
        return self.cand.device != "cpu"


@dataclass(frozen=True)
class Context:
    wishes: Wishes
    ram_budget: int
    gpu: Gpu | None
    installed_backends: frozenset[str]
    installed_models: Mapping[str, frozenset[str] | None] | None
    forced: ModelSpec | None
    calibration: Calibration | None = None


def cpu_precision(hardware: Hardware) -> str:
    """BF16 on a CPU only with AMX/AVX512-BF16 (it is slower than FP32 without them)."""
    return "bf16" if hardware.isa & BF16_ISA else "fp32"


def torch_placement(hardware: Hardware) -> tuple[str, str, str]:
    """(device, precision, CPU precision) for torch on this machine: FP16 on the GPU with the
    most free VRAM, else the CPU precision; the CPU one is the fallback if CUDA fails."""
    cpu = cpu_precision(hardware)
    if hardware.gpus:
        gpu = max(hardware.gpus, key=lambda g: g.vram_free_mib)
        return f"cuda:{gpu.index}", "fp16", cpu
    return "cpu", cpu, cpu


def candidates_for(spec: ModelSpec, hw: Hardware, gpu: Gpu | None) -> list[Candidate]:
    out = []
    for backend in spec.backends:
        if backend == "onnx":
            out.append(Candidate(spec.name, backend, "int8", "cpu"))
        elif backend == "gguf":
            files = spec.gguf.files if spec.gguf else {}
            for q in quants.SERVED:
                if q in spec.memory_mib and (not files or q in files):
                    out.append(Candidate(spec.name, backend, q, "cpu"))
        elif backend == "torch":
            if gpu is not None:
                out.append(Candidate(spec.name, backend, "fp16", f"cuda:{gpu.index}"))
            out.append(Candidate(spec.name, backend, cpu_precision(hw), "cpu"))
        elif backend == "biencoder":
            mem = spec.memory_mib
            precision = "int8" if "int8" in mem else min(mem, key=PRECISION_ORDER.index)
            out.append(Candidate(spec.name, backend, precision, "cpu"))
    return out


def _needs_remote_code(spec: ModelSpec, backend: str) -> bool:
    """Hub modelling code runs for torch, and for an ONNX export; ready files need none."""
    if not spec.remote_code:
        return False
    if backend == "torch":
        return True
    if backend == "onnx":
        return spec.onnx is None or spec.onnx.int8_file is None
    return False


def _is_installed(ctx: Context, spec: ModelSpec, backend: str) -> bool:
    if ctx.installed_models is None or spec.kind == "bi-encoder":
        return True
    if spec.name not in ctx.installed_models:
        return False
    backends = ctx.installed_models[spec.name]
    return backends is None or backend in backends


def evaluate(spec: ModelSpec, cand: Candidate, ctx: Context) -> Evaluation:
    w = ctx.wishes
    e = Evaluation(spec, cand, quality_for(spec, w.languages))
    if ctx.calibration:
        e.measured = ctx.calibration.get((cand.model, cand.backend, cand.precision, cand.device))
    forced_model = ctx.forced is not None

    def fail(code: str, message: str, soft: bool = False) -> None:
        if soft:
            e.warnings.append(f"{spec.name}: {message}")
        else:
            e.failures.append((code, message))

    if ctx.forced is not None and spec.name != ctx.forced.name:
        fail("forced", f"not the requested model ({ctx.forced.name})")
    if w.backend is not None and cand.backend != w.backend:
        fail("forced", f"not the requested backend ({w.backend})")

    missing = [lang for lang in w.languages if not covers(spec, lang)]
    if missing:
        message = f"covers {', '.join(spec.languages)}, not {', '.join(missing)}"
        if e.is_fallback and not forced_model:
            e.warnings.append(f"the fallback {spec.name} {message}: ranking will be poor")
        else:
            fail("language", message, soft=forced_model)
    if spec.non_commercial and not w.allow_non_commercial:
        fail(
            "licence",
            f"licence {spec.licence} is non-commercial (opt in with --allow-non-commercial)",
        )
    if _needs_remote_code(spec, cand.backend):
        if w.allow_remote_code:
            e.warnings.append(
                f"{spec.name} on {cand.backend} runs modelling code from the hub "
                "(trust_remote_code, allowed by --allow-remote-code)"
            )
        else:
            fail(
                "remote-code",
                f"runs modelling code from the hub on {cand.backend} "
                "(trust_remote_code; opt in with --allow-remote-code)",
            )
    if cand.backend not in ctx.installed_backends:
        hint = extra_hint(cand.backend, cand.device)
        fail("backend", f"backend {cand.backend} is not installed ({hint})")
    if not _is_installed(ctx, spec, cand.backend):
        fail("store", f"not in the model store (run `edgerank pull {spec.name}`)")

    if spec.is_llm and not e.on_gpu:
        if cand.backend != "gguf":
            fail(
                "policy",
                f"LLM rerankers run on the CPU only through gguf; {cand.backend} on a CPU "
                "is too slow",
                soft=forced_model,
            )
        elif w.prefer == "speed":
            fail("policy", "LLM reranker on the CPU is slow: skipped with prefer=speed",
                 soft=forced_model)  # fmt: skip

    if e.on_gpu:
        assert ctx.gpu is not None
        e.budget_mib = ctx.gpu.vram_free_mib
        if ctx.ram_budget < TORCH_CUDA_HOST_MIB:
            fail(
                "memory",
                f"torch with CUDA needs ~{TORCH_CUDA_HOST_MIB} MiB of host RAM, "
                f"budget {ctx.ram_budget} MiB",
            )
    else:
        e.budget_mib = ctx.ram_budget
    e.need_mib, e.tokens, breakdown = memory_need(
        spec, cand.backend, cand.precision, e.on_gpu, e.budget_mib
    )
    where = f"free VRAM on {cand.device}" if e.on_gpu else "memory budget"
    if e.need_mib > e.budget_mib:
        fail("memory", f"needs ~{e.need_mib} MiB ({breakdown}), {where} {e.budget_mib} MiB")
    elif spec.is_llm and not e.on_gpu and cand.backend == "gguf":
        full = full_batch_need(spec, cand.backend, cand.precision)
        share = int(e.budget_mib * LLM_CPU_RAM_SHARE)
        if full > share:
            fail(
                "policy",
                f"LLM reranker on the CPU only with plentiful RAM: needs ~{full} MiB at "
                f"{CPU_TOKEN_BUDGETS[0]} tokens, more than half the budget ({share} MiB)",
                soft=forced_model,
            )
    return e
