"""A bare GGUF's own vocabulary as the tokenizer of an LLM reranker.

A GGUF downloaded alone has no tokenizer.json beside it, but it carries its vocabulary
(tokens, merges or scores, special tokens): llama.cpp's tokenizer is then the model's own.
This gives llm.PromptTokenizer the two calls it makes of a `tokenizers` Tokenizer,
token_to_id() and encode() with character offsets, so prompts, truncation and answer
tokens follow the very rules they follow with a tokenizer.json.

Offsets come from each token's piece (its bytes, specials written out): the pieces of a
byte-level BPE or of a sentencepiece vocabulary without the space prefix concatenate to
the text itself; a vocabulary that prepends a space is shifted back by it; anything else
is aligned piece by piece, skipping what the tokenizer normalised away.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from edgerank.errors import ModelCorrupt

#: llama_vocab_type values that hold no token strings
_VOCAB_NONE = 0


@dataclass(frozen=True)
class Encoding:
    """What llm.PromptTokenizer reads of a `tokenizers` Encoding."""

    ids: list[int]
    offsets: list[tuple[int, int]]


class GgufVocab:
    """llama.cpp's tokenizer of one loaded model (the model owns the vocabulary)."""

    def __init__(self, lib: Any, model: Any, name: str = "this GGUF"):
        self._lib = lib
        self._vocab = lib.llama_model_get_vocab(model)
        if not self._vocab or lib.llama_vocab_type(self._vocab) == _VOCAB_NONE:
            raise ModelCorrupt(
                f"{name} carries no vocabulary (ids only): import it with its tokenizer.json "
                "and config.json beside it"
            )
        self.n_tokens = int(lib.llama_vocab_n_tokens(self._vocab))
        bos = int(lib.llama_vocab_bos(self._vocab))
        self.bos_id: int | None = bos if 0 <= bos < self.n_tokens else None
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self._pieces: dict[int, bytes] = {}
        self._buf = ctypes.create_string_buffer(256)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Ids of ``text``, no BOS/EOS added; ``special``: spelled special tokens
        ("<|im_start|>") become their ids, as a tokenizer.json's added tokens do."""
        data = text.encode("utf-8")
        if not data:
            return []
        n_max = len(data) + 8
        out = (ctypes.c_int32 * n_max)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), out, n_max, False, special)
        if n < 0:  # more tokens than bytes + 8: cannot happen, but the API allows it
            n_max = -n
            out = (ctypes.c_int32 * n_max)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), out, n_max, False, special)
        if n < 0:
            raise ModelCorrupt(f"llama.cpp could not tokenize a text of {len(data)} bytes")
        return list(out[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens written out)."""
        hit = self._pieces.get(token)
        if hit is not None:
            return hit
        n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            data = buf.raw[:n]
        else:
            data = self._buf.raw[:n]
        self._pieces[token] = data
        return data

    def token_to_id(self, token: str) -> int | None:
        """The id of a text that is exactly one token of the vocabulary, else None."""
        ids = self.tokenize(token)
        if len(ids) == 1 and self.piece(ids[0]) == token.encode("utf-8"):
            return ids[0]
        return None

    def encode(self, text: str, add_special_tokens: bool = False) -> Encoding:
        if add_special_tokens:
            raise ValueError("edgerank places special tokens itself")
        ids = self.tokenize(text)
        return Encoding(ids, _offsets(text, [self.piece(t) for t in ids]))


def _offsets(text: str, pieces: list[bytes]) -> list[tuple[int, int]]:
    """Character spans of each piece in ``text`` (see the module notes)."""
    data = text.encode("utf-8")
    joined = b"".join(pieces)
    if joined == data:
        shift = 0
    elif joined == b" " + data:
        shift = 1
    else:
        return _aligned(text, pieces)
    # byte offset -> character offset; a piece that ends inside a character (a byte-fallback
    # token) ends after it
    char_at = [0] * (len(data) + 1)
    pos = 0
    for i, ch in enumerate(text):
        n = len(ch.encode("utf-8"))
        for b in range(pos, pos + n):
            char_at[b] = i
        pos += n
    char_at[len(data)] = len(text)
    spans = []
    start = 0
    for p in pieces:
        a, b = max(0, start - shift), max(0, start + len(p) - shift)
        start += len(p)
        end = char_at[b] if b >= len(data) or _is_char_start(data, b) else char_at[b] + 1
        spans.append((char_at[min(a, len(data))], end))
    return spans


def _is_char_start(data: bytes, i: int) -> bool:
    return (data[i] & 0xC0) != 0x80


def _aligned(text: str, pieces: list[bytes]) -> list[tuple[int, int]]:
    """Spans found by searching each piece's text from where the last one ended."""
    spans = []
    pos = 0
    for p in pieces:
        piece = p.decode("utf-8", errors="ignore").strip()
        at = text.find(piece, pos) if piece else -1
        if at < 0:
            spans.append((pos, pos))
            continue
        spans.append((at, at + len(piece)))
        pos = at + len(piece)
    if spans:  # the last piece reaches the end of the text, as a tokenizer's does
        spans[-1] = (spans[-1][0], max(spans[-1][1], len(text.rstrip()) if pos else 0))
    return spans
