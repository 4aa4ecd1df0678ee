"""Batch padding, written once: every runtime feeds (batch, width) int64 arrays of ids, mask,
segment ids and positions, padded on the right (encoders) or on the left (LLMs, so that the
last column is every row's answer position); and the length-sorted cut of items into batches
whose padded size fits a token budget, which the engine's batcher and the runtimes that
re-batch (torch) share.
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


def plan_batches(
    lengths: Sequence[int],
    token_budget: int,
    max_batch: int | None = None,
    max_padding: float | None = None,
) -> list[list[int]]:
    """Group item indices into batches whose padded size (n * longest) fits the budget.

    Items are sorted by length first, so each batch pads to a near-equal length: this is
    where mixed-length requests gain over pad-to-max (the whole point of bucketing).
    An item longer than the budget still gets a batch of its own. ``max_padding``: a batch's
    padded size stays within that multiple of its real tokens (1.0: equal lengths only),
    for the few unlike items that sorting cannot pair up (the cascade's heads).
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real = 0
    for i in order:
        n = lengths[i]
        grown = max(longest, n) * (len(current) + 1)
        full = max_batch is not None and len(current) >= max_batch
        padded = max_padding is not None and grown > max_padding * (real + n)
        if current and (grown > token_budget or full or padded):
            batches.append(current)
            current, longest, real = [], 0, 0
        current.append(i)
        longest = max(longest, n)
        real += n
    if current:
        batches.append(current)
    return batches
