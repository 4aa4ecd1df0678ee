"""INT8 first, FP32 for the near-ties: the rescoring that keeps an INT8 install's top-1.

8-bit activations move a score by a little (bench/int8_noise.py), and "a little" is enough to
swap two passages that FP32 scores nearly alike: the INT8 files alone kept FP32's top-1 in
95-97% of unseen groups, never reliably 97%. Which passages can be swapped is known after
the INT8 pass: if no score moves by more than e between the files, FP32's best passage w and
the INT8 leader l satisfy int8(w) >= fp32(w) - e >= fp32(l) - e >= int8(l) - 2e, so w lies
within ``margin`` = 2e of the INT8 leader (the head). When the leader is alone there,
nothing is rescored.

Leader first: the head is not rescored whole. The leader's FP32 score comes first; then, in
INT8 order, each passage whose INT8 score is at least the best FP32 score so far minus e,
until none is left. w always qualifies (int8(w) >= fp32(w) - e >= best - e), and a passage
skipped lies below best - e in INT8, so below best in FP32: it cannot be the winner. The bar
rises as FP32 scores come in, so the rescored part of the head is 0-2e wide instead of 2e:
the same top-1 guarantee for fewer FP32 passes (bench/int8_cascade_rule.py), at the price of
rounds of FP32 calls in a row (a round scores every group's next candidates together) and
fewer FP32 scores below the top.

e is measured at install time on the calibration groups (convert/backoff.py), which share no
text with the probe that then proves the result. The head grows slower than the request, so
its FP32 pass is a smaller share of a RAG-sized request than of the probe's 8-passage
groups; a model whose scores sit close together for its margin rescores far more. The
install counts the head per request size and judges the speed at the size the deployment
serves (convert/judge.py, models/serving.py; figures in docs/int8.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgerank.backends.base import Backend, Encoded
from edgerank.backends.padding import plan_batches
from edgerank.engine.rank import merge_max
from edgerank.models.manifest import Manifest

#: the rule, as the manifests of the entries it serves record it
RULE = (
    "leader first: the INT8 leader is rescored with the FP32 graph (reference_file), then in "
    "INT8 order every passage within margin / 2 of the best FP32 score so far, when another "
    "passage lies within margin of the leader; margin = 2 x the largest |INT8 - FP32| on the "
    "calibration groups"
)


def head(raw: np.ndarray, margin: float) -> np.ndarray:
    """Indices within ``margin`` of the leader; none when the leader is alone there."""
    raw = np.asarray(raw)
    if raw.size < 2:
        return np.empty(0, dtype=np.int64)
    idx = np.flatnonzero(raw >= raw.max() - margin)
    return idx if len(idx) > 1 else idx[:0]


def leader_first(
    int8: np.ndarray, margin: float, fp32: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The positions the rule rescores in one group and their FP32 scores, asking
    ``fp32(positions)`` for a round at a time."""
    rule = LeaderFirst(np.asarray(int8), np.arange(len(int8)), margin)
    done, got = [], []
    while len(rule.asks):
        scores = np.asarray(fp32(rule.asks), dtype=np.float64)
        done.append(rule.asks)
        got.append(scores)
        rule.answer(scores)
    if not done:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    return np.concatenate(done), np.concatenate(got)


def with_fp32_head(int8: np.ndarray, fp32: np.ndarray, margin: float) -> tuple[np.ndarray, int]:
    """One group served as the cascade serves it, from both files' scores (the install's
    judge and the benches replay it; ``Cascade.rescore`` scores only what the rule asks
    for): INT8 scores with the rescored positions' replaced by FP32's, and how many."""
    fp32 = np.asarray(fp32)
    pos, scores = leader_first(int8, margin, lambda p: fp32[p])
    out = np.array(int8, copy=True)
    out[pos] = scores
    return out, len(pos)


class Cascade:
    """An INT8 entry's FP32 reference and margin; ``rescore`` applies it to scored groups."""

    def __init__(self, reference: Backend, margin: float):
        self.reference = reference
        self.margin = float(margin)
        #: positions rescored with the reference so far (the daemon's counter reads it)
        self.rescored = 0

    def heads(self, raw: np.ndarray, groups: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Each group's head: the positions the rule may rescore (one query's passages form
        a group; None = all positions are one group)."""
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
        the positions the leader-first rule asks for rescored by the reference (the max
        over its windows, as for INT8).

        Every group advances together: a round scores each group's leader, then each
        group's candidates that clear its bar, in one call set. A round's windows are
        batched with no padding: a head is a few passages of unlike length, and padding
        them to the longest cost twice the FP32 time of scoring them one by one (s100 of
        bench/int8_acceptance.py: 7 passages of 49-236 tokens, 245 ms padded, 115 ms
        unpadded, 2 threads), while a batch of one costs no more per token than the
        bucketed main pass here. Equal-length windows (a long passage's chunks) still
        share a batch, within ``token_budget``."""
        groups = [np.arange(len(raw))] if groups is None else groups
        windows: dict[int, list[Encoded]] = {}
        for it in items:
            windows.setdefault(it.doc, []).append(it)
        out = np.array(raw, dtype=np.float32, copy=True)
        pending = [LeaderFirst(raw[g], g, self.margin) for g in groups if len(g) > 1]
        pending = [r for r in pending if len(r.asks)]
        while pending:
            asked = np.concatenate([r.asks for r in pending])
            scores = self._score(asked, windows, token_budget)
            at = 0
            for r in pending:
                n = len(r.asks)
                out[r.asks] = scores[at : at + n]
                self.rescored += n
                r.answer(scores[at : at + n])
                at += n
            pending = [r for r in pending if len(r.asks)]
        return out

    def _score(self, positions: np.ndarray, windows, token_budget: int) -> np.ndarray:
        chosen = [it for p in positions for it in windows[int(p)]]
        scores = np.empty(len(chosen), dtype=np.float32)
        for batch in plan_batches([it.n_tokens for it in chosen], token_budget, max_padding=1.0):
            scores[batch] = self.reference.score([chosen[i] for i in batch])
        best = merge_max(chosen, scores, int(max(it.doc for it in chosen)) + 1)
        return best[positions]

    def close(self) -> None:
        self.reference.close()


class LeaderFirst:
    """One group's rule, a round at a time, so that the rounds of many groups can be scored
    together: ``asks`` holds the positions it wants scored next (empty when done),
    ``answer`` gives it their FP32 scores. Each round is every candidate that clears the
    bar now (they come next in INT8 order), so the rounds are as few as the bar allows."""

    def __init__(self, raw: np.ndarray, where: np.ndarray, margin: float):
        raw = np.asarray(raw, dtype=np.float64)
        h = head(raw, margin)
        h = h[np.argsort(-raw[h], kind="stable")]
        self._order, self._int8 = np.asarray(where)[h], raw[h]
        self._e = margin / 2
        self._best = -np.inf
        self._at = min(1, len(h))
        self.asks = self._order[: self._at]

    def answer(self, scores: np.ndarray) -> None:
        self._best = max(self._best, float(np.max(scores)))
        rest = self._int8[self._at :]
        n = int(np.sum(rest >= self._best - self._e))  # INT8 order: the first n clear it
        self.asks = self._order[self._at : self._at + n]
        self._at += n


def margin_of(recipe: dict) -> float | None:
    """The margin an entry's recipe sets, or None when it has no cascade."""
    cascade = recipe.get("cascade") or {}
    return float(cascade["margin"]) if "margin" in cascade else None


def open_cascade(
    model_dir: Path | str, *, threads: int = 1, manifest: Manifest | None = None
) -> Cascade | None:
    """The cascade of an installed INT8 ONNX entry, or None when its recipe has none (or the
    directory is a bare export, with no manifest to hold a recipe). ``manifest``: the
    entry as it serves (models/serving.served), when the backend opened it so."""
    from edgerank.backends.registry import open_reference
    from edgerank.models.manifest import MANIFEST

    if manifest is None:
        if not (Path(model_dir) / MANIFEST).is_file():
            return None
        manifest = Manifest.read(Path(model_dir))
    margin = margin_of(manifest.recipe) if manifest.backend == "onnx" else None
    if margin is None:
        return None
    return Cascade(open_reference(model_dir, threads=threads, manifest=manifest), margin)
