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


def load(
    model: str | None,
    *,
    backend: str | None = None,
    threads: int = 1,
    store: ModelStore | None = None,
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
        _raise_unknown(model, installed)
    best = _best_installed(installed)
    if best is not None:
        return Loaded(store.open(best, installed[best][0], threads=threads))
    return Loaded(
        biencoder.BiEncoderBackend(threads=threads),
        note=(
            "no reranker installed: ranking with the embedded bi-encoder all-MiniLM-L6-v2 "
            "(weaker); run `edgerank pull ms-marco-minilm-l6` (or `edgerank models`) for a "
            "cross-encoder"
        ),
    )


def _raise_unknown(model: str, installed: dict[str, list[str]]) -> None:
    from edgerank.catalog import load_catalog

    catalog = load_catalog()
    if model in catalog.names():
        raise ModelNotFound(f"model {model!r} is not installed: run `edgerank pull {model}`")
    catalog.get(model)  # raises ModelNotFound with close matches
    raise ModelNotFound(f"unknown model {model!r}")  # pragma: no cover


def _best_installed(installed: dict[str, list[str]]) -> str | None:
    """The installed model the catalog rates best for English; custom imports come last."""
    if not installed:
        return None
    from edgerank.catalog import load_catalog

    catalog = load_catalog()
    known = set(catalog.names())

    def quality(name: str) -> float:
        if name not in known:
            return float("-inf")
        return max(catalog.get(name).quality.values(), default=0.0)

    return max(sorted(installed), key=quality)
