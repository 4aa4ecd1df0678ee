"""Prometheus metrics of one daemon, on prometheus_client's types and its text exposition.

Each Service owns a private registry (a test process runs several servers; the global
registry would mix them). The service feeds the scoring figures (pairs, inputs, tokens,
queue and inference time per request, size of every batch); the transports report each
call they answer (gRPC through status.mapped, HTTP through its middleware), so both
transports land in the same series. Gauges are read from the service at scrape time.

    edgerank_requests_total{transport,endpoint,code}   calls answered
    edgerank_rejections_total{reason}                   calls refused or failed (server/status.py)
    edgerank_pairs_scored_total / _inputs_ / _tokens_   work done (inputs > pairs: chunking)
    edgerank_cascade_rescored_total                     pairs rescored in FP32 (near-ties)
    edgerank_request_seconds{transport}                 answered calls, end to end
    edgerank_tokenize_seconds, _queue_seconds, _inference_seconds   per scoring request
    edgerank_batch_size, edgerank_batch_padded_tokens   per batch the worker runs
    edgerank_queue_pairs, _queue_tokens, _queued_inputs, _in_flight_requests, _serving
    edgerank_model_info{model,backend,precision,device,threads,normalise,version}
    edgerank_cache_hits_total{tier} / _misses_ / _coalesced_   pairs, by where they came from
    edgerank_cache_evictions_total, edgerank_cache_bytes, _entries   the in-process LRU
    edgerank_cache_redis_errors_total{op}, edgerank_cache_redis_up    the shared tier
    edgerank_cache_redis_invalid_total                 Redis values refused (not a score)
    edgerank_cache_request_seconds{outcome}            scoring path by outcome: hit, partial, miss
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

import edgerank
from edgerank.backends.base import Backend, BackendInfo, Encoded

if TYPE_CHECKING:
    from edgerank.engine.requests import Outcome

#: seconds; a rerank call on a CPU spans ~1 ms (one short pair) to tens of seconds
LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PADDED = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
#: a cache hit answers in ~0.1 ms: finer buckets at the low end, for P50/P95/P99 per outcome
CACHED = (0.0001, 0.00025, 0.0005, *LATENCY)


#: the gauges read at scrape time, each from a callable the service hands over
GAUGES = {
    "in_flight": ("edgerank_in_flight_requests", "Requests admitted and not yet answered"),
    "queue_pairs": (
        "edgerank_queue_pairs",
        "Pairs admitted, queued or running (admission control's count)",
    ),
    "queue_tokens": (
        "edgerank_queue_tokens",
        "Tokens admitted, queued or running (admission control's count)",
    ),
    "queued_inputs": ("edgerank_queued_inputs", "Model inputs waiting for the inference worker"),
    "serving": (
        "edgerank_serving",
        "1 while the daemon serves; 0 while loading, warming up or draining",
    ),
    "fidelity_spearman": (
        "edgerank_fidelity_spearman",
        "Fidelity watch: rolling mean Spearman of served vs FP32-reference scores",
    ),
    "fidelity_top1": (
        "edgerank_fidelity_top1_agreement",
        "Fidelity watch: rolling share of sampled requests whose FP32 top-1 was served top-1",
    ),
    "fidelity_samples": (
        "edgerank_fidelity_samples",
        "Fidelity watch: sampled requests rescored with the FP32 reference so far",
    ),
    "cache_bytes": (
        "edgerank_cache_bytes",
        "Bytes the in-process score cache holds (bounded by cache_bytes)",
    ),
    "cache_entries": ("edgerank_cache_entries", "Pairs the in-process score cache holds"),
    "cache_redis_up": (
        "edgerank_cache_redis_up",
        "1 while the Redis score cache answers; 0 while it is skipped after a failure",
    ),
}


class Metrics:
    def __init__(self, readers: dict[str, Callable[[], float]] | None = None):
        # the *_created series double the scrape for a value nobody graphs; the setting is
        # process-wide, so it is made here, when a daemon builds its metrics, not at import
        disable_created_metrics()
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = self._counter(
            "edgerank_requests",
            "Calls answered, by transport, endpoint and status code",
            ("transport", "endpoint", "code"),
        )
        self.rejections = self._counter(
            "edgerank_rejections",
            "Calls answered without a result, by reason (overloaded, too_large, unavailable...)",
            ("reason",),
        )
        self.pairs = self._counter("edgerank_pairs_scored", "(query, document) pairs scored")
        self.inputs = self._counter(
            "edgerank_inputs_scored",
            "Model inputs scored; more than pairs when long documents are chunked",
        )
        self.tokens = self._counter("edgerank_tokens_scored", "Tokens scored, padding excluded")
        self.cascade_rescored = self._counter(
            "edgerank_cascade_rescored",
            "Pairs rescored with the FP32 reference: near-ties of an INT8 leader (the cascade)",
        )
        self.total = Histogram(
            "edgerank_request_seconds",
            "Answered calls, from the transport's handler entry to the answer",
            ("transport",),
            buckets=LATENCY,
            registry=r,
        )
        self.tokenize = self._latency("edgerank_tokenize_seconds", "Tokenization of one request")
        self.queue = self._latency(
            "edgerank_queue_seconds", "Wait of one request for its first batch"
        )
        self.inference = self._latency(
            "edgerank_inference_seconds", "Time of the batches that carried one request"
        )
        self.batch_size = Histogram(
            "edgerank_batch_size", "Model inputs per batch", buckets=BATCH, registry=r
        )
        self.batch_padded = Histogram(
            "edgerank_batch_padded_tokens",
            "Padded tokens per batch (inputs x longest input)",
            buckets=PADDED,
            registry=r,
        )
        self.model = Info("edgerank_model", "The served model and its runtime", registry=r)
        self._cache_metrics(r)
        self.add_gauges(readers or {})

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def add_gauges(self, readers: dict[str, Callable[[], float]]) -> None:
        """Gauges read at scrape time (GAUGES names them): a fidelity watch's, the cache's."""
        for key, read in readers.items():
            name, doc = GAUGES[key]
            Gauge(name, doc, registry=self.registry).set_function(read)

    def _cache_metrics(self, r: CollectorRegistry) -> None:
        self.cache_hits = self._counter(
            "edgerank_cache_hits",
            "Pairs answered from the score cache, by tier (memory, redis)",
            ("tier",),
        )
        self.cache_misses = self._counter(
            "edgerank_cache_misses", "Pairs no tier held, scored for the request"
        )
        self.cache_coalesced = self._counter(
            "edgerank_cache_coalesced",
            "Pairs answered by an identical request that was scoring them at the time",
        )
        self.cache_evictions = self._counter(
            "edgerank_cache_evictions",
            "Entries the in-process cache dropped to stay within cache_bytes",
        )
        self.cache_redis_errors = self._counter(
            "edgerank_cache_redis_errors",
            "Redis calls that failed or timed out (the request went on without the cache)",
            ("op",),
        )
        self.cache_redis_invalid = self._counter(
            "edgerank_cache_redis_invalid",
            "Values Redis held that were not a finite score with plausible counts (scored anew)",
        )
        self.cache_seconds = Histogram(
            "edgerank_cache_request_seconds",
            "Scoring path of one request, by outcome: hit (all pairs cached), partial, miss",
            ("outcome",),
            buckets=CACHED,
            registry=r,
        )

    def _latency(self, name: str, doc: str) -> Histogram:
        return Histogram(name, doc, buckets=LATENCY, registry=self.registry)

    # -- hooks ------------------------------------------------------------------------

    def describe(self, info: BackendInfo) -> None:
        self.model.info(
            {
                "model": info.model,
                "backend": info.backend,
                "precision": info.precision,
                "device": info.device,
                "threads": str(info.threads),
                "normalise": info.normalise,
                "version": edgerank.__version__,
            }
        )

    def answered(
        self, transport: str, endpoint: str, code: str, reason: str | None, seconds: float
    ) -> None:
        """One call a transport answered; `reason` is None when it carried a result."""
        self.requests.labels(transport, endpoint, code).inc()
        if reason is None:
            self.total.labels(transport).observe(seconds)
        else:
            self.rejections.labels(reason).inc()

    def scored(self, pairs: int, outcome: Outcome) -> None:
        """Work the model did: the pairs a request took from the cache are not counted."""
        if outcome.scored is not None:
            pairs, items, tokens = outcome.scored
        else:
            items, tokens = outcome.items, outcome.tokens
        if not pairs:
            return
        self.pairs.inc(pairs)
        self.inputs.inc(items)
        self.tokens.inc(tokens)
        self.tokenize.observe(outcome.tokenization_ns / 1e9)
        self.queue.observe(outcome.queue_ns / 1e9)
        self.inference.observe(outcome.inference_ns / 1e9)

    def metered(self, backend: Backend) -> Backend:
        """The backend as the batcher sees it: each batch's size observed, then scored."""
        return _Metered(backend, self)  # type: ignore[return-value]

    # -- exposition -------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type): Prometheus text, or OpenMetrics when the scraper asks."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _Metered:
    def __init__(self, backend: Backend, metrics: Metrics):
        self._backend = backend
        self._metrics = metrics

    def score(self, batch: Sequence[Encoded]) -> Any:
        if batch:
            self._metrics.batch_size.observe(len(batch))
            self._metrics.batch_padded.observe(len(batch) * max(it.n_tokens for it in batch))
        return self._backend.score(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)
