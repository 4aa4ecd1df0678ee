"""Raw logits of an ONNX graph for many (query, passage) pairs, as fast as a batch allows.

The accuracy-aware install (convert/backoff.py) scores the same probe with several graphs;
this keeps tokenization once per probe and scores length-sorted, right-padded batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class Scorer:
    """Length-sorted, right-padded batches through one onnxruntime session."""

    def __init__(self, model, tokenizer_json: Path, threads: int, max_length: int):
        import onnxruntime as ort

        from edgerank.backends.onnx import session_options
        from edgerank.backends.pairs import PairTokenizer

        src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
        self.sess = ort.InferenceSession(
            src, session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.tok = PairTokenizer(tokenizer_json, max_length)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(e.ids, e.type_ids) for e in self.tok.encode_pairs(pairs)]

    def run(self, rows, extra: dict | None = None, batch: int = 16) -> np.ndarray:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        out = np.zeros(len(rows), dtype=np.float64)
        for s in range(0, len(order), batch):
            chunk = order[s : s + batch]
            width = max(len(rows[i][0]) for i in chunk)
            shape = (len(chunk), width)
            feed = {k: np.zeros(shape, np.int64) for k in self.inputs if k != "er_fp32"}
            for r, i in enumerate(chunk):
                ids, types = rows[i]
                feed["input_ids"][r, : len(ids)] = ids
                feed["attention_mask"][r, : len(ids)] = 1
                if "token_type_ids" in feed:
                    feed["token_type_ids"][r, : len(ids)] = types
            feed.update(extra or {})
            (logits,) = self.sess.run(None, feed)[:1]
            out[chunk] = np.asarray(logits, dtype=np.float64).reshape(len(chunk), -1)[:, 0]
        return out

    def score_groups(self, encoded_groups) -> list[np.ndarray]:
        flat = [row for g in encoded_groups for row in g]
        scores = self.run(flat)
        out, start = [], 0
        for g in encoded_groups:
            out.append(scores[start : start + len(g)])
            start += len(g)
        return out
