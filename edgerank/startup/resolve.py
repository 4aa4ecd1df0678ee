"""What will serve and why, decided once for every face that needs to know: `serve` and
`score` open what this returns, and `probe` prints it, so the view can never disagree with
what runs.

A model can be asked for as an entry directory, a Hugging Face checkpoint (torch), the
embedded bi-encoder, a store name, or not at all; then the planner chooses among what is
installed, a custom import beats the embedded fallback, and the fallback comes last with a
note saying how to get a real reranker.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from edgerank.backends import available_backends, biencoder
from edgerank.catalog.load import load_catalog
from edgerank.catalog.spec import Catalog
from edgerank.errors import EdgerankError, ModelNotFound, extras_here
from edgerank.hardware.facts import Hardware, int8_kernel
from edgerank.models.manifest import MANIFEST, Manifest
from edgerank.planning.candidates import Choice, Wishes, torch_placement
from edgerank.planning.choice import choose
from edgerank.planning.memory import CPU_TOKEN_BUDGETS
from edgerank.startup.suggest import suggest, with_pull_hints
from edgerank.store.calibration import lookup
from edgerank.store.layout import StoreLayout

#: backends the composition root can open
OPENABLE = frozenset({"onnx", "biencoder", "torch", "gguf"})

#: where the plan came from: the user named a directory, a checkpoint, the embedded model or a
#: store entry; or nothing, and the planner chose, a custom import stood in, or the fallback
Source = Literal["directory", "checkpoint", "embedded", "named", "chosen", "custom", "fallback"]

#: torch's (device, precision, CPU precision to fall back to)
Placement = tuple[str, str, str]


@dataclass(frozen=True)
class Ask:
    """What the user asked for: a model (name, directory or checkpoint) or nothing, a runtime
    or any, and the planner's wishes (languages, memory ceiling, licence, remote code)."""

    model: str | None = None
    backend: str | None = None
    wishes: Wishes = field(default_factory=Wishes)


@dataclass(frozen=True)
class Plan:
    """What will serve: where it comes from, which runtime opens it, with which options and
    batch shape, and the words that explain it."""

    source: Source
    #: the model's name (a store entry, a catalog model) or the directory asked for
    name: str
    backend: str
    #: the entry directory or checkpoint; None for the embedded bi-encoder
    path: Path | None = None
    #: runtime options: the GGUF quant the planner chose; torch's placement
    quant: str | None = None
    placement: Placement | None = None
    #: the batch shape: padded tokens per batch and pairs per batch at most (None = no cap);
    #: the planner's for a catalog model, a default for what it cannot know
    token_budget: int = CPU_TOKEN_BUDGETS[0]
    max_pairs: int | None = None
    #: the planner's answer when it was asked (probe --explain prints its reasons)
    choice: Choice | None = None
    #: a line the user should see (the fallback in use and how to do better)
    note: str | None = None

    def why(self) -> str:
        """One line on where the plan came from."""
        return {
            "directory": f"the entry directory {self.name} was asked for",
            "checkpoint": f"the checkpoint {self.name} was asked for (torch)",
            "embedded": "the embedded bi-encoder was asked for",
            "named": f"{self.name} was asked for by name ({self.backend} entry in the store)",
            "chosen": "the planner's choice among the installed catalog models",
            "custom": (
                f"{self.name} is a custom import in the store: it beats the embedded "
                "fallback, which is all the planner could run here"
            ),
            "fallback": "no reranker is installed: the embedded bi-encoder serves",
        }[self.source]


def resolve(
    ask: Ask, store: StoreLayout, hardware: Hardware, catalog: Catalog | None = None
) -> Plan:
    """The plan for ``ask`` on this machine and store (no runtime is opened)."""
    model, backend = ask.model, ask.backend
    if model and (Path(model) / MANIFEST).is_file():
        entry = Manifest.read(Path(model))
        return _placed(Plan("directory", model, entry.backend, Path(model)), hardware)
    if model and backend in (None, "torch") and (Path(model) / "config.json").is_file():
        return _placed(Plan("checkpoint", model, "torch", Path(model)), hardware)
    if model == biencoder.NAME:
        return Plan("embedded", model, "biencoder")
    catalog = catalog or load_catalog()
    installed = store.installed()
    if model:
        if model not in installed:
            _raise_unknown(model, catalog)
        plan = Plan("named", model, backend or installed[model][0])
        plan = replace(plan, path=store.entry(plan.name, plan.backend))
        return _placed(_named_shape(plan, catalog, hardware, installed, store, ask), hardware)
    choice = _choose(catalog, hardware, ask.wishes, installed, store)
    name = choice.model.name
    shape = {"token_budget": choice.batch_token_budget, "max_pairs": choice.batch_max_pairs}
    if choice.backend != "biencoder":
        plan = Plan("chosen", name, choice.backend, store.entry(name, choice.backend),
                    choice=choice, **shape)  # fmt: skip
        if choice.backend == "gguf":  # the chosen quant (q8_0, or q4_k_m when RAM is tight)
            return replace(plan, quant=choice.precision)
        if choice.backend == "torch":
            cpu = torch_placement(hardware)[2]
            return replace(plan, placement=(choice.device, choice.precision, cpu))
        return plan
    custom = sorted(n for n in installed if n not in catalog)
    if custom:
        first = installed[custom[0]][0]
        choice = replace(choice, suggestion=None)  # how a custom import ranks is not known
        plan = Plan("custom", custom[0], first, store.entry(custom[0], first), choice=choice)
        return _placed(plan, hardware)
    return Plan("fallback", biencoder.NAME, "biencoder", choice=choice, note=fallback_note(choice))


def fallback_note(choice: Choice) -> str:
    """The line score, serve and probe show while the embedded bi-encoder serves."""
    note = "no reranker installed: ranking with the embedded bi-encoder all-MiniLM-L6-v2 (weaker)"
    if choice.suggestion:
        note += f"; for a cross-encoder that suits this box, run `{choice.suggestion}`"
    return note + " (`edgerank probe --explain` says why)"


def _choose(catalog, hardware, wishes: Wishes, installed, store: StoreLayout) -> Choice:
    """The one call of the planner: over what is installed and openable here, with what
    calibration measured on this machine; its suggestion replaced by one that this install
    can run and that fits this box (startup/suggest.py)."""
    choice = choose(
        catalog,
        hardware,
        wishes,
        installed_backends=available_backends() & OPENABLE,
        installed_models=installed,
        calibration=lookup(store, hardware),
    )
    extras = extras_here()
    choice = with_pull_hints(choice, catalog, int8_kernel(hardware.isa), extras)
    if wishes.model is not None:
        return choice
    found = suggest(catalog, hardware, wishes, choice, extras)
    return replace(
        choice,
        suggestion=found.command if found else None,
        suggestion_why=found.why if found else "",
    )


def _named_shape(plan: Plan, catalog, hardware, installed, store, ask: Ask) -> Plan:
    """The choice's batch shape for a model named by the user, as if the planner had picked
    it; the defaults when the catalog does not know it or the planner would refuse it."""
    if plan.name not in catalog:
        return plan
    wishes = replace(ask.wishes, model=plan.name, backend=plan.backend, allow_non_commercial=True)
    try:
        choice = _choose(catalog, hardware, wishes, installed, store)
    except EdgerankError:
        return plan
    return replace(
        plan, token_budget=choice.batch_token_budget, max_pairs=choice.batch_max_pairs,
        choice=choice,
    )  # fmt: skip


def _placed(plan: Plan, hardware: Hardware) -> Plan:
    """Torch goes where the hardware says: FP16 on the GPU with the most free VRAM, else
    the CPU's precision."""
    if plan.backend != "torch" or plan.placement is not None:
        return plan
    return replace(plan, placement=torch_placement(hardware))


def _raise_unknown(model: str, catalog: Catalog) -> None:
    if model in catalog:
        raise ModelNotFound(f"model {model!r} is not installed: run `edgerank pull {model}`")
    catalog.get(model)  # raises ModelNotFound with close matches
    raise ModelNotFound(f"unknown model {model!r}")  # pragma: no cover
