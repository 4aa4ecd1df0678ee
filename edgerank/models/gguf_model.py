"""What a GGUF store entry is and whether llama.cpp can score it faithfully.

Read by import (store), conversion and the gguf backends alike, without loading llama.cpp:
only the file header (models/gguf_file.py) and the checkpoint's config.json are consulted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgerank.catalog import quants
from edgerank.catalog.spec import Catalog, ModelSpec
from edgerank.errors import BackendUnavailable, ModelCorrupt
from edgerank.models.entry_format import EntryFormat
from edgerank.models.gguf_file import POOLING_RANK, GgufHeader, read_header

KINDS = ("cross-encoder", "llm-yes-logit")
#: GgufModel.tokenizer values
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_GGUF = "gguf"


LAYERWISE_ERROR = (
    "{name} scores with per-layer heads (llm-layerwise) that llama.cpp cannot run: "
    "serve it with the torch backend (--backend torch, extra `cuda`)"
)


@dataclass(frozen=True)
class GgufModel(EntryFormat):
    """What a GGUF store entry is and how it scores; kept as the manifest's recipe."""

    #: quant -> file, relative to the entry
    files: dict[str, str] = field(default_factory=dict)
    #: where the token ids come from: the checkpoint's tokenizer.json beside the files, or
    #: (TOKENIZER_GGUF) the GGUF's own vocabulary, for a GGUF installed without one
    tokenizer: str = "tokenizer.json"

    RUNTIME: ClassVar[str] = "gguf"
    SERVES: ClassVar[tuple[str, ...]] = KINDS
    RECIPE: ClassVar[str] = "gguf"

    def __post_init__(self) -> None:
        if self.kind == "llm-layerwise":
            raise BackendUnavailable(LAYERWISE_ERROR.format(name="this model"))
        super().__post_init__()
        if self.tokenizer not in (TOKENIZER_JSON, TOKENIZER_GGUF):
            raise ValueError(f"unknown tokenizer source {self.tokenizer!r}")
        if self.tokenizer == TOKENIZER_GGUF and self.kind == "cross-encoder":
            raise ValueError("a cross-encoder tokenizes with its tokenizer.json")

    @classmethod
    def _read(cls, recipe: dict[str, Any]) -> dict[str, Any]:
        tokenizer = recipe.get("tokenizer") or TOKENIZER_JSON
        return {"files": dict(recipe.get("files") or {}), "tokenizer": tokenizer}

    def _written(self) -> dict[str, Any]:
        return {"files": dict(self.files), "tokenizer": self.tokenizer}


def check_servable(header: GgufHeader, kind: str, name: str = "") -> None:
    """Refuse a GGUF llama.cpp would score wrongly, with what to do instead.

    - segment B ignored: llama.cpp's BERT-family graphs add token type 0 to every token, so
      a model trained with token types > 1 needs them folded in (edgerank's converter does);
    - BERT's pooler dropped: a BertForSequenceClassification GGUF whose head is only the
      output projection (no `cls` dense + tanh) lost the pooler in conversion.
    """
    what = name or header.path.name
    redo = "convert it from the checkpoint with `edgerank import CHECKPOINT --backend gguf`"
    if kind != "cross-encoder":
        return
    fixes = header.fixes
    if header.token_types > 1 and "segment-b" not in fixes:
        raise ModelCorrupt(
            f"{what} was trained with {header.token_types} token types, which llama.cpp "
            f"ignores (segment B would score as segment A): {redo}"
        )
    tensors = header.tensors
    if "cls.output.weight" in tensors and "cls.weight" not in tensors and "pooler" not in fixes:
        if header.arch == "bert":
            raise ModelCorrupt(f"{what} lost BERT's pooler (dense + tanh) in conversion: {redo}")
    if "cls.output.weight" not in tensors and "cls.weight" not in tensors:
        raise ModelCorrupt(f"{what} has no classification head: not a reranker GGUF")


def rank_head(header: GgufHeader) -> tuple[str, ...]:
    """The labels of a causal LM's native rank head (a converted Qwen3-Reranker), or ()."""
    if header.pooling == POOLING_RANK and "cls.output.weight" in header.tensors:
        return header.labels
    return ()


def file_precision(header: GgufHeader) -> str:
    """general.file_type (llama_ftype) as a precision name."""
    return quants.name_of(header.get("general.file_type"))


def detect(
    gguf_path: Path | str, tokenizer_dir: Path | str, catalog: Catalog | None = None
) -> GgufModel:
    """What a GGUF is, from its header and the checkpoint's config.json beside the tokenizer."""
    from edgerank.models.checkpoint import Checkpoint  # config.json rules only; no torch import

    header = read_header(gguf_path)
    tm = Checkpoint.detect(tokenizer_dir, catalog)
    if tm.kind == "llm-layerwise":
        raise BackendUnavailable(LAYERWISE_ERROR.format(name=Path(tokenizer_dir).name))
    max_length = tm.max_length
    train = header.get("{arch}.context_length")
    if train:
        max_length = min(max_length, int(train))
    return GgufModel(tm.kind, max_length, tm.llm, {"file": Path(gguf_path).name})


def refuse_layerwise(spec: ModelSpec) -> None:
    if getattr(spec, "kind", None) == "llm-layerwise":
        raise BackendUnavailable(LAYERWISE_ERROR.format(name=spec.name))
