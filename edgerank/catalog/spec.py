"""The catalog's records: what a model is (kind, score rule, sizes, quality, sources).

Frozen and validated once by load.py, so every later consumer (planning, store, backends,
the CLI) trusts a ModelSpec without re-checking it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from edgerank.catalog import quants
from edgerank.errors import ModelNotFound

Kind = Literal["cross-encoder", "llm-yes-logit", "llm-layerwise", "bi-encoder"]


BackendName = Literal["onnx", "gguf", "torch", "biencoder"]


SCHEMA_VERSION = 1


KINDS: tuple[str, ...] = get_args(Kind)


BACKENDS: tuple[str, ...] = get_args(BackendName)


LLM_KINDS = frozenset({"llm-yes-logit", "llm-layerwise"})


#: score rules each kind may use
SCORE_RULES: dict[str, frozenset[str]] = {
    "cross-encoder": frozenset({"cls-logit"}),
    "llm-yes-logit": frozenset({"yes-logit", "yes-no-softmax"}),
    "llm-layerwise": frozenset({"layer-head"}),
    "bi-encoder": frozenset({"cosine"}),
}


PRECISIONS = frozenset({"fp32", "fp16", "bf16", "int8", *quants.SERVED})


GGUF_QUANTS = frozenset(quants.MADE)


QUALITY_GROUPS = frozenset({"en", "zh", "multi"})


@dataclass(frozen=True)
class OnnxSource:
    #: hub repo to download from (usually the model's own hub id)
    repo: str
    #: a ready INT8 file inside the repo, or None = export with torch.onnx and quantize locally
    int8_file: str | None = None
    #: a ready FP32 ONNX graph inside the repo: quantize it locally without an export
    #: (None = export the checkpoint with torch.onnx)
    fp32_file: str | None = None
    #: ready INT8 files the publisher made for other int8 kernels (hardware.facts.int8_kernel
    #: names: "avx2" and "avx512" saturate with int8 weights, so their file has uint8 ones;
    #: "arm-dot", "arm-i8mm"); a kernel not listed takes int8_file
    int8_isa: dict[str, str] = field(default_factory=dict)

    def int8_file_for(self, kernel: str) -> str | None:
        """The ready INT8 file for this CPU's int8 kernel."""
        return self.int8_isa.get(kernel, self.int8_file)


@dataclass(frozen=True)
class GgufSource:
    repo: str
    #: quant name (catalog/quants.py MADE) -> file name in the repo.
    #: Empty = no published GGUF: convert ``repo`` (the HF checkpoint) with llama.cpp's
    #: converter and quantize locally.
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # short name, e.g. "bge-reranker-v2-m3"
    hub_id: str
    arch: str  # e.g. "XLMRobertaForSequenceClassification"
    kind: Kind
    params_m: float  # millions of parameters
    layers: int | None
    hidden: int | None
    max_length: int
    languages: tuple[str, ...]  # ISO codes; ("multi",) for 100+ languages
    licence: str
    non_commercial: bool  # CC-BY-NC etc.: never chosen unless the user opts in
    remote_code: bool  # modelling code from the hub (trust_remote_code)
    score_rule: str  # "cls-logit" | "yes-logit" | "yes-no-softmax" | "layer-head" | "cosine"
    prompt: str | None  # template for LLM rerankers ({query}, {passage}, {instruction})
    default_instruction: str | None
    backends: tuple[BackendName, ...]  # runtimes able to serve it, best-first
    onnx: OnnxSource | None
    gguf: GgufSource | None
    #: weights in memory per precision, MiB ("fp32", "fp16", "int8", "q8_0", "q4_k_m")
    memory_mib: dict[str, int]
    #: published quality used for ordering, per language group ("en", "zh", "multi")
    quality: dict[str, float]
    quality_source: str
    #: quantization/serving notes shown by `edgerank models`
    notes: str = ""
    #: llama.cpp KV cache per token at f16 (LLM rerankers; None = not published)
    #: (added by the catalog work: the memory estimate of the gguf path needs it)
    kv_cache_kib_per_token: float | None = None
    #: layer whose head gives the score (llm-layerwise: compute stops there)
    #: (added by the catalog work)
    cutoff_layer: int | None = None

    @property
    def is_llm(self) -> bool:
        return self.kind in LLM_KINDS


class Catalog:
    """The validated models, in file order."""

    def __init__(
        self,
        specs: list[ModelSpec],
        *,
        path: Path | None = None,
        quality_scale: dict[str, str] | None = None,
    ) -> None:
        self._specs = {s.name: s for s in specs}
        self.path = path
        #: what each quality group's numbers mean ("en" -> "BEIR nDCG@10 average", ...)
        self.quality_scale = dict(quality_scale or {})

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ModelNotFound(_unknown_model_message(name, self.names())) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def fallback(self) -> ModelSpec | None:
        """The embedded bi-encoder, if the catalog has one (first of its kind)."""
        return next((s for s in self if s.kind == "bi-encoder"), None)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs


def _unknown_model_message(name: str, names: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown model {name!r}{hint} (`edgerank models` lists the catalog)"
