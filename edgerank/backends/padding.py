"""Batch padding, written once: every runtime feeds (batch, width) int64 arrays of ids, mask,
segment ids and positions, padded on the right (encoders) or on the left (LLMs, so that the
last column is every row's answer position).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_batch(
    seqs: Sequence[np.ndarray],
    pad_id: int = 0,
    *,
    type_ids: Sequence[np.ndarray | None] | None = None,
    side: str = "right",
) -> dict[str, np.ndarray]:
    """input_ids, attention_mask, token_type_ids (zeros where none given) and position_ids
    counted from each row's first real token, so a row reads the same beside longer rows."""
    width = max(len(s) for s in seqs)
    shape = (len(seqs), width)
    ids = np.full(shape, pad_id, dtype=np.int64)
    mask = np.zeros(shape, dtype=np.int64)
    types = np.zeros(shape, dtype=np.int64)
    positions = np.zeros(shape, dtype=np.int64)
    for row, seq in enumerate(seqs):
        n = len(seq)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, cols] = seq
        mask[row, cols] = 1
        positions[row, cols] = np.arange(n)
        if type_ids is not None and type_ids[row] is not None:
            types[row, cols] = type_ids[row]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "position_ids": positions,
    }
