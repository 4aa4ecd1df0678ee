"""The one contract every runtime implements (onnx, gguf, torch, biencoder).

Tokenization belongs to the backend (each runtime has its own tokenizer), but it is a
separate step from scoring so that the engine can cut batches by token count and sort
them by length across requests before any compute happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Truncation = Literal["truncate", "chunk"]
Direction = Literal["right", "left"]
#: how a raw score becomes a 0..1 value; see engine/rank.py
Normalise = Literal["sigmoid", "cosine"]


@dataclass(frozen=True)
class ScoreOptions:
    """Per-request knobs that change tokenization."""

    truncation: Truncation = "truncate"
    direction: Direction = "right"
    instruction: str | None = None
    #: cap below the model's own max length (Cohere's max_tokens_per_doc); None = model max
    max_tokens_per_doc: int | None = None
    #: chunk mode: tokens shared by consecutive windows of one passage
    chunk_overlap: int = 32


@dataclass(frozen=True)
class Encoded:
    """One model input: a (query, passage-or-window) pair, already tokenized.

    ``doc`` is the passage's index in the request; chunking gives one passage several
    Encoded items, and the engine keeps the max over them.
    """

    doc: int
    ids: np.ndarray
    type_ids: np.ndarray | None = None
    #: backend-private data (e.g. the shared prompt prefix length of an LLM reranker)
    extra: Any = None
    #: the query did not fit its share of the window and was cut (TEI's truncate=false
    #: refuses that: server/tei.py)
    query_cut: bool = False

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class BackendInfo:
    backend: str  # "onnx" | "gguf" | "torch" | "biencoder"
    model: str
    precision: str  # "int8", "fp32", "fp16", "bf16", "q8_0", ...
    device: str  # "cpu" | "cuda:0"
    max_length: int
    threads: int
    normalise: Normalise = "sigmoid"
    details: dict[str, Any] = field(default_factory=dict)
    #: digest of what fixes the scores (weights' hashes, recipe); the score cache keys on it,
    #: and is off when it is "" (a model opened without a manifest)
    identity: str = ""


@runtime_checkable
class Backend(Protocol):
    def encode(self, query: str, passages: Sequence[str], options: ScoreOptions) -> list[Encoded]:
        """Tokenize one request: the query once, each passage truncated or chunked."""
        ...

    def score(self, batch: Sequence[Encoded]) -> np.ndarray:
        """Raw scores (float32, one per item, same order). Must not depend on batch mates."""
        ...

    def info(self) -> BackendInfo: ...

    def close(self) -> None: ...
