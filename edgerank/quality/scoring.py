"""One ONNX graph scoring many (query, passage) pairs for the install's measurements.

The accuracy-aware install (convert/backoff.py) scores the same probe with several graphs,
so it tokenizes once and feeds pre-tokenized, length-sorted batches; every batch runs
through the serving backend itself (backends/onnx.py: its session settings, padding and
run slices), so what the install measures is what the daemon runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgerank.backends.base import Encoded
from edgerank.backends.onnx import OnnxBackend
from edgerank.models.manifest import Manifest

#: pairs per batch when scoring a probe: near-equal lengths after sorting
BATCH = 16


class GraphScorer:
    """An ONNX file (outside the store) and the tokenizer it is scored with."""

    def __init__(self, model: Path, tokenizer_json: Path, threads: int, max_length: int):
        model = Path(model).resolve()
        manifest = Manifest(model.stem, "onnx", "fp32", str(model), max_length)
        self.backend = OnnxBackend(Path(tokenizer_json).parent, manifest, threads)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[Encoded]:
        return self.backend.tokenizer.encode_pairs(pairs)

    def run(self, rows: Sequence[Encoded], feeds: dict | None = None) -> np.ndarray:
        """One raw score per row, in ``rows``' order."""
        order = sorted(range(len(rows)), key=lambda i: rows[i].n_tokens)
        out = np.zeros(len(rows), dtype=np.float64)
        for s in range(0, len(order), BATCH):
            chunk = order[s : s + BATCH]
            out[chunk] = self.backend.score([rows[i] for i in chunk], feeds)
        return out

    def score_groups(self, encoded_groups: Sequence[Sequence[Encoded]]) -> list[np.ndarray]:
        flat = [row for g in encoded_groups for row in g]
        scores = self.run(flat)
        out, start = [], 0
        for g in encoded_groups:
            out.append(scores[start : start + len(g)])
            start += len(g)
        return out

    def cpu_seconds(self, batch: Sequence[Encoded]) -> float:
        """This thread's CPU time for one batch. With one intra-op thread onnxruntime runs
        every kernel on the calling thread, so this is the work alone: time the scheduler
        gives a neighbour's process is not counted, which wall time would."""
        t0 = time.thread_time()
        self.backend.score(batch)
        return time.thread_time() - t0

    def close(self) -> None:
        self.backend.close()
