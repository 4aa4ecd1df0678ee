"""Which batch shape scores fastest here: token budget, and a cap on pairs per batch.

The planner's token budget (8192 padded tokens on a CPU) is sized for memory, not speed. On a
CPU a wide batch is not free: its activations leave the caches, and a length-sorted batch of
many short pairs still pads each to the longest. sentence-transformers' fixed 32-pair batches
beat the 8192-token budget on 100 mixed-length passages, and a cap of 4-8 pairs measured
1.2x faster at 1 thread but within noise at 2. The best shape depends on the machine, the
model and the thread count, so it is measured, never assumed.

The request is natural prose from the shipped probe set (quality/data/probe.jsonl): 100
passages of 16-250 tokens, log-uniform like retrieval output, consecutive probe passages
joined where one is too short. Each shape cuts it with plan_batches, as the daemon's batcher
and `edgerank score` do, and is timed with backend.score in interleaved rounds (medians).
Shapes that cut this request into the same batches are timed once.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

from edgerank.backends.base import Backend, Encoded, ScoreOptions
from edgerank.backends.padding import plan_batches
from edgerank.planning.measured import shape_key
from edgerank.planning.memory import CPU_TOKEN_BUDGETS
from edgerank.quality.bench import MIN_ROUNDS, Timing, interleaved, rounds_to_fill

#: token budgets timed without a pair cap (those within the memory limit)
BUDGETS = CPU_TOKEN_BUDGETS[:4]
#: pair caps timed at the largest budget that fits
CAPS = (4, 8, 16, 32, 64)
#: passages per timed request, and their pair lengths in tokens (log-uniform)
PASSAGES, SHORTEST, LONGEST = 100, 16, 250
#: a backend too slow for the full request within its time gets fewer passages, not fewer
#: rounds (bench.MIN_ROUNDS)
MIN_PASSAGES = 32
#: probe text per token when joining passages: ample for English, more so for CJK
CHARS_PER_TOKEN = 8


def grid(limit: int = BUDGETS[0]) -> list[tuple[int, int | None]]:
    """(token budget, pair cap or None) to time: every budget within ``limit`` without a cap,
    then each cap at the largest of them. Empty when ``limit`` is below every budget."""
    budgets = [b for b in BUDGETS if b <= limit]
    if not budgets:
        return []
    return [(b, None) for b in budgets] + [(budgets[0], c) for c in CAPS]


def passages_for(pairs_per_s: float, seconds: float, shapes: int = len(BUDGETS) + len(CAPS)) -> int:
    """Passages per request so that MIN_ROUNDS rounds of every shape fit ``seconds`` at
    ``pairs_per_s`` (measured at 128 tokens, a little longer than the request's mean)."""
    fit = int(pairs_per_s * seconds / (MIN_ROUNDS * max(1, shapes)))
    return max(MIN_PASSAGES, min(PASSAGES, fit))


def request(backend: Backend, n: int = PASSAGES, seed: int = 14) -> list[Encoded]:
    """``n`` (query, passage) inputs of natural text; the same lengths for a given seed (any
    prefix is a mixed-length sample too), whatever the tokenizer."""
    from edgerank.quality import sets

    groups, _ = sets.shipped(sets.PROBE)
    texts = [doc for _, docs in groups for doc in docs]
    query = groups[0][0]
    rng = random.Random(seed)
    items: list[Encoded] = []
    at = 0
    for _ in range(n):
        tokens = int(math.exp(rng.uniform(math.log(SHORTEST), math.log(LONGEST))))
        parts: list[str] = []
        while sum(map(len, parts)) < tokens * CHARS_PER_TOKEN:
            parts.append(texts[at % len(texts)])
            at += 1
        cut = ScoreOptions(max_tokens_per_doc=tokens)
        items += backend.encode(query, [" ".join(parts)], cut)
    return items


def time_shapes(
    backend: Backend,
    items: Sequence[Encoded],
    shapes: Sequence[tuple[int, int | None]],
    seconds: float = 4.0,
    rounds: int | None = None,
) -> dict[str, float]:
    """shape_key -> pairs/s scoring ``items`` cut by that shape (medians of interleaved rounds).

    ``rounds`` None: as many as fill ``seconds`` after one warm-up call (rounds_to_fill).
    """
    timed = timings(backend, items, shapes, seconds, rounds)
    return {key: t.per_second for key, t in timed.items()}


def timings(
    backend: Backend,
    items: Sequence[Encoded],
    shapes: Sequence[tuple[int, int | None]],
    seconds: float = 4.0,
    rounds: int | None = None,
    warmup: int = 0,
) -> dict[str, Timing]:
    """time_shapes' rounds themselves (bench/batch_shapes.py reports their spread); shapes
    that cut ``items`` alike share one Timing. ``warmup``: untimed calls of each first."""
    lengths = [it.n_tokens for it in items]
    same: dict[tuple, list[str]] = {}
    calls = {}
    for tokens, pairs in shapes:
        plan = plan_batches(lengths, tokens, pairs)
        cut = tuple(map(tuple, plan))
        key = shape_key(tokens, pairs)
        if cut not in same:
            batches = [[items[i] for i in batch] for batch in plan]
            calls[key] = lambda b=batches: [backend.score(x) for x in b]
        same.setdefault(cut, []).append(key)
    if not calls:
        return {}
    if rounds is None:
        t0 = time.perf_counter()
        next(iter(calls.values()))()
        one = max(time.perf_counter() - t0, 1e-6) * len(calls)
        rounds = rounds_to_fill(seconds, one)
    timed = interleaved(calls, rounds=rounds, warmup=warmup, work=len(items))
    return {key: timed[keys[0]] for keys in same.values() for key in keys}


def measure(
    backend: Backend, seconds: float, pairs_per_s: float, limit: int = BUDGETS[0]
) -> dict[str, float]:
    """The grid within ``limit`` tokens on a request sized for ``seconds`` (calibrate's entry
    point); ``pairs_per_s``: the backend's speed at 128 tokens, which sizes the request."""
    shapes = grid(limit)
    if not shapes:
        return {}
    items = request(backend, passages_for(pairs_per_s, seconds, len(shapes)))
    return time_shapes(backend, items, shapes, seconds)
