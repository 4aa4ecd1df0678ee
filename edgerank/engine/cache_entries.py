"""What a score-cache entry is: its key (what fixes a score, hashed) and its value (the score).

A key is a BLAKE2b digest of the model's identity (BackendInfo.identity: the manifest's file
hashes and recipe), its runtime, precision, device type and max length, every ScoreOptions
field (by name: a field added later changes keys rather than being ignored), the query and
the passage, each length-prefixed. A value is the passage's merged raw score as the float32
bytes the batcher produced, plus its window and token counts (12 bytes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from edgerank.backends.base import BackendInfo, Encoded, ScoreOptions
from edgerank.engine.rank import merge_max

if TYPE_CHECKING:
    from edgerank.engine.requests import Group

#: bump when the key or value layout changes: old entries then simply stop matching
SCHEMA = b"edgerank-pair-score-v1"
DIGEST = 16  # bytes of key digest: 128 bits, collisions out of reach
#: one cached pair: raw score (float32 bits as computed), model inputs, tokens
VALUE = np.dtype([("raw", "<f4"), ("windows", "<u4"), ("tokens", "<u4")])


@dataclass
class Scores:
    """Raw scores for positions 0..n-1 and what computing them cost (Service._score)."""

    raw: np.ndarray  # float32 per position
    windows: np.ndarray  # model inputs per position (> 1 where chunking split a passage)
    tokens: np.ndarray  # tokens per position
    #: (pairs, model inputs, tokens) the model ran, and the time it took
    scored: tuple[int, int, int] = (0, 0, 0)
    tokenization_ns: int = 0
    queue_ns: int = 0
    inference_ns: int = 0

    @classmethod
    def of(cls, items: Sequence[Encoded], scores: np.ndarray, n: int, **timings: int) -> Scores:
        """The model's per-input scores as per-position ones (a chunked passage: the max)."""
        docs = np.fromiter((it.doc for it in items), dtype=np.int64, count=len(items))
        lengths = np.fromiter((it.n_tokens for it in items), dtype=np.int64, count=len(items))
        return cls(
            raw=merge_max(items, scores, n),
            windows=np.bincount(docs, minlength=n),
            tokens=np.bincount(docs, weights=lengths, minlength=n).astype(np.int64),
            scored=(n, len(items), int(lengths.sum())),
            **timings,
        )

    def add_cost(self, other: Scores) -> None:
        self.scored = tuple(a + b for a, b in zip(self.scored, other.scored, strict=True))  # type: ignore[assignment]
        self.tokenization_ns += other.tokenization_ns
        self.queue_ns += other.queue_ns
        self.inference_ns += other.inference_ns


#: Service._score: (groups, positions, deadline) -> their Scores
ScoreFn = Callable[[Sequence["Group"], int, "float | None"], Awaitable[Scores]]


# -- keys and values ---------------------------------------------------------------------


def model_digest(info: BackendInfo) -> bytes | None:
    """What fixes the model's scores, hashed; None when the backend cannot say (no cache)."""
    if not info.identity:
        return None
    facts = {
        "identity": info.identity,
        "backend": info.backend,
        "precision": info.precision,
        "device": info.device.split(":")[0],  # cuda:0 and cuda:1 run the same kernels
        "max_length": info.max_length,
    }
    text = json.dumps(facts, sort_keys=True).encode()
    return hashlib.blake2b(SCHEMA + text, digest_size=DIGEST).digest()


def options_bytes(options: ScoreOptions) -> bytes:
    values = {f.name: getattr(options, f.name) for f in fields(options)}
    return json.dumps(values, sort_keys=True, default=repr).encode()


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")  # JSON may carry lone surrogates


def _field(h: Any, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))  # length-prefixed: concatenations never collide
    h.update(data)


def pair_keys(
    model: bytes, query: str, passages: Sequence[str], options: ScoreOptions
) -> list[bytes]:
    """One key per passage; the model, options and query are hashed once."""
    head = hashlib.blake2b(model, digest_size=DIGEST)
    _field(head, options_bytes(options))
    _field(head, _text(query))
    keys = []
    for passage in passages:
        h = head.copy()
        _field(h, _text(passage))
        keys.append(h.digest())
    return keys


def request_keys(model: bytes, groups: Sequence[Group], n: int) -> list[tuple[bytes, Group, int]]:
    """(key, group, index in the group) for positions 0..n-1."""
    out: list[Any] = [None] * n
    for g in groups:
        positions = g.positions if g.positions is not None else range(len(g.passages))
        keys = pair_keys(model, g.query, g.passages, g.options)
        for j, (pos, key) in enumerate(zip(positions, keys, strict=True)):
            out[pos] = (key, g, j)
    return out


def pack(scores: Scores) -> list[bytes]:
    """One value per position, the raw score's float32 bits untouched."""
    rows = np.empty(len(scores.raw), dtype=VALUE)
    rows["raw"] = np.asarray(scores.raw, dtype=np.float32)
    rows["windows"] = scores.windows
    rows["tokens"] = scores.tokens
    buf = rows.tobytes()
    size = VALUE.itemsize
    return [buf[i : i + size] for i in range(0, len(buf), size)]


def plausible(value: bytes, passage: str, max_length: int) -> bool:
    """Could this value be the model's answer for `passage`? A shared cache is input from
    another process: a finite score, at least one model input and at most one per byte of
    the passage (chunking never splits finer), each of at most max_length tokens."""
    if len(value) != VALUE.itemsize:
        return False
    row = np.frombuffer(value, dtype=VALUE)[0]
    windows, tokens = int(row["windows"]), int(row["tokens"])
    most = len(passage.encode("utf-8", "surrogatepass")) + 1
    return (
        bool(np.isfinite(row["raw"]))
        and 1 <= windows <= most
        and (windows <= tokens <= windows * max_length)
    )


def unpack(values: Sequence[bytes]) -> Scores:
    rows = np.frombuffer(b"".join(values), dtype=VALUE)
    return Scores(
        raw=rows["raw"].astype(np.float32),  # a copy in native order; same bits
        windows=rows["windows"].astype(np.int64),
        tokens=rows["tokens"].astype(np.int64),
    )
