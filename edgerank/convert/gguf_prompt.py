"""How a bare GGUF LLM is prompted and scored, decided once at import and kept in its manifest.

A GGUF downloaded alone says what it is (general.name, its architecture, its vocabulary and
chat template) but not how it was trained to rerank. The rules, in order:

1. ``--rules NAME``, or the GGUF's name (or the store name) matching a catalog LLM
   reranker (Qwen3-Reranker, bge-reranker-v2-gemma): that reranker's publisher prompt and
   score rule, exactly as for the checkpoint;
2. otherwise a generic yes/no prompt: Qwen3-Reranker's instruction layout (the published
   yes/no reranking prompt for instruct LMs, without its Qwen3-only think block), put into
   the model's own chat template when the GGUF carries one (llama.cpp's
   llama_chat_apply_template), else written as a plain completion ending in "Answer:";
   score logit(yes) - logit(no) at the last position. The answer words are the ones the
   prompt asks for, spelled as the model's next token would be ("yes" after a chat turn's
   header, " yes" after "Answer:").

What cannot be scored is refused in one line: an encoder GGUF (no next-token logits), a
vocabulary without strings, answer words that are not one token each.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerank.catalog.spec import Catalog, ModelSpec
from edgerank.errors import InvalidInput, ModelCorrupt
from edgerank.models.gguf_file import GgufHeader
from edgerank.models.gguf_model import LAYERWISE_ERROR, TOKENIZER_GGUF, GgufModel
from edgerank.models.llm_format import LlmFormat

#: Qwen3-Reranker's system line and user layout (its model card), reused for any instruct LM
SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
USER = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {passage}"
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
#: without a chat template: the same words as a completion
COMPLETION = SYSTEM + "\n\n" + USER + "\n\nAnswer:"
CHAT_ANSWERS = ("yes", "no")
COMPLETION_ANSWERS = (" yes", " no")
#: the longest prompt a generic import allows by default (the GGUF's context may be longer)
GENERIC_MAX_LENGTH = 8192


@dataclass(frozen=True)
class Choice:
    """The model an import records, and why, for the manifest and the CLI's one line."""

    model: GgufModel
    #: "catalog:<name>", "chat-template" or "completion"
    rules: str
    #: answer word -> its token id in the GGUF's vocabulary
    answer_ids: dict[str, int]

    def describe(self) -> str:
        fmt = self.model.llm
        assert fmt is not None
        words = ", ".join(f"{w!r}={i}" for w, i in self.answer_ids.items())
        how = {
            "chat-template": "generic yes/no prompt in the GGUF's chat template",
            "completion": "generic yes/no prompt as a completion (no chat template)",
        }.get(self.rules, f"{self.rules.split(':', 1)[-1]}'s prompt and rule (catalog)")
        return f"{how}; score {fmt.score_rule} over answer tokens {words}"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def catalog_match(header: GgufHeader, name: str, catalog: Catalog) -> ModelSpec | None:
    """The catalog LLM reranker a GGUF is, by the store name or the GGUF's own names."""
    own = {_norm(str(header.get(k) or "")) for k in ("general.name", "general.basename")}
    own |= {_norm(name)}
    own.discard("")
    for spec in catalog:
        if not spec.is_llm:
            continue
        keys = {_norm(spec.name), _norm(spec.hub_id.split("/")[-1])}
        if keys & own:
            return spec
    return None


def is_encoder(header: GgufHeader) -> bool:
    """BERT-family GGUFs say their attention is not causal: no next-token logits."""
    return header.get("{arch}.attention.causal") is False or header.arch in (
        "bert", "nomic-bert", "jina-bert-v2", "neo-bert", "modern-bert", "t5encoder",
    )  # fmt: skip


def choose(
    path: Path,
    header: GgufHeader,
    name: str,
    catalog: Catalog,
    rules: str | None = None,
) -> Choice:
    """The prompt, score rule and answer tokens of a bare GGUF LLM (see the module notes)."""
    from edgerank.backends.gguf_vocab import GgufVocab
    from edgerank.backends.llama_runtime import LlamaRuntime
    from edgerank.backends.llm import PromptTokenizer

    what = path.name
    if is_encoder(header):
        raise InvalidInput(
            f"{what} is an encoder ({header.arch}): it has no next-token logits to read a "
            "yes/no answer from; a cross-encoder GGUF installs from its checkpoint directory "
            "(`edgerank import DIR --backend gguf`)"
        )
    spec = _rules_spec(header, name, catalog, rules)
    rt = LlamaRuntime(path, 1, vocab_only=True)
    try:
        vocab = GgufVocab(rt.lib, rt.model, what)
        train = int(header.get("{arch}.context_length") or 0) or GENERIC_MAX_LENGTH
        if spec is not None:
            fmt = LlmFormat.from_spec(spec)
            max_length, how = min(spec.max_length, train), f"catalog:{spec.name}"
        else:
            fmt, how = _generic(rt, vocab)
            max_length = min(train, GENERIC_MAX_LENGTH)
            for word in fmt.answer_words:
                if vocab.token_to_id(word) is None:
                    pieces = [vocab.piece(t).decode(errors="replace") for t in vocab.tokenize(word)]
                    raise ModelCorrupt(
                        f"{what}: the answer word {word!r} is not one token of its vocabulary "
                        f"({pieces}): a yes/no logit cannot be read from it"
                    )
        tok = PromptTokenizer(vocab, fmt, max_length, bos_id=vocab.bos_id)
        answer_ids = dict(zip(fmt.answer_words, tok.answer_ids, strict=True))
    finally:
        rt.close()
    model = GgufModel("llm-yes-logit", max_length, fmt, tokenizer=TOKENIZER_GGUF)
    return Choice(model, how, answer_ids)


def _rules_spec(
    header: GgufHeader, name: str, catalog: Catalog, rules: str | None
) -> ModelSpec | None:
    if rules is not None:
        spec = catalog.get(rules)
        if not spec.is_llm:
            raise InvalidInput(f"--rules {rules}: a {spec.kind}, not an LLM reranker")
    else:
        spec = catalog_match(header, name, catalog)
    if spec is not None and spec.kind == "llm-layerwise":
        raise InvalidInput(LAYERWISE_ERROR.format(name=spec.name))
    return spec


def _generic(rt: Any, vocab: Any) -> tuple[LlmFormat, str]:
    """The chat-template prompt when the GGUF has a template llama.cpp knows, else the
    completion prompt."""
    lib = rt.lib
    tmpl = lib.llama_model_chat_template(rt.model, None)
    prompt = _apply_template(lib, tmpl, SYSTEM, USER) if tmpl else None
    bos = vocab.add_bos and vocab.bos_id is not None
    if prompt is None:
        return LlmFormat(
            "yes-no-softmax", COMPLETION, INSTRUCTION, answers=COMPLETION_ANSWERS, bos=bos
        ), "completion"
    if bos:  # a template that writes the BOS the vocabulary adds: once, as an id
        text = vocab.piece(vocab.bos_id).decode(errors="replace")
        if text and prompt.startswith(text):
            prompt = prompt[len(text) :]
    fmt = LlmFormat("yes-no-softmax", prompt, INSTRUCTION, answers=CHAT_ANSWERS, bos=bos)
    return fmt, "chat-template"


def _apply_template(lib: Any, tmpl: bytes, system: str, user: str) -> str | None:
    """llama.cpp's rendering of one system + one user turn and the assistant's header."""
    msgs = (lib.llama_chat_message * 2)()
    keep = [system.encode(), user.encode()]
    for i, (role, content) in enumerate(zip((b"system", b"user"), keep, strict=True)):
        msgs[i].role = role
        msgs[i].content = content
    size = 4096
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = lib.llama_chat_apply_template(tmpl, msgs, 2, True, buf, size)
        if n < 0:
            return None  # a template llama.cpp does not recognise
        if n <= size:
            text = buf.raw[:n].decode("utf-8", errors="replace")
            return text if all(f in text for f in ("{query}", "{passage}")) else None
        size = n
    return None
