"""llama.cpp rerankers through llama-cpp-python's low-level API (extra `gguf`), on the CPU.

Tokenization never goes through llama.cpp: cross-encoders use the same PairTokenizer as the
ONNX and torch backends, LLM rerankers the same llm.PromptTokenizer as torch, so every
runtime scores the very same ids. The high-level `Llama.embed()` cannot take a pair, so the
ids go into a `llama_batch` as one sequence per pair.

Cross-encoders run with RANK pooling and read `llama_get_embeddings_seq` (the head's logit).
llama.cpp's BERT graph adds the segment-A type embedding to every token and the converter
drops BERT's pooler: a BERT GGUF serves faithfully only when converted by edgerank
(convert/gguf.py folds both into the file and marks it), and any other one is refused
(`check_servable`). One pair per decode (PACK_TOKENS = 0): attention runs over the whole
packed batch, masked per pair, so packing pairs measured slower (bench/gguf_speed.py).

LLM rerankers read the answer tokens' logits at each prompt's last position with
`llama_get_logits_ith` (only those rows run the vocabulary head), or the native rank head
of a GGUF converted from a Qwen3-Reranker (softmax over yes/no: log P(yes) - log P(no) is
the same raw score). Every prompt of a request shares its first tokens (template,
instruction, query): they are decoded once into sequence 0, copied
(`llama_memory_seq_cp`) into a sequence per passage, and each passage's remaining tokens
are decoded after it (one passage per decode by default: gguf_llm.PARALLEL says why).
What a prompt shares is fixed by the prompt alone (its common prefix with the same prompt
for an empty passage, cut to a multiple of four tokens), never by its batch mates. Each
sequence has its own KV stream (kv_unified=False) and flash attention is off: a score is
then the one llama.cpp gives the whole prompt decoded from scratch, alone or in any batch,
with or without prefix reuse (tests/backends/test_gguf_real.py, on real weights).

bge-reranker-v2-minicpm-layerwise's per-layer heads do not exist in llama.cpp: it is
refused with a pointer to the torch backend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerank.backends.base import Encoded, ScoreOptions
from edgerank.backends.gguf_base import GgufBase
from edgerank.backends.gguf_llm import GgufLLMBackend
from edgerank.backends.llama_runtime import round_up
from edgerank.backends.pairs import PairTokenizer
from edgerank.errors import (
    BackendFailure,
)
from edgerank.models.gguf_model import GgufModel, detect
from edgerank.models.manifest import Manifest

log = logging.getLogger("edgerank.gguf")

#: cross-encoders: tokens of whole pairs per decode (a pair longer than this goes alone)
PACK_TOKENS = 0


class GgufBackend(GgufBase):
    """Cross-encoders: RANK pooling, the head's logit per sequence."""

    def __init__(self, *args: Any, pack_tokens: int = PACK_TOKENS, **kwargs: Any):
        self._pack = max(0, int(pack_tokens))
        super().__init__(*args, **kwargs)
        raw = self._header.get("edgerank.segment_b_offset")
        self._offset = int(raw) if raw is not None else 0
        self._seqs = 1

    def _init_tokenizer(self) -> None:
        self._tok = PairTokenizer(self._dir / "tokenizer.json", self._spec.max_length)

    def encode(self, query: str, passages: Sequence[str], options: ScoreOptions) -> list[Encoded]:
        return self._tok.encode(query, passages, options)

    def _ids(self, it: Encoded) -> np.ndarray:
        """Segment-B tokens read the folded rows of the token table (see convert_gguf)."""
        if self._offset and it.type_ids is not None:
            return it.ids + self._offset * (it.type_ids > 0)
        return it.ids

    def _groups(self, batch: Sequence[Encoded]) -> list[list[int]]:
        groups: list[list[int]] = []
        tokens = 0
        for i, it in enumerate(batch):
            if groups and tokens + it.n_tokens <= self._pack:
                groups[-1].append(i)
                tokens += it.n_tokens
            else:
                groups.append([i])
                tokens = it.n_tokens
        return groups

    def score(self, batch: Sequence[Encoded]) -> np.ndarray:
        out = np.empty(len(batch), dtype=np.float32)
        if not batch:
            return out
        rt, lib = self._rt, self._rt.lib
        for idx in self._groups(batch):
            # an encoder keeps no KV cache, but its compute buffer grows with the square of
            # the ubatch: sized to what came so far (grown on demand), not to max_length
            size = round_up(max(sum(batch[i].n_tokens for i in idx), self._pack))
            self._seqs = max(self._seqs, len(idx))
            ctx = rt.context(
                size, size, size, self._seqs, embeddings=True, pooling=lib.LLAMA_POOLING_TYPE_RANK
            )
            rt.batch.fill([(self._ids(batch[i]), 0, s, True) for s, i in enumerate(idx)])
            rt.decode()
            for s, i in enumerate(idx):
                ptr = lib.llama_get_embeddings_seq(ctx, s)
                if not ptr:
                    raise BackendFailure(f"{self._name}: no pooled output (not a RANK model?)")
                out[i] = ptr[0]
        return out

    def _details(self) -> dict[str, Any]:
        return {**super()._details(), "pack_tokens": self._pack}


def open_gguf(
    gguf_path: Path | str, tokenizer_dir: Path | str, model: GgufModel | None = None, **kw: Any
) -> GgufBackend | GgufLLMBackend:
    """The backend class that fits the model (detected from the files if not given)."""
    model = model or detect(gguf_path, tokenizer_dir)
    if model.kind == "cross-encoder":
        for key in ("prefix_reuse", "parallel", "context", "kv_unified"):
            kw.pop(key, None)
        return GgufBackend(gguf_path, tokenizer_dir, model=model, **kw)
    kw.pop("pack_tokens", None)
    return GgufLLMBackend(gguf_path, tokenizer_dir, model=model, **kw)


def open_entry(
    model_dir: Path | str,
    manifest: Manifest,
    *,
    precision: str | None = None,
    **kw: Any,
) -> GgufBackend | GgufLLMBackend:
    """A gguf store entry: one GGUF per quant plus the tokenizer; ``precision`` picks the
    quant (the manifest's default when None or not installed)."""
    model_dir = Path(model_dir)
    model = GgufModel.from_recipe(manifest.recipe, manifest.max_length)
    files = model.files or {manifest.precision: manifest.model_file}
    quant = precision if precision in files else manifest.precision
    if precision and precision not in files:
        log.info("%s has no %s file: using %s", manifest.name, precision, quant)
    rel = files.get(quant, manifest.model_file)
    return open_gguf(
        model_dir / rel,
        model_dir,
        model,
        name=manifest.name,
        precision=quant,
        identity=manifest.identity(),
        **kw,
    )
