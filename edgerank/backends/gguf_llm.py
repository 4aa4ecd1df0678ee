"""LLM rerankers on llama.cpp: answer-token logits (or a converted Qwen3-Reranker's native rank
head) at each prompt's last position, with the prompt prefix a request shares decoded once
and copied into one KV sequence per passage (see backends/gguf.py for the whole design).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from edgerank.backends import llm
from edgerank.backends.base import Encoded, ScoreOptions
from edgerank.backends.gguf_base import GgufBase
from edgerank.backends.gguf_vocab import GgufVocab
from edgerank.backends.llama_runtime import round_up
from edgerank.errors import BackendFailure, BackendUnavailable, ModelCorrupt
from edgerank.models.gguf_model import LAYERWISE_ERROR, TOKENIZER_GGUF, rank_head

#: LLM rerankers: passages per decode. One: llama.cpp's CPU matmuls on repacked weights
#: (q4_0, q4_K, iq4_nl) quantize activations four rows at a time and the last n % 4 rows of
#: a decode one by one, with different rounding, so a row's result depends on where it falls
#: in the decode. A passage decoded alone after a prefix cut at a multiple of ROW_GROUP has
#: its rows fall as in a from-scratch decode of its own prompt: the same score, whoever its
#: batch mates. Beside others, Gemma 3's repacked Q4_K_M scores moved, and so did SmolLM2's
#: Q4_1, which llama.cpp multiplies as stored; more per decode bought no speed
#: (docs/gguf.md, python -m bench.gguf_speed --real)
PARALLEL = 1
#: rows llama.cpp's repacked matmuls quantize together; the shared prefix is a multiple of it
ROW_GROUP = 4


LLM_CONTEXT = 4096


#: logical batch of an LLM decode (llama.cpp splits it into ubatches of UBATCH)
UBATCH = 512


class GgufLLMBackend(GgufBase):
    """LLM rerankers: answer-token logits (or the native rank head) at the last position,
    with the shared prompt prefix evaluated once per request."""

    def __init__(
        self,
        *args: Any,
        prefix_reuse: bool = True,
        parallel: int = PARALLEL,
        context: int = LLM_CONTEXT,
        kv_unified: bool = False,
        **kwargs: Any,
    ):
        self._reuse = prefix_reuse
        self._parallel = max(1, int(parallel))
        self._context = max(256, int(context))
        self._unified = kv_unified
        self._ctx_extra = dict(kwargs.pop("ctx_params", None) or {})
        super().__init__(*args, **kwargs)
        if self._spec.llm.score_rule == "layer-head":
            raise BackendUnavailable(LAYERWISE_ERROR.format(name=self._name))
        self._labels = rank_head(self._header)
        if self._labels:
            if self._spec.llm.score_rule != "yes-no-softmax":
                raise ModelCorrupt(
                    f"{self._name} has a rank head (softmax over {list(self._labels)}), but "
                    f"its score rule {self._spec.llm.score_rule} reads a raw logit"
                )
            words = self._spec.llm.answer_words
            if sorted(w.lower() for w in self._labels) != sorted(w.lower() for w in words):
                raise ModelCorrupt(
                    f"{self._name}: rank head labels {list(self._labels)} do not match the "
                    f"score rule's answers {list(words)}"
                )
            lower = [w.lower() for w in self._labels]
            self._label_index = [lower.index(w.lower()) for w in words]

    def _init_tokenizer(self) -> None:
        spec = self._spec
        if spec.tokenizer != TOKENIZER_GGUF:
            self._tok = llm.PromptTokenizer.from_dir(self._dir, spec.llm, spec.max_length)
            return
        vocab = GgufVocab(self._rt.lib, self._rt.model, self._name)
        self._tok = llm.PromptTokenizer(vocab, spec.llm, spec.max_length, bos_id=vocab.bos_id)

    def encode(self, query: str, passages: Sequence[str], options: ScoreOptions) -> list[Encoded]:
        """Each item carries the length of the prefix it shares with the same prompt for an
        empty passage: a property of the prompt alone, so groups never depend on batch mates."""
        items = self._tok.encode(query, passages, options)
        if not self._reuse or not items:
            return items
        (empty,) = self._tok.encode(query, [""], replace(options, truncation="truncate"))
        ref = empty.ids
        out = []
        for it in items:
            n = min(len(ref), it.n_tokens - 1)
            diff = np.nonzero(it.ids[:n] != ref[:n])[0]
            k = int(diff[0]) if len(diff) else n
            out.append(replace(it, extra={"prefix": k - k % ROW_GROUP}))
        return out

    def _prefix(self, it: Encoded) -> int:
        if not self._reuse or not isinstance(it.extra, dict):
            return 0
        return int(it.extra.get("prefix", 0))

    def score(self, batch: Sequence[Encoded]) -> np.ndarray:
        out = np.empty(len(batch), dtype=np.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, it in enumerate(batch):
            k = self._prefix(it)
            groups.setdefault(tuple(it.ids[:k].tolist()), []).append(i)
        for prefix, idx in groups.items():
            self._score_group(np.asarray(prefix, dtype=np.int64), [batch[i] for i in idx], out, idx)
        return out

    def _ensure(self, need: int) -> Any:
        """A context whose KV cells hold the longest prompt and as many passages in
        parallel as ``context`` cells allow (at most ``parallel``), plus sequence 0 for the
        prefix. kv_unified=False (the default) gives every sequence its own KV stream: a
        passage attends only to its own cells (measured 1.3x faster than one shared stream
        at 20 passages), and its score is bit-identical alone or in a batch (the shared
        stream moved scores by up to 0.03 with batch mates)."""
        rt = self._rt
        per_seq = round_up(need)
        params: dict[str, Any] = {"kv_unified": self._unified, **self._ctx_extra}
        if self._labels:
            params.update(embeddings=True, pooling=rt.lib.LLAMA_POOLING_TYPE_RANK)
        if self._unified:
            n_ctx, seqs = round_up(max(self._context, need)), self._parallel + 1
        else:
            if rt.ctx is not None and rt.params == params:
                if rt.n_ctx // rt.n_seq >= per_seq:
                    return rt.ctx
                rt.free_context()  # its streams are too short, whatever its total size
            seqs = 1 + max(1, min(self._parallel, self._context // per_seq))
            n_ctx = per_seq * seqs
        batch = max(self._context, need)
        return rt.context(n_ctx, batch, min(UBATCH, batch), seqs, **params)

    def _score_group(
        self, prefix: np.ndarray, items: list[Encoded], out: np.ndarray, where: list[int]
    ) -> None:
        rt, lib = self._rt, self._rt.lib
        k = len(prefix)
        longest = max(it.n_tokens for it in items)
        ctx = self._ensure(longest)
        room = self._rt.batch.capacity
        mem = rt.memory()
        lib.llama_memory_clear(mem, False)  # metadata only: stale cells are never read
        if k:
            rt.batch.fill([(prefix, 0, 0, False)])
            rt.decode()
        cells = rt.n_ctx if self._unified else rt.n_ctx // rt.n_seq
        slots = rt.n_seq - 1
        start = 0
        while start < len(items):
            chunk: list[int] = []
            tokens = 0
            for j in range(start, len(items)):
                n = items[j].n_tokens - k
                over = tokens + n > room or (self._unified and k + tokens + n > cells)
                if chunk and (over or len(chunk) >= slots):
                    break
                chunk.append(j)
                tokens += n
            rows = []
            for s, j in enumerate(chunk, start=1):
                if k:
                    lib.llama_memory_seq_cp(mem, 0, s, -1, -1)
                rows.append((items[j].ids[k:], k, s, True))
            last = rt.batch.fill(rows)
            rt.decode()
            for s, (j, pos) in enumerate(zip(chunk, last, strict=True), start=1):
                out[where[j]] = self._read(ctx, s, pos)
                lib.llama_memory_seq_rm(mem, s, -1, -1)
            start += len(chunk)

    def _read(self, ctx: Any, seq: int, pos: int) -> float:
        lib = self._rt.lib
        if self._labels:
            ptr = lib.llama_get_embeddings_seq(ctx, seq)
            if not ptr:
                raise BackendFailure(f"{self._name}: no rank head output")
            yes, no = (max(float(ptr[i]), 1e-38) for i in self._label_index)
            return math.log(yes) - math.log(no)
        ptr = lib.llama_get_logits_ith(ctx, pos)
        if not ptr:
            raise BackendFailure(f"{self._name}: no logits for position {pos}")
        picked = np.array([[ptr[t] for t in self._tok.answer_ids]], dtype=np.float32)
        return float(llm.raw_scores(self._spec.llm.score_rule, picked)[0])

    def _details(self) -> dict[str, Any]:
        return {
            **super()._details(),
            "score_rule": self._spec.llm.score_rule,
            "head": "rank" if self._labels else "logits",
            "prefix_reuse": self._reuse,
            "parallel": self._parallel,
        }
