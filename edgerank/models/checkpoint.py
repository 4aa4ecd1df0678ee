"""Reading a Hugging Face checkpoint without torch: its config.json, its position table, its
stored dtype, and how it scores (cross-encoder, or an LLM reranker the catalog knows).

Every path that meets a checkpoint (import, gguf conversion, the torch backend) asks here,
so one rule decides max length and one error reports a broken config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgerank.catalog.spec import Catalog, ModelSpec
from edgerank.errors import InvalidInput, ModelCorrupt
from edgerank.models.entry_format import DEFAULT_MAX_LENGTH, EntryFormat
from edgerank.models.llm_format import LlmFormat

KINDS = ("cross-encoder", "llm-yes-logit", "llm-layerwise")


def read_config(hf_dir: Path | str) -> dict[str, Any]:
    """A checkpoint's config.json; the one place that reads it, with one error for all."""
    path = Path(hf_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelCorrupt(f"{hf_dir} has no config.json: not a Hugging Face checkpoint") from None
    except ValueError as exc:
        raise ModelCorrupt(f"{path} is not valid JSON") from exc


@dataclass(frozen=True)
class Checkpoint(EntryFormat):
    """What a checkpoint is and how it scores; a torch entry's recipe records it, and the
    gguf import reads the same rules from the checkpoint it converts."""

    remote_code: bool = False

    RUNTIME: ClassVar[str] = "torch"
    SERVES: ClassVar[tuple[str, ...]] = KINDS
    RECIPE: ClassVar[str] = "torch-checkpoint"

    @classmethod
    def from_spec(cls, spec: ModelSpec, max_length: int | None = None) -> Checkpoint:
        fmt = LlmFormat.from_spec(spec) if spec.is_llm else None
        return cls(spec.kind, max_length or spec.max_length, fmt, spec.remote_code)

    @classmethod
    def _read(cls, recipe: dict[str, Any]) -> dict[str, Any]:
        return {"remote_code": bool(recipe.get("remote_code"))}

    def _written(self) -> dict[str, Any]:
        return {"remote_code": self.remote_code}

    @classmethod
    def detect(cls, hf_dir: Path | str, catalog: Catalog | None = None) -> Checkpoint:
        """Tell from config.json: a *ForSequenceClassification is a cross-encoder; a causal
        LM is scored the way the catalog scores its architecture."""
        hf_dir = Path(hf_dir)
        cfg = read_config(hf_dir)
        arch = (cfg.get("architectures") or [""])[0]
        remote = "auto_map" in cfg
        if arch.endswith("ForSequenceClassification"):
            return cls("cross-encoder", max_length(cfg), None, remote)
        if catalog is None:
            from edgerank.catalog.load import load_catalog

            catalog = load_catalog()
        for spec in catalog:
            if spec.is_llm and spec.arch == arch:
                fmt = LlmFormat.from_spec(spec)
                return cls(spec.kind, spec.max_length, fmt, remote or spec.remote_code)
        raise InvalidInput(
            f"{hf_dir}: cannot tell how to score a {arch or 'model without architectures'} "
            "(install it under a catalog name)"
        )


def max_length(cfg: dict[str, Any]) -> int:
    """The position table's size, capped at 512, minus the padding offset of RoBERTa-family
    models (their positions start after the padding index)."""
    n = int(cfg.get("max_position_embeddings") or DEFAULT_MAX_LENGTH)
    if cfg.get("model_type") in ("xlm-roberta", "roberta", "camembert"):
        n -= 2
    return min(n, DEFAULT_MAX_LENGTH) if n > 0 else DEFAULT_MAX_LENGTH


def stored_precision(cfg: dict[str, Any]) -> str:
    """The dtype the checkpoint is stored in (torch_dtype, or dtype since transformers 4.56)."""
    stored = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    return {"bfloat16": "bf16", "float16": "fp16"}.get(stored, "fp32")
