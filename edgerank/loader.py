"""Turns "what the user asked for" into an open Backend: store entry, catalog model, fallback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgerank.backends import biencoder
from edgerank.backends.base import Backend
from edgerank.errors import ModelNotFound
from edgerank.manifest import MANIFEST
from edgerank.store import ModelStore

#: backends the loader can open
OPENABLE = frozenset({"onnx", "biencoder", "torch", "gguf"})


@dataclass
class Loaded:
    backend: Backend
    #: a line for stderr when the user should know something (fallback in use)
    note: str | None = None
    #: padded tokens per batch the memory allows (from the choice; a default otherwise)
    token_budget: int = 8192


def load(
    model: str | None,
    *,
    backend: str | None = None,
    threads: int = 1,
    store: ModelStore | None = None,
    languages: tuple[str, ...] = ("en",),
    allow_remote_code: bool = False,
) -> Loaded:
    """``allow_remote_code``: let torch run modelling code a checkpoint ships (opt-in)."""
    store = store or ModelStore()
    if model and (Path(model) / MANIFEST).is_file():
        from edgerank.manifest import Manifest

        manifest = Manifest.read(Path(model))
        if manifest.backend == "torch":
            from edgerank.backends.torch import open_entry

            return _torch_loaded(
                lambda **kw: open_entry(Path(model), manifest, threads=threads, **kw),
                allow_remote_code,
            )
        if manifest.backend == "gguf":
            from edgerank.backends.gguf import open_entry as open_gguf_entry

            return Loaded(open_gguf_entry(Path(model), manifest, threads=threads))
        from edgerank.backends.onnx import OnnxBackend

        return Loaded(OnnxBackend.from_dir(Path(model), threads=threads))
    if model and backend in (None, "torch") and (Path(model) / "config.json").is_file():
        from edgerank.backends.torch import open_torch

        return _torch_loaded(
            lambda **kw: open_torch(Path(model), threads=threads, **kw), allow_remote_code
        )
    if model == biencoder.NAME:
        return Loaded(biencoder.BiEncoderBackend(threads=threads))
    installed = store.installed()
    if model:
        if model in installed:
            name_backend = backend or installed[model][0]
            if name_backend == "torch":
                return _torch_loaded(
                    lambda **kw: store.open(model, "torch", threads=threads, **kw),
                    allow_remote_code,
                )
            return Loaded(store.open(model, name_backend, threads=threads))
        _raise_unknown(model)
    return _auto(store, installed, threads, languages, allow_remote_code)


def _torch_loaded(open_fn, allow_remote_code: bool, placement=None, **loaded) -> Loaded:
    """Open on the device the hardware (or the choice) says; a CUDA fallback becomes a note."""
    if placement is None:
        from edgerank.backends.torch import placement as place
        from edgerank.probe import probe

        placement = place(probe())
    device, precision, cpu_precision = placement
    be = open_fn(
        device=device,
        precision=precision,
        cpu_precision=cpu_precision,
        allow_remote_code=allow_remote_code,
    )
    info = be.info()
    note = None
    if "fallback" in info.details:
        note = (
            f"CUDA failed to start ({info.details['fallback']}): running on the CPU "
            f"({info.precision})"
        )
    return Loaded(be, note=note, **loaded)


def _auto(store: ModelStore, installed, threads: int, languages, allow_remote_code) -> Loaded:
    """The choice function over what is installed; custom imports beat the fallback."""
    from edgerank.backends import available_backends
    from edgerank.calibrate import lookup
    from edgerank.catalog import load_catalog
    from edgerank.choose import Wishes, choose
    from edgerank.probe import probe

    catalog = load_catalog()
    hardware = probe(store_path=store.root)
    choice = choose(
        catalog,
        hardware,
        Wishes(languages=languages, allow_remote_code=allow_remote_code),
        installed_backends=available_backends() & OPENABLE,
        installed_models=installed,
        calibration=lookup(store, hardware),
    )
    if choice.backend == "torch":
        from edgerank.backends.torch import placement

        cpu_precision = placement(hardware)[2]
        return _torch_loaded(
            lambda **kw: store.open(choice.model.name, "torch", threads=threads, **kw),
            allow_remote_code,
            (choice.device, choice.precision, cpu_precision),
            token_budget=choice.batch_token_budget,
        )
    if choice.backend == "gguf":  # the chosen quant (q8_0, or q4_k_m when RAM is tight)
        be = store.open(choice.model.name, "gguf", threads=threads, precision=choice.precision)
        return Loaded(be, token_budget=choice.batch_token_budget)
    if choice.backend != "biencoder":
        be = store.open(choice.model.name, choice.backend, threads=threads)
        return Loaded(be, token_budget=choice.batch_token_budget)
    custom = sorted(n for n in installed if n not in catalog)
    if custom:
        return Loaded(store.open(custom[0], installed[custom[0]][0], threads=threads))
    hint = choice.suggestion or "edgerank pull ms-marco-minilm-l6"
    return Loaded(
        biencoder.BiEncoderBackend(threads=threads),
        note=(
            "no reranker installed: ranking with the embedded bi-encoder all-MiniLM-L6-v2 "
            f"(weaker); run `{hint}` for a cross-encoder (`edgerank models` lists them)"
        ),
    )


def _raise_unknown(model: str) -> None:
    from edgerank.catalog import load_catalog

    catalog = load_catalog()
    if model in catalog:
        raise ModelNotFound(f"model {model!r} is not installed: run `edgerank pull {model}`")
    catalog.get(model)  # raises ModelNotFound with close matches
    raise ModelNotFound(f"unknown model {model!r}")  # pragma: no cover
