"""INT8 first, FP32 for the near-ties: the rescoring that keeps an INT8 install's top-1.

8-bit activations move a score by a little (bench/int8_noise.py), and "a little" is enough to
swap two passages that FP32 scores nearly alike: the INT8 files alone kept FP32's top-1 in
95-97% of unseen groups, never reliably 97%. Which passages can be swapped is known after
the INT8 pass: if no score moves by more than e between the files, FP32's best passage w and
the INT8 leader l satisfy int8(w) >= fp32(w) - e >= fp32(l) - e >= int8(l) - 2e. So the
passages within ``margin`` = 2e of the INT8 leader are rescored with the FP32 graph kept beside
the INT8 file; w is always among them, and passages outside the head sit below fp32(w). When
the leader is alone within the margin, nothing is rescored.

e is measured at install time on the calibration groups (convert/backoff.py), which share no
text with the probe that then proves the result. The head is usually small: 2-3 passages of
the probe's 8-passage groups, 4-7 of a 32-100 passage request, so the FP32 pass costs 7-12%
of a full one (gloss-head, bench/int8_acceptance.py). A model whose scores sit close
together for its margin rescores far more (admin-e2e: 50-70%); the back-off loop sees that
on the probe, and under the default 1.1x cut-off installs the FP32 graph alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgerank.backends.base import Backend, Encoded
from edgerank.backends.padding import plan_batches
from edgerank.engine.rank import merge_max


def head(raw: np.ndarray, margin: float) -> np.ndarray:
    """Indices within ``margin`` of the leader; none when the leader is alone there."""
    raw = np.asarray(raw)
    if raw.size < 2:
        return np.empty(0, dtype=np.int64)
    idx = np.flatnonzero(raw >= raw.max() - margin)
    return idx if len(idx) > 1 else idx[:0]


def with_fp32_head(int8: np.ndarray, fp32: np.ndarray, margin: float) -> tuple[np.ndarray, int]:
    """One group served as the cascade serves it, from both files' scores (the install's
    judge and the benches replay it; ``Cascade.rescore`` scores only the head): INT8 scores
    with the head's replaced by FP32's, and how many were rescored."""
    h = head(int8, margin)
    out = np.array(int8, copy=True)
    out[h] = np.asarray(fp32)[h]
    return out, len(h)


class Cascade:
    """An INT8 entry's FP32 reference and margin; ``rescore`` applies it to scored groups."""

    def __init__(self, reference: Backend, margin: float):
        self.reference = reference
        self.margin = float(margin)
        #: positions rescored with the reference so far (the daemon's counter reads it)
        self.rescored = 0

    def heads(self, raw: np.ndarray, groups: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """The positions to rescore: each group's head (one query's passages form a group;
        None = all positions are one group)."""
        groups = [np.arange(len(raw))] if groups is None else groups
        parts = [g[head(raw[g], self.margin)] for g in groups if len(g) > 1]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def rescore(
        self,
        items: Sequence[Encoded],
        raw: np.ndarray,
        groups: Sequence[np.ndarray] | None = None,
        token_budget: int = 8192,
    ) -> np.ndarray:
        """``raw`` (one INT8 score per position; ``items`` carry positions in ``doc``) with
        every head position's score replaced by the reference's (the max over its windows,
        as for INT8).

        The head's windows are batched with no padding: a head is a few passages of unlike
        length, and padding them to the longest cost twice the FP32 time of scoring them
        one by one (s100 of bench/int8_acceptance.py: 7 passages of 49-236 tokens, 245 ms
        padded, 115 ms unpadded, 2 threads), while a batch of one costs no more per token
        than the bucketed main pass here. Equal-length windows (a long passage's chunks)
        still share a batch, within ``token_budget``."""
        pos = self.heads(raw, groups)
        if not len(pos):
            return raw
        wanted = np.zeros(len(raw), dtype=bool)
        wanted[pos] = True
        chosen = [it for it in items if wanted[it.doc]]
        scores = np.empty(len(chosen), dtype=np.float32)
        lengths = [it.n_tokens for it in chosen]
        for batch in plan_batches(lengths, token_budget, max_padding=1.0):
            scores[batch] = self.reference.score([chosen[i] for i in batch])
        out = np.array(raw, dtype=np.float32, copy=True)
        out[pos] = merge_max(chosen, scores, len(raw))[pos]
        self.rescored += len(pos)
        return out

    def close(self) -> None:
        self.reference.close()


def margin_of(recipe: dict) -> float | None:
    """The margin an entry's recipe sets, or None when it has no cascade."""
    cascade = recipe.get("cascade") or {}
    return float(cascade["margin"]) if "margin" in cascade else None


def open_cascade(model_dir: Path | str, *, threads: int = 1) -> Cascade | None:
    """The cascade of an installed INT8 ONNX entry, or None when its recipe has none (or the
    directory is a bare export, with no manifest to hold a recipe)."""
    from edgerank.backends.registry import open_reference
    from edgerank.models.manifest import MANIFEST, Manifest

    if not (Path(model_dir) / MANIFEST).is_file():
        return None
    manifest = Manifest.read(Path(model_dir))
    margin = margin_of(manifest.recipe) if manifest.backend == "onnx" else None
    if margin is None:
        return None
    return Cascade(open_reference(model_dir, threads=threads, manifest=manifest), margin)
