"""The order of viable candidates: quality first (or least compute within a slack, for speed),
calibration measurements before the catalog's backend order, GPU before CPU."""

from __future__ import annotations

from edgerank.planning.candidates import PRECISION_ORDER, Evaluation
from edgerank.planning.memory import compute_cost

#: prefer="speed" trades at most this many quality points for less compute
SPEED_SLACK = 2.0


def _precision_rank(e: Evaluation) -> int:
    return PRECISION_ORDER.index(e.cand.precision)


def _q(e: Evaluation) -> float:
    return -1.0 if e.quality is None else e.quality


def backend_order(e: Evaluation) -> tuple:
    """Measured candidates by fidelity then speed; unmeasured ones in the catalog's order."""
    catalog = e.spec.backends.index(e.cand.backend)  # type: ignore[arg-type]
    m = e.measured
    if m is None:
        return (1, 0.0, catalog)
    return (0 if m.fidelity_ok else 2, -m.best_pairs_per_s, catalog)


def quality_key(e: Evaluation) -> tuple:
    return (
        e.is_fallback,
        e.quality is None,
        -_q(e),
        not e.on_gpu,
        backend_order(e),
        _precision_rank(e),
        compute_cost(e.spec),
        e.spec.name,
    )


def gpu_policy(evals: list[Evaluation], forced: bool) -> None:
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


def _speed_key(e: Evaluation) -> tuple:
    return (
        compute_cost(e.spec),
        -(e.quality or 0.0),
        backend_order(e),
        _precision_rank(e),
        e.spec.name,
    )


def rank(viable: list[Evaluation], prefer: str) -> tuple[list[Evaluation], set[int]]:
    """Best first; for speed, also the ids of the candidates within the slack of the best."""
    ranked = sorted(viable, key=quality_key)
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
