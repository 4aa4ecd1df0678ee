"""The words of a choice: why the chosen candidate won, why each other one lost, and the text of
`edgerank probe --explain`. Kept apart from the policy so wording never changes a decision."""

from __future__ import annotations

from edgerank.planning.candidates import Choice, Context, Evaluation, Wishes
from edgerank.planning.memory import compute_cost
from edgerank.planning.ranking import SPEED_SLACK, quality_key


def why_not(
    e: Evaluation, best: Evaluation, near: set[int], top_q: float | None, group: str
) -> str:
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


def accept_reason(e: Evaluation, w: Wishes, group: str) -> str:
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


def batch_shape(tokens: int, max_pairs: int | None) -> str:
    cap = f"at most {max_pairs} pairs" if max_pairs else "no pair cap"
    return f"{tokens} tokens, {cap}"


def batch_reason(e: Evaluation, shape: tuple[int, int | None] | None) -> str:
    """Where the batch shape came from: calibration, or the memory budget (``e.tokens``)."""
    from edgerank.planning.measured import SHAPE_SLACK, shape_key

    m = e.measured
    if shape is None:
        if m is None:
            return "the memory budget (batch shapes not measured: edgerank probe --calibrate)"
        return "the memory budget (no batch shape measured within it)"
    assert m is not None  # a shape comes from calibration figures
    t = m.best_threads
    at = f"{m.shapes[shape_key(*shape)]:.0f} pairs/s at {t} thread{'s' if t > 1 else ''}"
    if shape == (e.tokens, None):
        return f"measured: the memory budget, no shape beat it by over {SHAPE_SLACK:.0%} ({at})"
    default = m.shapes.get(shape_key(e.tokens, None))
    versus = f" vs {default:.0f} without a cap" if default else ""
    return f"measured fastest within the memory budget of {e.tokens} tokens ({at}{versus})"


def nothing_fits(evals: list[Evaluation], ctx: Context) -> str:
    forced, backend = ctx.forced, ctx.wishes.backend
    if forced is not None or backend is not None:
        # nearest misses first: the fewest reasons to refuse, then the best
        nearest = sorted(evals, key=lambda e: (len(e.failures), quality_key(e)))
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
        f"  threads {choice.threads}, batch "
        f"{batch_shape(choice.batch_token_budget, choice.batch_max_pairs)}: {choice.batch_reason}",
    ]
    lines += [f"  warning: {w}" for w in choice.warnings]
    if choice.suggestion:
        why = f" ({choice.suggestion_why})" if choice.suggestion_why else ""
        lines.append(f"  better once installed: {choice.suggestion}{why}")
    if choice.measured:
        lines.append(f"measured on this machine (edgerank probe --calibrate), {choice.model.name}:")
        lines += [f"  {m.summary()}" for m in choice.measured]
    rejected = [v for v in choice.reasons if not v.accepted]
    if rejected:
        lines.append(f"rejected ({len(rejected)}):")
        width = max(len(str(v.candidate)) for v in rejected)
        lines += [f"  {str(v.candidate):<{width}}  {v.reason}" for v in rejected]
    return "\n".join(lines)
