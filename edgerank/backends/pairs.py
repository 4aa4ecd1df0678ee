"""Cross-encoder pair tokenization on the Rust `tokenizers` library (no transformers).

The query is tokenized once per request; each passage is truncated (or cut into
overlapping windows) so that the query always survives whole, and the model's own
post-processor adds the special tokens and segment ids ([CLS] q [SEP] p [SEP] for BERT,
<s> q </s></s> p </s> for XLM-R).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgerank.backends.base import Encoded, ScoreOptions
from edgerank.backends.padding import pad_batch
from edgerank.errors import InvalidInput, ModelCorrupt

#: share of the window the query may take before it is cut (BAAI cuts at 3/4 too)
QUERY_SHARE = 0.75


def load_tokenizer(tokenizer_json: Path):
    """A `tokenizers` Tokenizer with truncation and padding off: callers place every id."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_json))
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise ModelCorrupt(f"cannot read tokenizer {tokenizer_json}: {exc}") from exc
    tok.no_truncation()
    tok.no_padding()
    return tok


class PairTokenizer:
    def __init__(self, tokenizer_json: Path, max_length: int):
        self._tok = load_tokenizer(tokenizer_json)
        self.max_length = max_length
        self._specials = self._tok.num_special_tokens_to_add(is_pair=True)
        self.pad_id = self._pad_id()

    def _pad_id(self) -> int:
        for token in ("[PAD]", "<pad>"):
            tid = self._tok.token_to_id(token)
            if tid is not None:
                return tid
        return 0

    def encode(self, query: str, passages: Sequence[str], options: ScoreOptions) -> list[Encoded]:
        limit = self.max_length
        if options.max_tokens_per_doc is not None:
            if options.max_tokens_per_doc < 1:
                raise InvalidInput("max_tokens_per_doc must be >= 1")
            limit = min(limit, options.max_tokens_per_doc)
        room = limit - self._specials
        q = self._tok.encode(query, add_special_tokens=False)
        q_cap = max(1, int(room * QUERY_SHARE))
        query_cut = len(q.ids) > q_cap
        if query_cut:
            q.truncate(q_cap, direction="right")
        window = room - len(q.ids)
        direction = options.direction
        items: list[Encoded] = []
        for doc, p in enumerate(self._tok.encode_batch(list(passages), add_special_tokens=False)):
            if len(p.ids) <= window:
                parts = [p]
            elif options.truncation == "chunk":
                stride = min(options.chunk_overlap, window // 2)
                p.truncate(window, stride=stride, direction="right")
                parts = [p, *p.overflowing]
            else:
                p.truncate(window, direction=direction)
                parts = [p]
            for part in parts:
                pair = self._tok.post_process(q, part, add_special_tokens=True)
                items.append(
                    Encoded(
                        doc=doc,
                        ids=np.asarray(pair.ids, dtype=np.int64),
                        type_ids=np.asarray(pair.type_ids, dtype=np.int64),
                        query_cut=query_cut,
                    )
                )
        return items

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Encoded]:
        """One input per (query, passage), cut as a request with default options is.

        The install's calibration and probe (convert/int8.py, quality/scoring.py) go through
        here so that they measure what the daemon runs, and so that a query longer than the
        window is capped rather than fatal: `tokenizers`' only_second truncation raises on
        it, which a user's --calibration file could trigger.
        """
        out: list[Encoded] = []
        for query, group in itertools.groupby(pairs, key=lambda pair: pair[0]):
            out += self.encode(query, [doc for _, doc in group], ScoreOptions())
        return out

    def pad(self, batch: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """Right-pad a batch to its longest item: input_ids, attention_mask, token_type_ids."""
        feed = pad_batch(
            [it.ids for it in batch], self.pad_id, type_ids=[it.type_ids for it in batch]
        )
        del feed["position_ids"]  # encoders derive positions themselves
        return feed
