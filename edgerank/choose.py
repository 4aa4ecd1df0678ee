"""choose(catalog, hardware, wishes) -> the model, backend and precision to run, with reasons.

A pure function: no probing, no I/O, no imports of runtimes. Everything it knows comes from
its arguments, so every decision is testable with hand-built Hardware records.

How a choice is made
--------------------
1. Every (model, backend, precision, device) the catalog allows is a candidate: onnx runs
   int8 on the CPU; gguf runs q8_0, or q4_k_m for the quants the catalog has a size for;
   torch runs fp16 on the GPU with the most free VRAM, and on the CPU bf16 only where the
   ISA has amx_bf16 or avx512_bf16, else fp32 (never fp16/bf16 on a CPU without them).
2. A candidate is rejected, with a reason, when it misses a wished language, has a
   non-commercial licence or needs hub code without the opt-in (torch, or an ONNX export;
   a ready ONNX or GGUF file runs no hub code), its backend or model is not installed, or
   it does not fit memory (below). LLM rerankers run on the CPU only through
   gguf, only with prefer="quality", and only when they fit in half the memory budget at
   the full batch: a 0.6-8B LLM scores pairs far slower on a CPU than an encoder does.
3. Memory need = weights at that precision (catalog) + activations for the batch token
   budget + runtime overhead. Activations follow models.md's "0.3-0.55 GB at batch 16 x 512
   tokens (fp32)" for hidden 384..1024, i.e. 37.5..68.75 KiB per token, linear in the hidden
   size; half of it at fp16/bf16; the gguf path of an LLM adds its KV cache per token
   (catalog, else as much again as the activations). The token budget starts at 16 x 512
   (CPU) or 32 x 512 (GPU) and halves down to 512 until the need fits.
4. The survivors are ranked, the bi-encoder fallback always last. prefer="quality": the
   highest published quality for the wished languages (catalog scale), then GPU before CPU,
   then the model's own backend order, then precision (q8_0 before q4_k_m, so q4 only when
   RAM is tight), then the least compute. prefer="speed": among candidates within
   SPEED_SLACK quality points of the best one on the same device, the least compute per
   token (12 x layers x hidden^2), which is what a CPU's latency follows.
   Calibration (`edgerank probe --calibrate`, calibrate.py) replaces the model's own backend
   order with measurements on this machine: candidates of a model whose fidelity measured
   poorly against fp32 come after the faithful ones, then the faster measured pairs/s
   first; unmeasured candidates sit between the two and keep the catalog order. A measured
   choice runs at the thread count that measured fastest.
   When the GPU's best candidate is at least as good as the best CPU encoder, LLM
   rerankers stay off the CPU, so a 4B LLM on the CPU never displaces a 0.6B one on the
   GPU. This is the one place where more memory (VRAM, with gguf installed and plentiful
   RAM) can give a lower figure: latency wins there. A GPU with too little free VRAM for a
   model that good does not push a better CPU model aside (quality ranks before device).
5. A forced model or backend is honoured or refused with InvalidInput that says why; for a
   forced model, a language it does not list and the LLM-on-CPU policy are warnings only.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

from edgerank.catalog import BACKENDS, Catalog, ModelSpec
from edgerank.errors import InvalidInput
from edgerank.probe import Gpu, Hardware, recommended_threads

if TYPE_CHECKING:
    from edgerank.calibrate import Measured

#: (model, backend, precision, device) -> what calibration measured for it
Calibration = Mapping[tuple[str, str, str, str], "Measured"]

Prefer = Literal["quality", "speed"]

#: what the base install provides (onnxruntime is a base dependency)
DEFAULT_BACKENDS: frozenset[str] = frozenset({"onnx", "biencoder"})
#: process overhead besides weights and activations (python + runtime), MiB
RUNTIME_OVERHEAD_MIB = {"onnx": 150, "biencoder": 150, "gguf": 150, "torch": 400}
#: host RAM a torch process with a CUDA context needs, MiB
TORCH_CUDA_HOST_MIB = 1024
#: VRAM kept free for the CUDA context and allocator slack, MiB
VRAM_RESERVE_MIB = 512
CPU_TOKEN_BUDGETS = (8192, 4096, 2048, 1024, 512)
GPU_TOKEN_BUDGETS = (16384, 8192, 4096, 2048, 1024, 512)
#: prefer="speed" trades at most this many quality points for less compute
SPEED_SLACK = 2.0
#: an LLM reranker on the CPU must fit in this share of the memory budget at the full batch
LLM_CPU_RAM_SHARE = 0.5
#: assumed hidden size where the catalog has none (only an 8B LLM today): errs large
UNKNOWN_HIDDEN = 4096
BF16_ISA = frozenset({"amx_bf16", "avx512_bf16"})
#: pip extra that brings each optional backend
EXTRAS = {"gguf": "gguf", "torch": "cuda"}

_GGUF_QUANTS = ("q8_0", "q4_k_m")
_PRECISION_ORDER = ("fp16", "bf16", "int8", "q8_0", "q4_k_m", "fp32")


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
    #: `edgerank pull NAME` when a better model would run here once installed
    suggestion: str | None = None
    #: calibration figures of the chosen model's candidates on this machine, best first
    measured: tuple[Measured, ...] = ()

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.model.name, self.backend, self.precision, self.device)


# ------------------------------------------------------------------------------ helpers


def activation_kib_per_token(hidden: int | None) -> float:
    """fp32 activations per batch token (models.md: 0.3-0.55 GB at 16 x 512, hidden 384-1024)."""
    h = hidden or UNKNOWN_HIDDEN
    return max(16.0, 37.5 + (h - 384) * 31.25 / 640)


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


def _extra_hint(backend: str) -> str:
    extra = EXTRAS.get(backend)
    if extra:
        return f"pip install 'edgerank[{extra}]'"
    return "reinstall edgerank"


# --------------------------------------------------------------------------- evaluation


@dataclass
class _Eval:
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
class _Context:
    wishes: Wishes
    ram_budget: int
    gpu: Gpu | None
    installed_backends: frozenset[str]
    installed_models: Mapping[str, frozenset[str] | None] | None
    forced: ModelSpec | None
    calibration: Calibration | None = None


def _candidates(spec: ModelSpec, hw: Hardware, gpu: Gpu | None) -> list[Candidate]:
    out = []
    for backend in spec.backends:
        if backend == "onnx":
            out.append(Candidate(spec.name, backend, "int8", "cpu"))
        elif backend == "gguf":
            files = spec.gguf.files if spec.gguf else {}
            for q in _GGUF_QUANTS:
                if q in spec.memory_mib and (not files or q in files):
                    out.append(Candidate(spec.name, backend, q, "cpu"))
        elif backend == "torch":
            if gpu is not None:
                out.append(Candidate(spec.name, backend, "fp16", f"cuda:{gpu.index}"))
            cpu_precision = "bf16" if hw.isa & BF16_ISA else "fp32"
            out.append(Candidate(spec.name, backend, cpu_precision, "cpu"))
        elif backend == "biencoder":
            mem = spec.memory_mib
            precision = "int8" if "int8" in mem else min(mem, key=_PRECISION_ORDER.index)
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


def _is_installed(ctx: _Context, spec: ModelSpec, backend: str) -> bool:
    if ctx.installed_models is None or spec.kind == "bi-encoder":
        return True
    if spec.name not in ctx.installed_models:
        return False
    backends = ctx.installed_models[spec.name]
    return backends is None or backend in backends


def _memory(e: _Eval) -> tuple[int, int, str]:
    """(need, tokens, breakdown) at the largest token budget that fits; smallest if none."""
    spec, cand = e.spec, e.cand
    weights = weights_mib(spec, cand.precision)
    per_token = activation_kib_per_token(spec.hidden)
    if cand.precision in ("fp16", "bf16"):
        per_token /= 2
    if cand.backend == "gguf" and spec.is_llm:
        per_token += spec.kv_cache_kib_per_token or per_token
    if e.on_gpu:
        budgets, overhead, budget = GPU_TOKEN_BUDGETS, VRAM_RESERVE_MIB, e.budget_mib
    else:
        budgets, budget = CPU_TOKEN_BUDGETS, e.budget_mib
        overhead = RUNTIME_OVERHEAD_MIB[cand.backend]
    for tokens in budgets:
        act = math.ceil(per_token * tokens / 1024)
        need = weights + act + overhead
        if need <= budget or tokens == budgets[-1]:
            what = "VRAM reserve" if e.on_gpu else "runtime"
            breakdown = (
                f"weights {weights} + activations {act} at {tokens} tokens + {what} {overhead}"
            )
            return need, tokens, breakdown
    raise AssertionError("unreachable")


def _evaluate(spec: ModelSpec, cand: Candidate, ctx: _Context) -> _Eval:
    w = ctx.wishes
    e = _Eval(spec, cand, quality_for(spec, w.languages))
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
        fail("backend", f"backend {cand.backend} is not installed ({_extra_hint(cand.backend)})")
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
    e.need_mib, e.tokens, breakdown = _memory(e)
    where = f"free VRAM on {cand.device}" if e.on_gpu else "memory budget"
    if e.need_mib > e.budget_mib:
        fail("memory", f"needs ~{e.need_mib} MiB ({breakdown}), {where} {e.budget_mib} MiB")
    elif spec.is_llm and not e.on_gpu and cand.backend == "gguf":
        full = _full_batch_need(e)
        share = int(e.budget_mib * LLM_CPU_RAM_SHARE)
        if full > share:
            fail(
                "policy",
                f"LLM reranker on the CPU only with plentiful RAM: needs ~{full} MiB at "
                f"{CPU_TOKEN_BUDGETS[0]} tokens, more than half the budget ({share} MiB)",
                soft=forced_model,
            )
    return e


def _full_batch_need(e: _Eval) -> int:
    spec, cand = e.spec, e.cand
    per_token = activation_kib_per_token(spec.hidden)
    per_token += spec.kv_cache_kib_per_token or per_token
    act = math.ceil(per_token * CPU_TOKEN_BUDGETS[0] / 1024)
    return weights_mib(spec, cand.precision) + act + RUNTIME_OVERHEAD_MIB[cand.backend]


# ------------------------------------------------------------------------------ ranking


def _precision_rank(e: _Eval) -> int:
    return _PRECISION_ORDER.index(e.cand.precision)


def _q(e: _Eval) -> float:
    return -1.0 if e.quality is None else e.quality


def _backend_order(e: _Eval) -> tuple:
    """Measured candidates by fidelity then speed; unmeasured ones in the catalog's order."""
    catalog = e.spec.backends.index(e.cand.backend)  # type: ignore[arg-type]
    m = e.measured
    if m is None:
        return (1, 0.0, catalog)
    return (0 if m.fidelity_ok else 2, -m.best_pairs_per_s, catalog)


def _quality_key(e: _Eval) -> tuple:
    return (
        e.is_fallback,
        e.quality is None,
        -_q(e),
        not e.on_gpu,
        _backend_order(e),
        _precision_rank(e),
        compute_cost(e.spec),
        e.spec.name,
    )


def _gpu_policy(evals: list[_Eval], forced: bool) -> None:
    """Keep LLM rerankers off the CPU when the GPU serves a model as good as any CPU encoder.

    Quality ranks first and GPU breaks ties, so a GPU with little free VRAM never pushes a
    better CPU model aside; only the slow CPU LLMs give way to a good GPU candidate.
    """
    viable = [e for e in evals if e.viable and not e.is_fallback]
    gpu = [_q(e) for e in viable if e.on_gpu]
    cpu_encoders = [_q(e) for e in viable if not e.on_gpu and not e.spec.is_llm]
    if not gpu or max(gpu) < max(cpu_encoders, default=-1.0):
        return
    for e in evals:
        if e.viable and e.spec.is_llm and not e.on_gpu:
            message = "the GPU serves a reranker as good as any CPU encoder: LLMs stay off the CPU"
            if forced:
                e.warnings.append(f"{e.spec.name}: {message}")
            else:
                e.failures.append(("policy", message))


def _speed_key(e: _Eval) -> tuple:
    return (
        compute_cost(e.spec),
        -(e.quality or 0.0),
        _backend_order(e),
        _precision_rank(e),
        e.spec.name,
    )


def _rank(viable: list[_Eval], prefer: str) -> tuple[list[_Eval], set[int]]:
    """Best first; for speed, also the ids of the candidates within the slack of the best."""
    ranked = sorted(viable, key=_quality_key)
    if prefer != "speed" or not ranked or ranked[0].is_fallback or ranked[0].quality is None:
        return ranked, set()
    top = ranked[0]
    assert top.quality is not None
    near = [
        e
        for e in ranked
        if not e.is_fallback
        and e.on_gpu == top.on_gpu
        and e.quality is not None
        and e.quality >= top.quality - SPEED_SLACK
    ]
    pick = min(near, key=_speed_key)
    ranked.remove(pick)
    return [pick, *ranked], {id(e) for e in near}


def _why_not(e: _Eval, best: _Eval, near: set[int], top_q: float | None, group: str) -> str:
    """Why a candidate that fits was not the choice (``top_q``: best quality on offer)."""
    fits = f"fits (~{e.need_mib} MiB)"
    if e.is_fallback:
        return f"{fits}, but the bi-encoder fallback is the last resort"
    if best.on_gpu and not e.on_gpu and (e.quality or 0.0) >= (best.quality or 0.0):
        return f"{fits}, but the GPU runs {best.spec.name} first"
    if e.spec.name == best.spec.name:
        first = f"{best.cand.backend}/{best.cand.precision}"
        if e.measured is not None and best.measured is not None:
            if not e.measured.fidelity_ok:
                return f"{fits}, but its fidelity measured poorly ({e.measured.summary()})"
            return (
                f"{fits}, but {first} measured faster ({best.measured.best_pairs_per_s:.0f} vs "
                f"{e.measured.best_pairs_per_s:.0f} pairs/s)"
            )
        return f"{fits}, but {first} comes first for this model"
    if id(e) in near:
        return (
            f"{fits} and within {SPEED_SLACK:g} quality points, but needs more compute "
            f"(~{compute_cost(e.spec):.0f} vs {compute_cost(best.spec):.0f} M multiply-adds/token)"
        )
    if e.quality is None:
        return f"{fits}, but has no published quality figure for {group}"
    if near and top_q is not None:
        return (
            f"{fits}, but quality {e.quality:.2f} is more than {SPEED_SLACK:g} points below "
            f"the best ({top_q:.2f}, {group})"
        )
    if best.quality is not None and e.quality < best.quality:
        return f"{fits}, but quality {e.quality:.2f} < {best.quality:.2f} ({group})"
    return f"{fits}, but ranks below the choice (same quality, more compute or a later backend)"


# -------------------------------------------------------------------------------- entry


def _check_wishes(w: Wishes) -> None:
    if not w.languages:
        raise InvalidInput("at least one language is needed (e.g. en)")
    for lang in w.languages:
        if lang != "multi" and not (lang.isalpha() and lang.islower() and 2 <= len(lang) <= 3):
            raise InvalidInput(f"language {lang!r} is not a lower-case ISO code (en, zh, de...)")
    if w.prefer not in ("quality", "speed"):
        raise InvalidInput(f"prefer must be quality or speed, not {w.prefer!r}")
    if w.memory_ceiling_mib is not None and w.memory_ceiling_mib <= 0:
        raise InvalidInput(f"memory ceiling must be positive, got {w.memory_ceiling_mib} MiB")
    if w.backend is not None and w.backend not in BACKENDS:
        raise InvalidInput(f"unknown backend {w.backend!r} (known: {', '.join(BACKENDS)})")


def _normalise_installed(
    installed: Collection[str] | Mapping[str, Collection[str]] | None,
) -> Mapping[str, frozenset[str] | None] | None:
    """name -> backends (None = any); accepts a store's {name: [backends]} or plain names."""
    if installed is None:
        return None
    if isinstance(installed, Mapping):
        return {name: frozenset(b) if b else None for name, b in installed.items()}
    return {name: None for name in installed}


def choose(
    catalog: Catalog,
    hardware: Hardware,
    wishes: Wishes | None = None,
    installed_backends: Collection[str] = DEFAULT_BACKENDS,
    installed_models: Collection[str] | Mapping[str, Collection[str]] | None = None,
    calibration: Calibration | None = None,
) -> Choice:
    """Pick what to run. ``installed_models`` None = any catalog model (it can be pulled);
    the catalog's bi-encoder counts as installed (it is embedded). ``calibration``: what
    `edgerank probe --calibrate` measured on this machine (calibrate.lookup)."""
    w = wishes or Wishes()
    _check_wishes(w)
    forced = catalog.get(w.model) if w.model else None  # ModelNotFound with suggestions
    if forced is not None and w.backend is not None and w.backend not in forced.backends:
        raise InvalidInput(
            f"{forced.name} cannot run on {w.backend}: its backends are "
            f"{', '.join(forced.backends)}"
        )
    if w.backend is not None and w.backend not in installed_backends:
        raise InvalidInput(f"backend {w.backend} is not installed: {_extra_hint(w.backend)}")

    ram_budget = hardware.memory_budget_mib
    if w.memory_ceiling_mib is not None:
        ram_budget = min(ram_budget, w.memory_ceiling_mib)
    gpu = max(hardware.gpus, key=lambda g: g.vram_free_mib, default=None)
    ctx = _Context(
        wishes=w,
        ram_budget=ram_budget,
        gpu=gpu,
        installed_backends=frozenset(installed_backends),
        installed_models=_normalise_installed(installed_models),
        forced=forced,
        calibration=calibration,
    )
    evals = [_evaluate(spec, c, ctx) for spec in catalog for c in _candidates(spec, hardware, gpu)]
    _gpu_policy(evals, forced is not None)
    ranked, near = _rank([e for e in evals if e.viable], w.prefer)
    if not ranked:
        raise InvalidInput(_nothing_fits(evals, ctx))
    best = ranked[0]
    group = quality_group(w.languages)
    top_q = max((e.quality for e in ranked if e.quality is not None), default=None)

    verdicts = [Verdict(best.cand, True, _accept_reason(best, w, group))]
    for e in evals:
        if e is best:
            continue
        reason = e.failures[0][1] if e.failures else _why_not(e, best, near, top_q, group)
        verdicts.append(Verdict(e.cand, False, reason))

    warnings = list(best.warnings)
    suggestion = _suggest(evals, best)
    if best.is_fallback:
        warnings.insert(
            0,
            f"no reranker can run here as asked: using the embedded bi-encoder {best.spec.name} "
            "(lowest quality)",
        )
    measured = sorted(
        (e for e in evals if e.spec.name == best.spec.name and e.measured is not None),
        key=lambda e: (e is not best, _backend_order(e)),
    )
    threads = recommended_threads(hardware)
    if best.measured is not None:
        threads = best.measured.best_threads
    return Choice(
        model=best.spec,
        backend=best.cand.backend,
        precision=best.cand.precision,
        device=best.cand.device,
        threads=threads,
        batch_token_budget=best.tokens,
        memory_need_mib=best.need_mib,
        memory_budget_mib=best.budget_mib,
        quality=best.quality,
        quality_group=group,
        wishes=w,
        reasons=tuple(verdicts),
        warnings=tuple(warnings),
        suggestion=suggestion,
        measured=tuple(e.measured for e in measured if e.measured is not None),
    )


def _accept_reason(e: _Eval, w: Wishes, group: str) -> str:
    q = "no published quality" if e.quality is None else f"quality {e.quality:.2f} ({group})"
    if w.model:
        how = "the requested model"
    elif e.is_fallback:
        how, q = "last resort", "the embedded bi-encoder, works offline"
    elif w.prefer == "speed":
        how = f"least compute within {SPEED_SLACK:g} quality points of the best"
    else:
        how = "best quality that fits"
    line = f"{how}: {q}; needs ~{e.need_mib} MiB of {e.budget_mib} MiB at {e.tokens} batch tokens"
    if e.measured is not None:
        line += f"; measured here: {e.measured.summary()}"
    return line


def _suggest(evals: list[_Eval], best: _Eval) -> str | None:
    """The best candidate kept out only by the model store, if it would beat the choice."""
    pulls = [e for e in evals if e.failures and {c for c, _ in e.failures} == {"store"}]
    if not pulls:
        return None
    top = min(pulls, key=_quality_key)
    if _quality_key(top) < _quality_key(best):
        return f"edgerank pull {top.spec.name}"
    return None


def _nothing_fits(evals: list[_Eval], ctx: _Context) -> str:
    forced, backend = ctx.forced, ctx.wishes.backend
    if forced is not None or backend is not None:
        # nearest misses first: the fewest reasons to refuse, then the best
        nearest = sorted(evals, key=lambda e: (len(e.failures), _quality_key(e)))
        mine = [e for e in nearest if all(code != "forced" for code, _ in e.failures)]
        reasons = [f"{e.cand}: {e.failures[0][1]}" for e in mine[:4]]
        what = forced.name if forced is not None else f"any model on {backend}"
        return f"cannot run {what} here: " + "; ".join(reasons or ["no candidate"])
    fallback = [e for e in evals if e.is_fallback]
    if fallback:
        return (
            f"nothing fits a {ctx.ram_budget} MiB budget, not even the embedded bi-encoder: "
            + fallback[0].failures[0][1]
        )
    return f"nothing in the catalog can run here with a {ctx.ram_budget} MiB budget"


def explain(choice: Choice) -> str:
    """The text of `edgerank probe --explain`: the choice, then every rejection and why."""
    lines = [
        f"chosen: {choice.candidate}: {choice.reasons[0].reason}",
        f"  threads {choice.threads}, batch token budget {choice.batch_token_budget}",
    ]
    lines += [f"  warning: {w}" for w in choice.warnings]
    if choice.suggestion:
        lines.append(f"  better once installed: {choice.suggestion}")
    if choice.measured:
        lines.append(f"measured on this machine (edgerank probe --calibrate), {choice.model.name}:")
        lines += [f"  {m.summary()}" for m in choice.measured]
    rejected = [v for v in choice.reasons if not v.accepted]
    if rejected:
        lines.append(f"rejected ({len(rejected)}):")
        width = max(len(str(v.candidate)) for v in rejected)
        lines += [f"  {str(v.candidate):<{width}}  {v.reason}" for v in rejected]
    return "\n".join(lines)
