"""Turns "what the user asked for" into an open Backend: an entry directory, a checkpoint, a
store name, or the planner's choice over what is installed (else the embedded fallback).

The hardware is probed once here and handed to everything that needs it (thread count, torch
placement, the choice), and the daemon reports the same record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgerank.backends import available_backends, biencoder
from edgerank.backends.base import Backend
from edgerank.backends.registry import open_entry, open_installed
from edgerank.catalog.load import load_catalog
from edgerank.engine.cascade import Cascade, open_cascade
from edgerank.errors import EdgerankError, ModelNotFound
from edgerank.hardware import probe as hw_probe
from edgerank.hardware.facts import Hardware, recommended_threads
from edgerank.models.manifest import MANIFEST, Manifest
from edgerank.models.serving import RequestShape
from edgerank.planning.candidates import Wishes, torch_placement
from edgerank.planning.choice import choose
from edgerank.planning.memory import CPU_TOKEN_BUDGETS
from edgerank.quality.measurements import lookup
from edgerank.store.entries import ModelStore

#: backends the loader can open
OPENABLE = frozenset({"onnx", "biencoder", "torch", "gguf"})


@dataclass
class Loaded:
    backend: Backend
    #: the machine it was loaded for (probed once, reported by the daemon)
    hardware: Hardware
    #: a line for stderr when the user should know something (fallback in use)
    note: str | None = None
    #: the batch shape: padded tokens per batch and pairs per batch at most (None = no cap),
    #: the choice's for a catalog model (memory, and calibration when measured); a default
    #: for a directory or a custom import, which the planner knows nothing of
    token_budget: int = CPU_TOKEN_BUDGETS[0]
    max_pairs: int | None = None
    #: the entry's FP32 rescoring of near-ties (an INT8 install's recipe), opened with it
    cascade: Cascade | None = None

    def close(self) -> None:
        self.backend.close()
        if self.cascade is not None:
            self.cascade.close()


def load(
    model: str | None,
    *,
    backend: str | None = None,
    threads: int | None = None,
    store: ModelStore | None = None,
    languages: tuple[str, ...] = ("en",),
    allow_remote_code: bool = False,
    cascade: bool = True,
    request_shape: str | None = None,
) -> Loaded:
    """``threads`` None: one per usable physical core. ``allow_remote_code``: let torch run
    modelling code a checkpoint ships (opt-in). An INT8 ONNX entry whose recipe rescores
    near-ties in FP32 comes with its cascade (engine/cascade.py), on the same threads,
    unless ``cascade`` is False (the bench times the model alone). ``request_shape``
    ('32x128-256'): the requests served, for an entry that holds INT8 and FP32 options
    (models/serving.served); None: the shape it was installed for."""
    store = store or ModelStore()
    shape = RequestShape.parse(request_shape) if request_shape else None
    loaded = _load(model, backend, threads, store, languages, allow_remote_code, shape)
    # only entries kept on disk (ONNX) have a directory where an FP32 reference can sit
    model_dir = getattr(loaded.backend, "model_dir", None)
    if cascade and model_dir is not None:
        try:
            loaded.cascade = open_cascade(
                model_dir, threads=loaded.backend.info().threads,
                manifest=getattr(loaded.backend, "manifest", None),
            )  # fmt: skip
        except BaseException:
            loaded.backend.close()
            raise
    return loaded


def _load(model, backend, threads, store: ModelStore, languages, allow_remote_code,
          shape=None) -> Loaded:  # fmt: skip
    hardware = hw_probe.probe(store_path=store.root if store.root.exists() else None)
    threads = threads or recommended_threads(hardware)
    opener = _Opener(hardware, threads, allow_remote_code, shape)
    if model and (Path(model) / MANIFEST).is_file():
        manifest = Manifest.read(Path(model))
        return opener.loaded(lambda **kw: open_entry(model, manifest, **kw), manifest.backend)
    if model and backend in (None, "torch") and (Path(model) / "config.json").is_file():
        from edgerank.backends.torch import open_torch

        return opener.loaded(lambda **kw: open_torch(Path(model), **kw), "torch")
    if model == biencoder.NAME:
        return Loaded(biencoder.BiEncoderBackend(threads=threads), hardware)
    installed = store.installed()
    if model:
        if model in installed:
            name_backend = backend or installed[model][0]
            shape = _planned_shape(store, installed, opener, model, name_backend, languages)
            return opener.loaded(
                lambda **kw: open_installed(store, model, name_backend, **kw),
                name_backend,
                **shape,
            )
        _raise_unknown(model)
    return _auto(store, installed, opener, languages)


@dataclass(frozen=True)
class _Opener:
    hardware: Hardware
    threads: int
    allow_remote_code: bool
    request_shape: RequestShape | None = None

    def loaded(self, open_fn, backend: str, placement=None, **loaded) -> Loaded:
        """Open with the runtime's options; torch goes where the hardware (or the choice)
        says, and a CUDA fallback becomes a note."""
        if backend != "torch":
            be = open_fn(threads=self.threads, request_shape=self.request_shape)
            return Loaded(be, self.hardware, **loaded)
        device, precision, cpu_precision = placement or torch_placement(self.hardware)
        be = open_fn(
            threads=self.threads,
            device=device,
            precision=precision,
            cpu_precision=cpu_precision,
            allow_remote_code=self.allow_remote_code,
        )
        info = be.info()
        note = None
        if "fallback" in info.details:
            note = (
                f"CUDA failed to start ({info.details['fallback']}): running on the CPU "
                f"({info.precision})"
            )
        return Loaded(be, self.hardware, note=note, **loaded)


def _planned_shape(store: ModelStore, installed, opener: _Opener, name, backend, languages):
    """The choice's batch shape for a model named by the user, as if the planner had picked
    it; the defaults when the catalog does not know it or the planner would refuse it."""
    catalog = load_catalog()
    if name not in catalog:
        return {}
    wishes = Wishes(languages=languages, model=name, backend=backend, allow_non_commercial=True,
                    allow_remote_code=opener.allow_remote_code)  # fmt: skip
    try:
        choice = choose(
            catalog,
            opener.hardware,
            wishes,
            installed_backends=available_backends() & OPENABLE,
            installed_models=installed,
            calibration=lookup(store, opener.hardware),
        )
    except EdgerankError:
        return {}
    return {"token_budget": choice.batch_token_budget, "max_pairs": choice.batch_max_pairs}


def _auto(store: ModelStore, installed, opener: _Opener, languages) -> Loaded:
    """The choice function over what is installed; custom imports beat the fallback."""
    catalog = load_catalog()
    hardware = opener.hardware
    choice = choose(
        catalog,
        hardware,
        Wishes(languages=languages, allow_remote_code=opener.allow_remote_code),
        installed_backends=available_backends() & OPENABLE,
        installed_models=installed,
        calibration=lookup(store, hardware),
    )
    name = choice.model.name
    if choice.backend == "torch":
        cpu_precision = torch_placement(hardware)[2]
        return opener.loaded(
            lambda **kw: open_installed(store, name, "torch", **kw),
            "torch",
            (choice.device, choice.precision, cpu_precision),
            token_budget=choice.batch_token_budget,
            max_pairs=choice.batch_max_pairs,
        )
    if choice.backend == "gguf":  # the chosen quant (q8_0, or q4_k_m when RAM is tight)
        return opener.loaded(
            lambda **kw: open_installed(store, name, "gguf", precision=choice.precision, **kw),
            "gguf",
            token_budget=choice.batch_token_budget,
            max_pairs=choice.batch_max_pairs,
        )
    if choice.backend != "biencoder":
        return opener.loaded(
            lambda **kw: open_installed(store, name, choice.backend, **kw),
            choice.backend,
            token_budget=choice.batch_token_budget,
            max_pairs=choice.batch_max_pairs,
        )
    custom = sorted(n for n in installed if n not in catalog)
    if custom:
        first = installed[custom[0]][0]
        return opener.loaded(lambda **kw: open_installed(store, custom[0], first, **kw), first)
    hint = choice.suggestion or "edgerank pull ms-marco-minilm-l6"
    return Loaded(
        biencoder.BiEncoderBackend(threads=opener.threads),
        hardware,
        note=(
            "no reranker installed: ranking with the embedded bi-encoder all-MiniLM-L6-v2 "
            f"(weaker); run `{hint}` for a cross-encoder (`edgerank models` lists them)"
        ),
    )


def _raise_unknown(model: str) -> None:
    catalog = load_catalog()
    if model in catalog:
        raise ModelNotFound(f"model {model!r} is not installed: run `edgerank pull {model}`")
    catalog.get(model)  # raises ModelNotFound with close matches
    raise ModelNotFound(f"unknown model {model!r}")  # pragma: no cover


def reference_dir(model: str, served: str, store: ModelStore) -> Path:
    """Where the served entry lives: the directory the model setting names, else the store
    entry of the served model's name (an automatic choice is installed under its name)."""
    if model and (Path(model) / MANIFEST).is_file():
        return Path(model)
    return store.path(model or served, "onnx")
