"""Measurement helpers for `edgerank bench` and bench/ scripts.

Noisy 2-vCPU machines make single timings meaningless, so every figure is a median over
interleaved rounds (candidate A, B, C, A, B, C, ...) and claims are ratios against a
baseline measured in the same run.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgerank.backends.base import Backend, Encoded, ScoreOptions
from edgerank.backends.padding import plan_batches

WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this "
    "be or has had not but have they one their its been also new after first other two who "
    "more city river music school system water history world state house century power small "
    "sleep night cat market bank price engine planet doctor garden winter storm ocean island"
).split()


def synthetic_text(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def fixed_length_pairs(backend: Backend, n_pairs: int, tokens: int, seed: int = 0) -> list[Encoded]:
    """n_pairs inputs of exactly `tokens` tokens (cut from long synthetic passages)."""
    rng = random.Random(seed)
    query = synthetic_text(8, rng)
    passages = [synthetic_text(tokens * 2, rng) for _ in range(n_pairs)]
    items = backend.encode(query, passages, ScoreOptions(max_tokens_per_doc=tokens))
    assert all(it.n_tokens == tokens for it in items), "tokenizer gave short pairs"
    return items


def mixed_length_passages(n: int, seed: int = 0, lo: int = 8, hi: int = 300) -> list[str]:
    """Realistic retrieval output: lengths spread log-uniformly from short to long."""
    rng = random.Random(seed)
    return [synthetic_text(int(np.exp(rng.uniform(np.log(lo), np.log(hi)))), rng) for _ in range(n)]


@dataclass
class Timing:
    name: str
    seconds: list[float] = field(default_factory=list)
    work: int = 1  # pairs per call

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def per_second(self) -> float:
        return self.work / self.median

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.seconds, q))


def interleaved(
    candidates: dict[str, Callable[[], object]],
    rounds: int = 7,
    warmup: int = 1,
    work: int = 1,
) -> dict[str, Timing]:
    """Time each candidate once per round, rotating the order so drift hits all alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    out = {name: Timing(name, work=work) for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            candidates[name]()
            out[name].seconds.append(time.perf_counter() - t0)
    return out


#: rounds a timing budget buys: a median of fewer than 3 is one noisy figure, and more than
#: 15 adds little but time
MIN_ROUNDS, MAX_ROUNDS = 3, 15


def rounds_to_fill(seconds: float, one_round: float) -> int:
    """Interleaved rounds that fill ``seconds`` when one round takes ``one_round`` seconds."""
    return max(MIN_ROUNDS, min(MAX_ROUNDS, int(seconds / max(one_round, 1e-6))))


def score_bucketed(backend: Backend, items: Sequence[Encoded], budget: int) -> np.ndarray:
    scores = np.empty(len(items), dtype=np.float32)
    for batch in plan_batches([it.n_tokens for it in items], budget):
        scores[batch] = backend.score([items[i] for i in batch])
    return scores


def score_padded(backend: Backend, items: Sequence[Encoded], batch_size: int) -> np.ndarray:
    """The naive baseline: request order, fixed batch size, each padded to its longest."""
    scores = np.empty(len(items), dtype=np.float32)
    for start in range(0, len(items), batch_size):
        scores[start : start + batch_size] = backend.score(items[start : start + batch_size])
    return scores


def format_table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.rjust(widths[k]) for k in keys)]
    lines += ["  ".join(_fmt(r[k]).rjust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def backend_report(
    open_backend: Callable[[int], Backend],
    references: dict[str, Callable[[int], Backend]] | None = None,
    threads: Sequence[int] = (1, 2),
    n_pairs: int = 32,
    tokens: int = 128,
    rounds: int = 7,
) -> list[dict[str, object]]:
    """Throughput at n_pairs x tokens and single-pair latency, per thread count.

    `references` (e.g. torch fp32 of the same checkpoint) run in the same rounds; every
    row carries its ratio to the first reference, or to the backend when there is none.
    """
    rows: list[dict[str, object]] = []
    for t in threads:
        backends = {"edgerank": open_backend(t)}
        for name, factory in (references or {}).items():
            backends[name] = factory(t)
        items = fixed_length_pairs(backends["edgerank"], n_pairs, tokens)
        batch = {n: (lambda b=b, x=items: b.score(x)) for n, b in backends.items()}
        single = {n: (lambda b=b, x=items[:1]: b.score(x)) for n, b in backends.items()}
        thr = interleaved(batch, rounds=rounds, work=len(items))
        lat = interleaved(single, rounds=rounds * 3)
        base = next(iter(references or {}), "edgerank")
        for name, b in backends.items():
            info = b.info()
            rows.append(
                {
                    "threads": t,
                    "runtime": f"{name}:{info.backend}/{info.precision}",
                    "pairs_per_s": thr[name].per_second,
                    f"x_{base}": thr[base].median / thr[name].median,
                    "single_pair_ms": lat[name].median * 1e3,
                }
            )
            b.close()
    return rows


def bucketing_report(
    backend: Backend, n_docs: int = 64, budget: int = 32 * 128, batch_size: int = 32,
    rounds: int = 5,
) -> dict[str, object]:  # fmt: skip
    """Length-sorted token-budget batches against pad-to-max batches, same items."""
    rng = random.Random(1)
    items = backend.encode(synthetic_text(8, rng), mixed_length_passages(n_docs), ScoreOptions())
    a = score_bucketed(backend, items, budget)
    b = score_padded(backend, items, batch_size)
    timing = interleaved(
        {
            "bucketed": lambda: score_bucketed(backend, items, budget),
            "pad_to_max": lambda: score_padded(backend, items, batch_size),
        },
        rounds=rounds,
        work=len(items),
    )
    return {
        "docs": n_docs,
        "tokens": sum(it.n_tokens for it in items),
        "bucketed_pairs_per_s": timing["bucketed"].per_second,
        "pad_to_max_pairs_per_s": timing["pad_to_max"].per_second,
        "speedup": timing["pad_to_max"].median / timing["bucketed"].median,
        "max_score_gap": float(np.max(np.abs(a - b))),
    }
