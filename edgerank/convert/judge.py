"""How the install judges an INT8 point: its speed where it will serve, and its figures
against the floor, each decided the same way every time.

Speed. Wall time on a shared box moves with the neighbours (the same two files timed at
1.106x in one import and 0.898x in another), so the judge times CPU time on the calling
thread with one intra-op thread, where onnxruntime runs every kernel: the time the
scheduler gives other processes is not counted. The FP32 graph and the INT8 file run
interleaved on rows of the served lengths, cut from the probe's own tokens; each length
gives the median of the per-round ratios and an order-statistic interval around it, and a
verdict (models/serving.judge) is taken only on an interval clear of the cut-off, with
more rounds while it is not. The cascade's cost is counted at the served request size:
probe queries are scored against pools of passages of their own language (their 8, then
other sections'), and the passages the cascade would rescore are counted per group size.

Floor. A probe figure within noise of the floor (one standard error of the mean Spearman;
the binomial spread of the top-1 count) is not a verdict: the point is measured again on
probe-more (a second held-out set cut from other sections of the same sources) and decided
on the two sets pooled, against the floor as it is.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgerank.backends.base import Encoded
from edgerank.models.manifest import weights_file
from edgerank.models.serving import LengthTiming, Speed, SpeedProfile
from edgerank.quality.scoring import GraphScorer

#: timed rounds first, and at most (while the verdict's interval straddles the cut-off)
ROUNDS, MAX_ROUNDS = 5, 11
#: padded tokens per timed batch: several rows of one length, as a run slice holds them
TIMED_TOKENS = 1024
#: the row lengths an installed file's profile covers (besides the served shape's own)
PROFILE_LENGTHS = (32, 64, 128, 256, 512)
#: probe queries scored against pools of POOL_SIZES[-1] passages, to count the cascade's
#: head per request size (larger requests are judged at the largest size's share: the
#: share falls as requests grow, so that errs towards FP32)
POOL_QUERIES = 12
POOL_SIZES = (8, 16, 32, 64)


#: how the speed was judged, for the manifest
METHOD = (
    "CPU time of the calling thread, 1 intra-op thread, FP32 graph and INT8 file interleaved "
    f"on {TIMED_TOKENS}-token batches per row length; per length the median ratio of "
    f"{ROUNDS}-{MAX_ROUNDS} rounds and an order-statistic interval (>= 90%); the cascade's "
    "head counted on probe queries against same-language pools; a verdict only on an "
    "interval clear of the cut-off, else the option holding less memory"
)


# ------------------------------------------------------------------------------- speed


def timing_rows(encoded: Sequence[Sequence[Encoded]], length: int) -> list[Encoded]:
    """Rows of exactly ``length`` tokens, TIMED_TOKENS in all, cut from the probe's pairs
    (their ids and segments in order: real text, whatever the row count)."""
    ids = np.concatenate([r.ids for g in encoded for r in g])
    types = np.concatenate([
        r.type_ids if r.type_ids is not None else np.zeros_like(r.ids) for g in encoded for r in g
    ])  # fmt: skip
    rows = []
    for k in range(max(1, TIMED_TOKENS // length)):
        at = (k * length) % max(1, len(ids) - length)
        rows.append(Encoded(k, ids[at : at + length].copy(), types[at : at + length].copy()))
    return rows


def _interval(ratios: Sequence[float]) -> tuple[float, float]:
    """A distribution-free interval for the median of ``ratios`` (order statistics, at least
    90% coverage): no assumption about how the box's noise is shaped."""
    xs = sorted(ratios)
    n = len(xs)
    k = 0  # the largest k with P(Binomial(n, 1/2) < k+1) <= 5%
    while k + 1 <= n // 2 and sum(math.comb(n, i) for i in range(k + 1)) / 2**n <= 0.05:
        k += 1
    k = max(1, k)
    return xs[k - 1], xs[n - k]


class Timer:
    """The FP32 graph at one thread, timed against candidates on rows of given lengths."""

    def __init__(self, fp32: GraphScorer, encoded: Sequence[Sequence[Encoded]]):
        self.fp32 = fp32
        self.encoded = encoded
        self._rows: dict[int, list[Encoded]] = {}

    def rows(self, length: int) -> list[Encoded]:
        if length not in self._rows:
            self._rows[length] = timing_rows(self.encoded, length)
        return self._rows[length]

    def rounds(self, cand: GraphScorer, lengths: Sequence[int], n: int) -> dict[int, list]:
        """``n`` interleaved rounds per length: (FP32 seconds, candidate seconds) each,
        which of the two runs first alternating."""
        out: dict[int, list[tuple[float, float]]] = {n_: [] for n_ in lengths}
        for length in lengths:
            batch = self.rows(length)
            self.fp32.cpu_seconds(batch), cand.cpu_seconds(batch)  # warm-up: shapes, arena
        for r in range(n):
            for length in lengths:
                batch = self.rows(length)
                if r % 2:
                    c = cand.cpu_seconds(batch)
                    f = self.fp32.cpu_seconds(batch)
                else:
                    f = self.fp32.cpu_seconds(batch)
                    c = cand.cpu_seconds(batch)
                out[length].append((f, c))
        return out


def profile_of(
    rounds: dict[int, list[tuple[float, float]]], rescored: tuple | None
) -> SpeedProfile:
    """The timed rounds as a profile: per length the FP32 time per token and the median
    ratio with its interval."""
    timings = []
    for length, pairs in sorted(rounds.items()):
        ratios = [f / c for f, c in pairs if c > 0]
        low, high = _interval(ratios)
        per_token = statistics.median(f for f, _ in pairs) / (TIMED_TOKENS // length * length)
        timings.append(LengthTiming(length, per_token * 1e6,
                                    Speed(statistics.median(ratios), low, high)))  # fmt: skip
    return SpeedProfile(tuple(timings), rescored)


def measured_profile(
    timer: Timer, cand: GraphScorer, lengths: Sequence[int], rescored: tuple | None,
    decided, prior: dict[int, list] | None = None,
) -> tuple[SpeedProfile, dict[int, list]]:  # fmt: skip
    """ROUNDS rounds, then two more at a time while ``decided(profile)`` says the interval
    still straddles the cut-off, up to MAX_ROUNDS; ``prior``: rounds already timed (a
    length timed before is not timed again)."""
    got = {k: list(v) for k, v in (prior or {}).items()}
    todo = [n for n in lengths if n not in got]
    if todo:
        got.update(timer.rounds(cand, todo, ROUNDS))
    while True:
        prof = profile_of(got, rescored)
        n = min(len(v) for v in got.values())
        if decided(prof) or n >= MAX_ROUNDS:
            return prof, got
        more = timer.rounds(cand, sorted(got), 2)
        for k, v in more.items():
            got[k] += v


# ---------------------------------------------------------------------- cascade heads


def pools(probe: list[tuple[str, list[str]]], langs: list[str] | None = None) -> list:
    """POOL_QUERIES probe queries, each with a pool of POOL_SIZES[-1] passages: its own
    group first, then passages of other groups in its language (the same domain, as a
    retriever's candidates are), in a fixed order."""
    size = POOL_SIZES[-1]
    langs = langs or ["?"] * len(probe)
    step = max(1, len(probe) // POOL_QUERIES)
    out = []
    for i in range(0, len(probe), step)[:POOL_QUERIES]:
        query, own = probe[i]
        same = [d for j, (_, ds) in enumerate(probe) if j != i and langs[j] == langs[i]
                for d in ds]  # fmt: skip
        rot = (i * 37) % max(1, len(same))  # each query its own slice of its language
        rest = [d for j, (_, ds) in enumerate(probe) if langs[j] != langs[i] for d in ds]
        out.append((query, (list(own) + same[rot:] + same[:rot] + rest)[:size]))
    return out


def rescored_counts(
    ref: Sequence[np.ndarray], got: Sequence[np.ndarray], margin: float
) -> list[int]:
    """Per group, how many passages the cascade's rule (engine/cascade.py, leader first)
    rescores in FP32, replayed from both files' scores."""
    from edgerank.engine.cascade import with_fp32_head

    return [with_fp32_head(g, r, margin)[1] for r, g in zip(ref, got, strict=True)]


def heads(
    pool_ref: Sequence[np.ndarray], pool_scores: Sequence[np.ndarray], margin: float
) -> tuple[tuple[int, float], ...]:
    """Mean passages the cascade rescores per group size, the pools cut to each size."""
    out = []
    for n in POOL_SIZES:
        cut = [(r[:n], s[:n]) for r, s in zip(pool_ref, pool_scores, strict=True) if len(s) >= n]
        if cut:
            counts = rescored_counts([r for r, _ in cut], [s for _, s in cut], margin)
            out.append((n, round(float(np.mean(counts)), 3)))
    return tuple(out)


# ------------------------------------------------------------------------------- floor


def noise_band(key: str, fid: dict[str, float], bar: float) -> float:
    """How far from ``bar`` a figure is still noise: one standard error of the mean
    Spearman, the binomial spread of a share of groups at the bar; 0 for anything else."""
    n = max(1, int(fid.get("groups", 1)))
    if key == "spearman_mean":
        return float(fid.get("spearman_se", 0.0))
    if key == "top1_kept":
        return math.sqrt(max(0.0, bar * (1 - bar)) / n)
    return 0.0


def against(fid: dict[str, float], floor: dict[str, float]) -> str:
    """ "meets", "misses", or "near" (some figure within noise of its bar, none clearly under)."""
    near = False
    for key, bar in floor.items():
        value, band = fid.get(key, -1.0), noise_band(key, fid, bar)
        if value < bar - band:
            return "misses"
        near = near or value < bar + band
    return "near" if near else "meets"


def pooled_meets(fid: dict[str, float], floor: dict[str, float]) -> bool:
    """The verdict on pooled evidence: the floor as it is, no band."""
    return all(fid.get(k, -1.0) >= v for k, v in floor.items())


# ------------------------------------------------------------------------------ memory


def resident_mib(int8_file: Path, fp32_file: Path, cascade: bool) -> float:
    """What the INT8 option keeps in memory, as weights: its file, and with a cascade the
    FP32 graph beside it (bench/memory.py measures what a daemon really holds)."""
    return file_mib(int8_file) + (file_mib(fp32_file) if cascade else 0.0)


def file_mib(path: Path) -> float:
    """An ONNX file's size with its external weights file."""
    data = path.with_name(weights_file(path.name))
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 2**20
