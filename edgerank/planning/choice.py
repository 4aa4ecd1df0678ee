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
   Calibration (`edgerank probe --calibrate`, quality/calibrate.py) replaces the model's own backend
   order with measurements on this machine: candidates of a model whose fidelity measured
   poorly against fp32 come after the faithful ones, then the faster measured pairs/s
   first; unmeasured candidates sit between the two and keep the catalog order. A measured
   choice runs at the thread count that measured fastest, and with the batch shape (token
   budget, pair cap) that measured fastest there within the memory's token budget (never
   above it); unmeasured, the memory's budget without a cap.
   When the GPU's best candidate is at least as good as the best CPU encoder, LLM
   rerankers stay off the CPU, so a 4B LLM on the CPU never displaces a 0.6B one on the
   GPU. This is the one place where more memory (VRAM, with gguf installed and plentiful
   RAM) can give a lower figure: latency wins there. A GPU with too little free VRAM for a
   model that good does not push a better CPU model aside (quality ranks before device).
5. A forced model or backend is honoured or refused with InvalidInput that says why; for a
   forced model, a language it does not list and the LLM-on-CPU policy are warnings only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from edgerank.catalog.spec import BACKENDS, Catalog
from edgerank.errors import InvalidInput
from edgerank.hardware.facts import Hardware, recommended_threads
from edgerank.planning.candidates import (
    DEFAULT_BACKENDS,
    Calibration,
    Choice,
    Context,
    Evaluation,
    Verdict,
    Wishes,
    candidates_for,
    evaluate,
    extra_hint,
    quality_group,
)
from edgerank.planning.explain import accept_reason, batch_reason, nothing_fits, why_not
from edgerank.planning.ranking import backend_order, gpu_policy, quality_key, rank


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
        raise InvalidInput(f"backend {w.backend} is not installed: {extra_hint(w.backend)}")

    ram_budget = hardware.memory_budget_mib
    if w.memory_ceiling_mib is not None:
        ram_budget = min(ram_budget, w.memory_ceiling_mib)
    gpu = max(hardware.gpus, key=lambda g: g.vram_free_mib, default=None)
    ctx = Context(
        wishes=w,
        ram_budget=ram_budget,
        gpu=gpu,
        installed_backends=frozenset(installed_backends),
        installed_models=_normalise_installed(installed_models),
        forced=forced,
        calibration=calibration,
    )
    evals = [
        evaluate(spec, c, ctx) for spec in catalog for c in candidates_for(spec, hardware, gpu)
    ]
    gpu_policy(evals, forced is not None)
    ranked, near = rank([e for e in evals if e.viable], w.prefer)
    if not ranked:
        raise InvalidInput(nothing_fits(evals, ctx))
    best = ranked[0]
    group = quality_group(w.languages)
    top_q = max((e.quality for e in ranked if e.quality is not None), default=None)

    verdicts = [Verdict(best.cand, True, accept_reason(best, w, group))]
    for e in evals:
        if e is best:
            continue
        reason = e.failures[0][1] if e.failures else why_not(e, best, near, top_q, group)
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
        key=lambda e: (e is not best, backend_order(e)),
    )
    threads = recommended_threads(hardware)
    shape = None
    if best.measured is not None:
        threads = best.measured.best_threads
        shape = best.measured.fastest_shape(best.tokens)
    tokens, max_pairs = shape or (best.tokens, None)
    return Choice(
        model=best.spec,
        backend=best.cand.backend,
        precision=best.cand.precision,
        device=best.cand.device,
        threads=threads,
        batch_token_budget=tokens,
        batch_max_pairs=max_pairs,
        batch_measured=shape is not None,
        batch_reason=batch_reason(best, shape),
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


def _suggest(evals: list[Evaluation], best: Evaluation) -> str | None:
    """The best candidate kept out only by the model store, if it would beat the choice."""
    pulls = [e for e in evals if e.failures and {c for c, _ in e.failures} == {"store"}]
    if not pulls:
        return None
    top = min(pulls, key=quality_key)
    if quality_key(top) < quality_key(best):
        return f"edgerank pull {top.spec.name}"
    return None
