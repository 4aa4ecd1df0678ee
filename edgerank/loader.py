"""Turns "what the user asked for" into an open Backend: store entry, catalog model, fallback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgerank.backends import biencoder
from edgerank.backends.base import Backend
from edgerank.errors import ModelNotFound
from edgerank.manifest import MANIFEST
from edgerank.store import ModelStore


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
) -> Loaded:
    store = store or ModelStore()
    if model and (Path(model) / MANIFEST).is_file():
        from edgerank.backends.onnx import OnnxBackend

        return Loaded(OnnxBackend.from_dir(Path(model), threads=threads))
    if model == biencoder.NAME:
        return Loaded(biencoder.BiEncoderBackend(threads=threads))
    installed = store.installed()
    if model:
        if model in installed:
            name_backend = backend or installed[model][0]
            return Loaded(store.open(model, name_backend, threads=threads))
        _raise_unknown(model)
    return _auto(store, installed, threads, languages)


def _auto(store: ModelStore, installed, threads: int, languages) -> Loaded:
    """The choice function over what is installed; custom imports beat the fallback."""
    from edgerank.backends import available_backends
    from edgerank.catalog import load_catalog
    from edgerank.choose import Wishes, choose
    from edgerank.probe import probe

    catalog = load_catalog()
    choice = choose(
        catalog,
        probe(store_path=store.root),
        Wishes(languages=languages),
        installed_backends=available_backends() & {"onnx", "biencoder"},
        installed_models=installed,
    )
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
