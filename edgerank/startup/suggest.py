"""The next step the fallback note and `probe --explain` suggest: a command that works on this
install (its extras) and fits this box (its memory budget and its int8 kernel).

The planner (planning/choice.py) judges what could run here; it does not know how a model
gets onto the disk, and that depends on the extras installed: a publisher's INT8 file needs
none (`pull --prebuilt-int8`, measured against the publisher's FP32 file with onnxruntime
alone), an FP32 ONNX graph needs `quantize`, a bare checkpoint `convert`, a GGUF `gguf`. So
the suggestion asks the planner again, over the routes this install can take; only when none
of them fits does it name the extra that opens one.

On a CPU with an int8 kernel that saturates with int8 weights (AVX2), a publisher's file is
a route only where the publisher made one for that kernel (catalog ``int8_isa``).

On a box without a GPU the fallback's suggestion keeps to models a CPU of its size scores
at interactive speed: at most CPU_MMAC_PER_CORE million multiply-adds per token per usable
core (recommended_threads), so two cores take MiniLM-L12-sized models and under, sixteen
take base-sized ones; the best quality among those, as the planner ranks. Only when none is
reachable is the cap doubled, until one is. The box is on the fallback because nothing is
installed yet, not because it asked for the best model whatever its latency. A model better
than the one serving is suggested by quality alone, as the planner ranks them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edgerank.catalog.spec import Catalog, ModelSpec
from edgerank.errors import InvalidInput, extras_here, pip_extras
from edgerank.hardware.facts import SATURATING_INT8, Hardware, int8_kernel, recommended_threads
from edgerank.planning.candidates import Choice, Wishes
from edgerank.planning.choice import choose
from edgerank.planning.memory import compute_cost

#: a CPU-only box's suggestion keeps under this much compute per token per usable core (M
#: multiply-adds; MiniLM-L6 is 10.6, MiniLM-L12 21, a base model 85, a large one 302)
CPU_MMAC_PER_CORE = 16.0
#: how the planner words a candidate kept out by the model store alone
STORE_REASON = "not in the model store"


@dataclass(frozen=True)
class Route:
    """How `edgerank pull` gets one model onto this box, and the extras that takes."""

    backend: str
    command: str
    needs: frozenset[str]
    what: str


@dataclass(frozen=True)
class Suggestion:
    model: str
    command: str
    #: one clause: why this model, how it gets here
    why: str


def routes(spec: ModelSpec, kernel: str) -> list[Route]:
    """Every way `pull` can install ``spec``, preferred first (edgerank's own INT8 recipe
    before a publisher's file, which is measured but not improved)."""
    out = []
    pull = f"edgerank pull {spec.name}"
    src = spec.onnx
    if "onnx" in spec.backends and src is not None:
        if src.fp32_file:
            out.append(Route("onnx", pull, frozenset({"quantize"}), "quantized here"))
        ready = src.int8_file_for(kernel)
        if ready and (kernel not in SATURATING_INT8 or kernel in src.int8_isa):
            what = "the publisher's INT8 file"
            if kernel in src.int8_isa:
                what += f" for {kernel}"
            if src.fp32_file:
                what += ", measured against its FP32 file"
            out.append(Route("onnx", f"{pull} --prebuilt-int8", frozenset(), what))
        if not src.fp32_file:
            what = "exported and quantized here"
            out.append(Route("onnx", pull, frozenset({"convert", "quantize"}), what))
    if "gguf" in spec.backends and spec.gguf is not None:
        needs = {"gguf"} if spec.gguf.files else {"gguf", "convert"}
        what = "the published GGUF" if spec.gguf.files else "converted to GGUF here"
        out.append(Route("gguf", f"{pull} --backend gguf", frozenset(needs), what))
    return out


def pull_hint(spec: ModelSpec, backend: str, kernel: str, extras: frozenset[str]) -> str:
    """How to install ``spec`` for ``backend`` from this install, as a command."""
    found = [r for r in routes(spec, kernel) if r.backend == backend]
    if not found:
        return f"`edgerank pull` cannot install it for {backend}"
    route = next((r for r in found if r.needs <= extras), found[0])
    return f"`{_command(route, extras)}`"


def with_pull_hints(choice: Choice, catalog: Catalog, kernel: str, extras: frozenset[str]):
    """The choice with each "not in the model store" reason naming the command that installs
    that candidate from this install (the planner knows the store, not the extras)."""
    reasons = []
    for v in choice.reasons:
        if not v.accepted and v.reason.startswith(STORE_REASON) and v.candidate.model in catalog:
            spec = catalog.get(v.candidate.model)
            hint = pull_hint(spec, v.candidate.backend, kernel, extras)
            v = v._replace(reason=f"{STORE_REASON}: {hint}")
        reasons.append(v)
    return dataclasses.replace(choice, reasons=tuple(reasons))


def suggest(
    catalog: Catalog,
    hardware: Hardware,
    wishes: Wishes,
    current: Choice,
    extras: frozenset[str] | None = None,
) -> Suggestion | None:
    """What to install next: for the fallback, a reranker that fits here; else a better one
    than ``current``, if the planner knows one. None when nothing would do better."""
    extras = extras_here() if extras is None else extras
    kernel = int8_kernel(hardware.isa)
    fallback = current.model.kind == "bi-encoder"
    wishes = dataclasses.replace(wishes, model=None, backend=None)
    limits: list[float | None] = [None]
    if fallback and not hardware.gpus:
        cap = CPU_MMAC_PER_CORE * recommended_threads(hardware)
        limits = [cap * 2**k for k in range(8)] + [None]
    tries = [(allowed, limit) for allowed in (extras, None) for limit in limits]
    for allowed, limit in tries:  # this install first, then what an extra opens
        found = _best(catalog, hardware, wishes, kernel, allowed, limit)
        if found is None:
            continue
        choice, route = found
        if not fallback and not _better(choice, current):
            return None
        return Suggestion(choice.model.name, _command(route, extras), _why(choice, route, limit))
    return None


def _best(catalog, hardware, wishes, kernel, allowed, limit) -> tuple[Choice, Route] | None:
    """The planner's choice over the models reachable by the routes ``allowed`` extras open
    (None: any extra) and of at most ``limit`` compute per token (None: any), every catalog
    model counted as installable."""
    reachable: dict[tuple[str, str], Route] = {}
    specs = []
    for spec in catalog:
        if spec.kind == "bi-encoder":
            specs.append(spec)
            continue
        if limit is not None and compute_cost(spec) > limit:
            continue
        usable = [r for r in routes(spec, kernel) if allowed is None or r.needs <= allowed]
        backends = tuple(b for b in spec.backends if any(r.backend == b for r in usable))
        if backends:
            for r in reversed(usable):  # the preferred route of each backend wins
                reachable[(spec.name, r.backend)] = r
            specs.append(dataclasses.replace(spec, backends=backends))
    sub = Catalog(specs, quality_scale=catalog.quality_scale)
    runtimes = {"onnx", "biencoder"} | ({"gguf"} if allowed is None or "gguf" in allowed else set())
    try:
        choice = choose(sub, hardware, wishes, installed_backends=runtimes, installed_models=None)
    except InvalidInput:
        return None
    route = reachable.get((choice.model.name, choice.backend))
    return None if route is None else (choice, route)


def _better(choice: Choice, current: Choice) -> bool:
    if choice.model.name == current.model.name:
        return False
    return (choice.quality or 0.0) > (current.quality or 0.0)


def _command(route: Route, extras: frozenset[str]) -> str:
    missing = route.needs - extras
    return f"{pip_extras(missing)} && {route.command}" if missing else route.command


def _why(choice: Choice, route: Route, limit: float | None) -> str:
    q = "unrated" if choice.quality is None else f"quality {choice.quality:g}"
    size = f"~{choice.memory_need_mib} MiB"
    if limit is not None:
        size += f", the best under {limit:g}M multiply-adds a token for this CPU"
    else:
        size += ", the best that fits here"
    return f"{q} {choice.quality_group}, {size}; {route.what}"
