"""Prompts and score rules of LLM rerankers, shared by every runtime that serves them.

Torch-free (tokenizers + numpy only), so the gguf backend builds the very same token ids.

Each family follows its publisher's reference code, including which pieces are tokenized
separately, because a byte-pair vocabulary merges across a boundary differently than inside
one piece, and the model was trained on the publisher's ids:

- BAAI (bge-reranker-v2-gemma, -minicpm-layerwise): BOS, then each line of the template
  ("A: {query}", "B: {passage}", "{instruction}") tokenized on its own and joined by the
  ids of "\\n". Score: the logit of "Yes" at the last position ("yes-logit"), or the
  layerwise model's head at the cutoff layer ("layer-head").
- Qwen3-Reranker: the chat prefix, the body (from the "<Instruct>" line to the passage) and
  the chat suffix, each tokenized whole; no BOS. Score: logit("yes") - logit("no") at the
  last position ("yes-no-softmax"): sigmoid of it is the reference's P(yes).

Truncation keeps the instruction and the template whole, gives the query at most 3/4 of the
room that is left (BAAI's rule) and the passage the rest; it cuts the text at a token
boundary and re-tokenizes the piece it belongs to. Batches are padded on the left, so the
last position is every row's answer position, with position ids counted from each row's
first real token so that a row scores the same alone or beside longer ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerank.backends.base import Encoded, ScoreOptions
from edgerank.backends.padding import pad_batch
from edgerank.errors import InvalidInput, ModelCorrupt
from edgerank.models.llm_format import LlmFormat

#: share of the room the query may take (BAAI truncates the query to 3/4 of max_length)
QUERY_SHARE = 0.75
#: a passage shorter than this after the prompt and query is a configuration error
MIN_PASSAGE_TOKENS = 1
_FIELD_RE = re.compile(r"\{(query|passage|instruction)\}")
_CACHE_SIZE = 16


def split_units(prompt: str, style: str) -> tuple[str, ...]:
    """The template pieces that are tokenized separately, in order (see the module notes)."""
    if style == "baai":
        return tuple(u for u in re.split(r"(\n)", prompt) if u)
    fields = list(_FIELD_RE.finditer(prompt))
    start = prompt.rfind("\n", 0, fields[0].start()) + 1
    end = fields[-1].end()
    return tuple(u for u in (prompt[:start], prompt[start:end], prompt[end:]) if u)


def raw_scores(rule: str, answer_logits: np.ndarray) -> np.ndarray:
    """Logits of the answer words (n, len(answer_words)) -> one raw score per row.

    yes-no-softmax gives logit_yes - logit_no, whose sigmoid (the engine's normalisation) is
    exactly the reference's softmax P(yes); yes-logit gives the Yes logit itself, whose
    sigmoid is BAAI's normalize=True.
    """
    logits = np.asarray(answer_logits, dtype=np.float32)
    if rule == "yes-no-softmax":
        return logits[:, 0] - logits[:, 1]
    if rule == "yes-logit":
        return logits[:, 0].copy()
    raise ValueError(f"{rule} scores come from layer heads, not from answer logits")


def probability(raw: np.ndarray) -> np.ndarray:
    """The 0..1 score of every rule here (P(yes) for Qwen3, BAAI's normalize=True)."""
    return (1.0 / (1.0 + np.exp(-np.asarray(raw, dtype=np.float64)))).astype(np.float32)


def read_specials(hf_dir: Path) -> dict[str, str | None]:
    """bos/eos/pad token strings from tokenizer_config.json (strings or AddedToken dicts)."""
    path = Path(hf_dir) / "tokenizer_config.json"
    try:
        cfg = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise ModelCorrupt(f"{path} is not valid JSON") from exc
    out: dict[str, str | None] = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        out[key] = value if isinstance(value, str) else None
    return out


@dataclass
class _Text:
    """A piece of user text with its token offsets, cut at token boundaries."""

    text: str
    offsets: list[tuple[int, int]]

    @property
    def n(self) -> int:
        return len(self.offsets)

    def head(self, k: int) -> str:
        return self.text[: self.offsets[k - 1][1]] if k > 0 else ""

    def tail(self, k: int) -> str:
        return self.text[self.offsets[self.n - k][0] :] if k > 0 else ""

    def span(self, start: int, stop: int) -> str:
        return self.text[self.offsets[start][0] : self.offsets[stop - 1][1]]


class PromptTokenizer:
    """encode() and pad() of the Backend contract for LLM rerankers (Rust tokenizers only)."""

    def __init__(
        self,
        tokenizer: Path | Any,
        fmt: LlmFormat,
        max_length: int,
        *,
        bos_token: str | None = None,
        pad_token: str | None = None,
        bos_id: int | None = None,
    ):
        """``tokenizer``: a tokenizer.json, or an object with the same token_to_id() and
        encode() (a bare GGUF's own vocabulary, backends/gguf_vocab.py)."""
        if isinstance(tokenizer, (str, Path)):
            from edgerank.backends.pairs import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        self._tok = tokenizer
        self.fmt = fmt
        self.max_length = max_length
        self._units = split_units(fmt.prompt, fmt.style)
        self._bos: list[int] = []
        if fmt.wants_bos:
            if bos_id is not None:
                self._bos = [bos_id]
            elif bos_token is not None:
                self._bos = [self._id(bos_token, "BOS")]
            elif fmt.bos:
                raise ModelCorrupt("the prompt starts with BOS, but the vocabulary has none")
        self.pad_id = self._tok.token_to_id(pad_token) if pad_token else None
        if self.pad_id is None:
            self.pad_id = 0
        self.answer_ids = tuple(self._answer_id(w) for w in fmt.answer_words)
        if len(set(self.answer_ids)) != len(self.answer_ids):
            raise ModelCorrupt(
                f"the answer words {list(fmt.answer_words)} share their first token "
                f"{self.answer_ids[0]} in this vocabulary: their logits cannot be told apart"
            )
        self._fixed_cache: dict[str, tuple[list[list[int] | None], int]] = {}

    @classmethod
    def from_dir(cls, hf_dir: Path, fmt: LlmFormat, max_length: int) -> PromptTokenizer:
        specials = read_specials(hf_dir)
        pad = specials["pad_token"] or specials["eos_token"]
        return cls(
            Path(hf_dir) / "tokenizer.json",
            fmt,
            max_length,
            bos_token=specials["bos_token"],
            pad_token=pad,
        )

    def _id(self, token: str, what: str) -> int:
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise ModelCorrupt(f"the tokenizer has no {what} token {token!r}")
        return tid

    def _answer_id(self, word: str) -> int:
        """The word as one token, else its first piece (how BAAI reads 'Yes')."""
        tid = self._tok.token_to_id(word)
        if tid is not None:
            return tid
        ids = self._tok.encode(word, add_special_tokens=False).ids
        if not ids:
            raise ModelCorrupt(f"the tokenizer cannot encode the answer word {word!r}")
        return ids[0]

    def _ids(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids if text else []

    def _fill(self, unit: str, values: dict[str, str]) -> str:
        return _FIELD_RE.sub(lambda m: values[m.group(1)], unit)

    def _fixed(self, instruction: str) -> tuple[list[list[int] | None], int]:
        """Per unit: its ids when it holds no query/passage (else None), and the prompt's
        own tokens: BOS + fixed units + the user units' text with empty query and passage."""
        hit = self._fixed_cache.get(instruction)
        if hit is not None:
            return hit
        ids: list[list[int] | None] = []
        cost = len(self._bos)
        empty = {"query": "", "passage": "", "instruction": instruction}
        for unit in self._units:
            unit_ids = self._ids(self._fill(unit, empty))
            cost += len(unit_ids)
            user = "{query}" in unit or "{passage}" in unit
            ids.append(None if user else unit_ids)
        if len(self._fixed_cache) >= _CACHE_SIZE:
            self._fixed_cache.clear()
        self._fixed_cache[instruction] = (ids, cost)
        return ids, cost

    def _text(self, text: str) -> _Text:
        enc = self._tok.encode(text, add_special_tokens=False)
        return _Text(text, list(enc.offsets))

    def _assemble(self, fixed: list[list[int] | None], values: dict[str, str]) -> list[int]:
        ids = list(self._bos)
        for unit, unit_ids in zip(self._units, fixed, strict=True):
            ids += unit_ids if unit_ids is not None else self._ids(self._fill(unit, values))
        return ids

    def encode(
        self,
        query: str,
        passages: Sequence[str],
        options: ScoreOptions,
        extra: Any = None,
    ) -> list[Encoded]:
        limit = self.max_length
        if options.max_tokens_per_doc is not None:
            if options.max_tokens_per_doc < 1:
                raise InvalidInput("max_tokens_per_doc must be >= 1")
            limit = min(limit, options.max_tokens_per_doc)
        instruction = options.instruction
        if instruction is None:
            instruction = self.fmt.default_instruction or ""
        fixed, cost = self._fixed(instruction)
        room = limit - cost
        if room < 1 + MIN_PASSAGE_TOKENS:
            raise InvalidInput(
                f"the prompt and instruction take {cost} of the {limit} tokens allowed: "
                "nothing is left for the query and passage"
            )
        q = self._text(query)
        q_tokens = min(q.n, max(1, int(room * QUERY_SHARE)))
        q_text = q.head(q_tokens) if q_tokens < q.n else query
        window = room - q_tokens
        items: list[Encoded] = []
        for doc, passage in enumerate(passages):
            p = self._text(passage)
            for part in self._parts(p, window, options):
                values = {"query": q_text, "passage": part, "instruction": instruction}
                ids = self._fit(fixed, values, limit)
                array = np.asarray(ids, dtype=np.int64)
                items.append(Encoded(doc, array, extra=extra, query_cut=q_tokens < q.n))
        return items

    def _parts(self, p: _Text, window: int, options: ScoreOptions) -> list[str]:
        if p.n <= window:
            return [p.text]
        if options.truncation == "chunk":
            stride = min(options.chunk_overlap, window // 2)
            step = max(1, window - stride)
            parts = []
            for start in range(0, p.n, step):
                parts.append(p.span(start, min(start + window, p.n)))
                if start + window >= p.n:
                    break
            return parts
        return [p.tail(window) if options.direction == "left" else p.head(window)]

    def _fit(self, fixed: list[list[int] | None], values: dict[str, str], limit: int) -> list[int]:
        """Assemble, and when merges at a piece boundary overshoot the limit, cut the passage
        by the excess and try again; as a last resort drop body ids before the fixed tail."""
        ids = self._assemble(fixed, values)
        for _ in range(3):
            excess = len(ids) - limit
            if excess <= 0:
                return ids
            sub = self._text(values["passage"])
            keep = max(0, sub.n - excess)
            values = {**values, "passage": sub.head(keep)}
            ids = self._assemble(fixed, values)
        if len(ids) <= limit:
            return ids
        tail: list[int] = []
        for unit_ids in reversed(fixed):
            if unit_ids is None:
                break
            tail = unit_ids + tail
        return ids[: limit - len(tail)] + tail

    def pad(self, batch: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """Left-pad to the longest item: input_ids, attention_mask and position_ids that
        count from each row's first real token."""
        feed = pad_batch([it.ids for it in batch], self.pad_id, side="left")
        del feed["token_type_ids"]
        return feed
