"""The daemon's transport-free core: validate, admit, tokenize, batch, merge, rank.

The transports convert their messages into these calls and back; scoring is rank.merge_max +
rank.rank over the batcher's scores, then the entry's cascade (near-ties of each group's
leader rescored in FP32, engine/cascade.py), as in rank.score_documents: a daemon answer
equals a direct one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgerank.backends.base import Backend, BackendInfo, Encoded, ScoreOptions
from edgerank.engine.admission import Admission
from edgerank.engine.batcher import Batcher, run_job
from edgerank.engine.cache import ScoreCache, open_cache
from edgerank.engine.cache_entries import Scores
from edgerank.engine.cascade import Cascade
from edgerank.engine.config import EngineConfig
from edgerank.engine.drain import Drain
from edgerank.engine.limits import RequestLimits
from edgerank.engine.metrics import Metrics
from edgerank.engine.rank import rank
from edgerank.engine.requests import Group, Outcome, Reranked, group_pairs
from edgerank.engine.watch import FidelityWatch
from edgerank.errors import (
    BackendFailure,
    EdgerankError,
    InvalidInput,
    Unavailable,
)
from edgerank.planning.memory import CPU_TOKEN_BUDGETS

log = logging.getLogger(__name__)

WARMUP_QUERY = "warm up"
WARMUP_PASSAGES = ("a short passage", "a somewhat longer passage that is here to warm up the model")
#: (padded tokens, pairs or None = no cap) per batch; a model the planner knows nothing of
#: gets the memory model's CPU budget, uncapped
Shape = tuple[int, int | None]
PLAIN: Shape = (CPU_TOKEN_BUDGETS[0], None)
#: threads that tokenize requests (TEI's Info reports the figure)
TOKENIZATION_WORKERS = 2


class Service(RequestLimits, Drain):
    """One loaded backend behind admission control and the batcher."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.state = "loading"  # -> serving -> draining -> stopped
        self.backend: Backend | None = None
        self.batcher: Batcher | None = None
        self.admission = Admission(
            config.max_queue_pairs, config.max_queue_tokens, drain_rate=self._rate
        )
        self.model_names: frozenset[str] = frozenset()
        self.batch_shape: Shape = PLAIN  # what the batcher runs with (Info reports it)
        #: the hardware summary Info reports (proto field `probe`)
        self.hardware: dict[str, str] = {}
        self.in_flight = 0  # requests past admission
        self.completed = 0
        self._init_drain()  # calls in flight, the drain and its cut-off (engine/drain.py)
        self._info: BackendInfo | None = None
        self._health_items: list[Encoded] = []
        #: the fidelity watch (fidelity_sample > 0) and its task; None costs nothing
        self.watch: FidelityWatch | None = None
        self._watching: asyncio.Task | None = None
        self.tokenization_workers = TOKENIZATION_WORKERS
        self._tokenizers = concurrent.futures.ThreadPoolExecutor(
            TOKENIZATION_WORKERS, "edgerank-tok"
        )
        #: the entry's FP32 rescoring of near-ties and the thread it runs on; None = INT8 alone
        self.cascade: Cascade | None = None
        self._cascading: concurrent.futures.ThreadPoolExecutor | None = None
        #: the pair-score cache (engine/cache.py); None = off
        self.cache: ScoreCache | None = None
        #: Prometheus figures; the transports report their calls here too (server/)
        self.metrics = Metrics(
            {
                "in_flight": lambda: self.in_flight,
                "queue_pairs": lambda: self.admission.pairs,
                "queue_tokens": lambda: self.admission.tokens,
                "queued_inputs": lambda: self.batcher.queued[0] if self.batcher else 0,
                "serving": lambda: self.state == "serving",
            }
        )

    async def start(
        self, backend: Backend, aliases: Sequence[str] = (), shape=PLAIN,
        cascade: Cascade | None = None,
    ) -> None:  # fmt: skip
        """Take a loaded backend, start its worker, warm it up end to end, then serve.
        ``shape``: the planner's batch shape for it, which settings left at 0 (auto) take;
        ``cascade``: the entry's FP32 rescoring of near-ties (engine/cascade.py)."""
        s = self.config
        self.backend = backend
        if cascade is not None:
            self.cascade = cascade
            self._cascading = concurrent.futures.ThreadPoolExecutor(1, "edgerank-cascade")
        self._info = backend.info()
        served = (self._info.model, *aliases, *s.served_names)
        self.model_names = frozenset(a for a in served if a)
        self.metrics.describe(self._info)
        self.batch_shape = s.batch_shape(shape)
        self.batcher = Batcher(
            self.metrics.metered(backend), *self.batch_shape, s.batch_wait_ms / 1000
        ).start()
        self.state = "warming"
        await self._run([Group(WARMUP_QUERY, WARMUP_PASSAGES)], len(WARMUP_PASSAGES), None)
        if self.cascade is not None:  # the reference's first run pays its start-up too
            loop = asyncio.get_running_loop()
            warm = backend.encode(WARMUP_QUERY, WARMUP_PASSAGES, ScoreOptions())
            await loop.run_in_executor(self._cascading, self.cascade.reference.score, warm)
        # opened after the warm-up: a replica whose Redis knows those pairs still warms up
        self.cache = await open_cache(s, self._info, self.metrics)
        loop = asyncio.get_running_loop()
        self._health_items = (
            await loop.run_in_executor(
                self._tokenizers, backend.encode, WARMUP_QUERY, WARMUP_PASSAGES[:1], ScoreOptions()
            )
        )[:1]
        self.state = "serving"

    def watch_fidelity(self, reference: Backend, sample: float) -> None:
        """Rescore a share of the answered requests with ``reference`` whenever idle."""
        self.watch = FidelityWatch(reference, sample, idle=self._is_idle)
        self._watching = asyncio.get_running_loop().create_task(self.watch.run())
        w = self.watch
        self.metrics.add_gauges(
            {
                "fidelity_spearman": lambda: w.spearman,
                "fidelity_top1": lambda: w.top1,
                "fidelity_samples": lambda: w.samples,
            }
        )

    def _is_idle(self) -> bool:
        return self.in_flight == 0 and (self.batcher is None or self.batcher.queued[0] == 0)

    async def close_cache(self) -> None:
        """Let the cache's last Redis writes land and close its connections (on the loop)."""
        cache, self.cache = self.cache, None
        if cache is not None:
            await cache.close()

    def close(self, timeout: float | None = None) -> bool:
        """Finish queued work, stop the worker, release the model. False when the worker
        is still inside a batch after `timeout`: the model is then left open under it."""
        self.state = "stopped"
        stopped = True
        if self.batcher is not None:
            # after a drain that timed out, what is still queued is not waited for
            stopped = self.batcher.stop(drain=self.calls == 0, timeout=timeout)
            if not stopped:
                log.warning("inference worker did not stop in time; exiting without it")
        self._tokenizers.shutdown(wait=False, cancel_futures=True)
        if self._cascading is not None:
            self._cascading.shutdown(wait=stopped, cancel_futures=True)
        if self._watching is not None:
            self._watching.cancel()
        if self.watch is not None:
            self.watch.close()
        if self.backend is not None and stopped:
            self.backend.close()  # never under a batch the worker is still running
            if self.cascade is not None:
                self.cascade.close()
        return stopped

    @property
    def info(self) -> BackendInfo:
        if self._info is None:
            raise Unavailable("the model is still loading")
        return self._info

    def _rate(self) -> float:
        return self.batcher.stats.rate if self.batcher else 0.0

    def require_ready(self) -> None:
        if self.state in ("loading", "warming"):
            raise Unavailable("the model is still loading; retry shortly")
        if self.state == "stopped" or self.batcher is None:
            raise Unavailable("the server is shutting down")

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int = 0,
        options: ScoreOptions = ScoreOptions(),
        model: str | None = None,
        deadline: float | None = None,
    ) -> Reranked:
        """Rank documents for one query; top_n 0 = all."""
        self.require_ready()
        if top_n < 0:
            raise InvalidInput(f"top_n must be >= 0, got {top_n}")
        self.check_model(model)
        self.check_text("query", query, empty_ok=False)
        self.check_count(len(documents))
        for i, doc in enumerate(documents):
            self.check_text(f"document {i}", doc)
        self.check_options(options)
        outcome = await self._run([Group(query, documents, options)], len(documents), deadline)
        return Reranked(rank(outcome.raw, self.info.normalise, top_n or None), outcome)

    async def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        options: ScoreOptions = ScoreOptions(),
        model: str | None = None,
        deadline: float | None = None,
    ) -> Outcome:
        """Raw scores for (query, passage) pairs, in order; pairs sharing a query share a group."""
        self.require_ready()
        self.check_model(model)
        self.check_count(len(pairs), "pairs")
        for i, (query, passage) in enumerate(pairs):
            self.check_text(f"pair {i} query", query, empty_ok=False)
            self.check_text(f"pair {i} passage", passage)
        self.check_options(options)
        groups = group_pairs([(q, p, options) for q, p in pairs])
        return await self._run(groups, len(pairs), deadline)

    async def score_groups(
        self, groups: Sequence[Group], n: int, deadline: float | None = None
    ) -> Outcome:
        """Already-validated groups (the TEI stream): raw scores for positions 0..n-1."""
        self.require_ready()
        return await self._run(groups, n, deadline)

    async def query_fits(self, query: str, options: ScoreOptions) -> bool:
        """Does the backend feed `query` to the model whole under `options`? (TEI's
        truncate=false refuses a query that would be cut.)"""
        assert self.backend is not None
        loop = asyncio.get_running_loop()
        items = await loop.run_in_executor(
            self._tokenizers, self.backend.encode, query, [""], options
        )
        return not any(it.query_cut for it in items)

    def _encode(self, groups: Sequence[Group]) -> list[Encoded]:
        assert self.backend is not None
        items: list[Encoded] = []
        for g in groups:
            encoded = self.backend.encode(g.query, g.passages, g.options)
            if g.positions is not None:
                encoded = [dataclasses.replace(it, doc=g.positions[it.doc]) for it in encoded]
            items.extend(encoded)
        return items

    async def _run(self, groups: Sequence[Group], n: int, deadline: float | None) -> Outcome:
        start = time.perf_counter_ns()
        cache = self.cache
        with self.cut_off_point():
            self.in_flight += 1
            try:
                if cache is None:
                    scores, cached = await self._score(groups, n, deadline), 0
                else:
                    resolved = await cache.resolve(groups, n, deadline, self._score)
                    scores, cached = resolved.scores, resolved.cached
            finally:
                self.in_flight -= 1
        self.completed += 1
        outcome = Outcome(
            raw=scores.raw,
            windows=scores.windows,
            tokens=int(scores.tokens.sum()),
            items=int(scores.windows.sum()),
            chars=sum(len(g.query) * len(g.passages) + sum(map(len, g.passages)) for g in groups),
            tokenization_ns=scores.tokenization_ns,
            queue_ns=scores.queue_ns,
            inference_ns=scores.inference_ns,
            total_ns=time.perf_counter_ns() - start,
            cached=cached,
            scored=scores.scored,
        )
        self.metrics.scored(n, outcome)
        if cache is not None:
            cache.observe(resolved, outcome.total_ns / 1e9)
        if self.watch is not None:  # cached answers are the model's answers: sampled alike
            self.watch.offer_groups(groups, outcome.raw)
        return outcome

    async def _score(self, groups: Sequence[Group], n: int, deadline: float | None) -> Scores:
        """The model's path: admit, tokenize, batch, merge windows; one score per position."""
        assert self.batcher is not None
        start = time.perf_counter_ns()
        # two-step admission: refuse on pair count before paying for tokenization
        ticket = self.admission.admit(pairs=n)
        try:
            loop = asyncio.get_running_loop()
            items = await loop.run_in_executor(self._tokenizers, self._encode, groups)
            tokenized = time.perf_counter_ns()
            ticket.resize(len(items), sum(it.n_tokens for it in items))
            job = await run_job(self.batcher, items, deadline)
        finally:
            ticket.release()
        ns = dict(queue_ns=int(job.queue_s * 1e9), inference_ns=int(job.inference_s * 1e9))
        scores = Scores.of(items, job.scores, n, tokenization_ns=tokenized - start, **ns)
        if self.cascade is not None:
            at = time.perf_counter_ns()
            scores.raw = await loop.run_in_executor(
                self._cascading, self._rescore, items, scores.raw, groups
            )
            scores.inference_ns += time.perf_counter_ns() - at
        finite = np.isfinite(scores.raw)
        if not finite.all():  # never answered, never cached: no face may carry NaN/Infinity
            where = int(np.flatnonzero(~finite)[0])
            raise BackendFailure(
                f"the model gave a non-finite score ({scores.raw[where]}) for position {where}"
            )
        return scores

    def _rescore(self, items: Sequence[Encoded], raw: np.ndarray, groups: Sequence[Group]):
        """The cascade on its own thread; what it rescored counted for /metrics."""
        assert self.cascade is not None
        before = self.cascade.rescored
        where = [g.where() for g in groups]
        out = self.cascade.rescore(items, raw, where, token_budget=self.batch_shape[0])
        self.metrics.cascade_rescored.inc(self.cascade.rescored - before)
        return out

    async def healthy(self, stall_s: float = 60.0, timeout_s: float = 10.0) -> bool:
        """Has the worker shown it works? Busy and moving, or idle and scoring a probe."""
        batcher = self.batcher
        if batcher is None or self.state not in ("serving", "draining"):
            return False
        if batcher.stalled(stall_s):
            return False
        if batcher.busy_since is not None or batcher.queued[0]:
            return True
        try:
            job = await run_job(batcher, self._health_items, time.monotonic() + timeout_s)
        except EdgerankError as exc:
            log.warning("health probe failed: %s", exc)
            return False
        return bool(np.isfinite(job.scores).all())

    def load(self) -> dict[str, Any]:
        queued_items, queued_tokens = self.batcher.queued if self.batcher else (0, 0)
        stats = self.batcher.stats if self.batcher else None
        return {
            "in_flight_requests": self.in_flight,
            "queued_pairs": self.admission.pairs,
            "queued_tokens": self.admission.tokens,
            "completed_requests": self.completed,
            "refused_requests": self.admission.refused,
            "dropped_inputs": stats.dropped if stats else 0,
            "batches": stats.batches if stats else 0,
        }
