"""The pair-score cache: a (query, passage) pair is scored once, then answered from memory.

Exact by construction (cache_entries.py): the key hashes everything that fixes a raw score,
the model's identity included, so a swapped or re-quantized model never meets old entries;
the value is the float32 bits the model gave plus the window and token counts, so an answer
from the cache is the very answer the model gave, usage figures and TEI's check included.

Per request, each distinct pair is looked up in the in-process LRU; then pairs an identical
request is scoring right now are awaited (coalescing); the rest are claimed, asked of Redis
when one is configured (cache_redis.py), and what is still missing is scored as one group
set, exactly as without a cache. What the model scored goes back to both tiers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from edgerank.backends.base import BackendInfo
from edgerank.engine.cache_entries import (
    ScoreFn,
    Scores,
    model_digest,
    pack,
    plausible,
    request_keys,
    unpack,
)
from edgerank.errors import Expired

if TYPE_CHECKING:
    from edgerank.engine.cache_redis import RedisTier
    from edgerank.engine.config import EngineConfig
    from edgerank.engine.metrics import Metrics
    from edgerank.engine.requests import Group

log = logging.getLogger(__name__)

#: bytes an LRU entry costs beyond its two bytes objects (dict slot + OrderedDict node),
#: measured with tracemalloc on CPython 3.11 (~80-110); tests/engine/test_cache.py checks it
ENTRY_OVERHEAD = 128
#: requests with more text than this hash their keys off the event loop
INLINE_HASH_CHARS = 1 << 18

# -- the in-process tier -----------------------------------------------------------------


class MemoryLRU:
    """Least recently used first out, bounded by the bytes its entries really take."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._entries: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()

    @staticmethod
    def cost(key: bytes, value: bytes) -> int:
        return sys.getsizeof(key) + sys.getsizeof(value) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> int:
        """Store (or refresh) an entry; returns how many old ones were evicted for it."""
        cost = self.cost(key, value)
        if cost > self.max_bytes:
            return 0
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= self.cost(key, old)
        self._entries[key] = value
        self.bytes += cost
        evicted = 0
        while self.bytes > self.max_bytes:
            k, v = self._entries.popitem(last=False)
            self.bytes -= self.cost(k, v)
            evicted += 1
        self.evictions += evicted
        return evicted


# -- the cache ---------------------------------------------------------------------------


@dataclass
class Resolved:
    """One request's scores, and where each position's came from."""

    scores: Scores
    memory: int = 0  # positions answered by the in-process LRU
    redis: int = 0  # ... by Redis
    coalesced: int = 0  # ... by an identical request that was scoring them
    computed: int = 0  # ... by the model, for this request

    @property
    def cached(self) -> int:
        return self.memory + self.redis

    @property
    def outcome(self) -> str:
        """hit: every pair from the cache; miss: none; partial: some."""
        if self.cached == 0:
            return "miss"
        return "hit" if self.coalesced + self.computed == 0 else "partial"


class ScoreCache:
    """Both tiers and the table of pairs being scored right now. Event-loop thread only."""

    def __init__(
        self,
        model: bytes,
        memory: MemoryLRU | None,
        redis: RedisTier | None,
        metrics: Metrics | None = None,
        max_length: int = 1 << 20,
    ):
        self.model = model
        self.memory = memory
        self.redis = redis
        self.metrics = metrics
        #: the model's longest input: a Redis value claiming more tokens is not ours
        self.max_length = max_length
        self._inflight: dict[bytes, asyncio.Future[bytes | None]] = {}

    def gauges(self) -> dict[str, Callable[[], float]]:
        """Readers for the metrics' scrape-time gauges (engine/metrics.py GAUGES)."""
        memory, redis = self.memory, self.redis
        return {
            "cache_bytes": lambda: memory.bytes if memory is not None else 0,
            "cache_entries": lambda: len(memory) if memory is not None else 0,
            "cache_redis_up": lambda: bool(redis is not None and redis.up),
        }

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()

    async def resolve(
        self, groups: Sequence[Group], n: int, deadline: float | None, score: ScoreFn
    ) -> Resolved:
        """Scores for positions 0..n-1: cached ones looked up, the others scored once."""
        if sum(len(g.query) + sum(map(len, g.passages)) for g in groups) > INLINE_HASH_CHARS:
            refs = await asyncio.get_running_loop().run_in_executor(
                None, request_keys, self.model, groups, n
            )
        else:
            refs = request_keys(self.model, groups, n)
        where: dict[bytes, tuple[Group, int, list[int]]] = {}
        for pos, (key, g, j) in enumerate(refs):
            where.setdefault(key, (g, j, []))[2].append(pos)
        found: dict[bytes, bytes] = {}
        res = Resolved(Scores(np.empty(0), np.empty(0), np.empty(0)))  # sums what we computed
        todo = list(where)
        while todo:
            own: list[bytes] = []
            waits: dict[bytes, asyncio.Future[bytes | None]] = {}
            for key in todo:
                value = self.memory.get(key) if self.memory is not None else None
                if value is not None:
                    found[key] = value
                    res.memory += len(where[key][2])
                elif key in self._inflight:
                    waits[key] = self._inflight[key]
                else:  # claimed: identical pairs arriving from now on wait for this request
                    self._inflight[key] = asyncio.get_running_loop().create_future()
                    own.append(key)
            todo = []
            if own:
                await self._fill(own, where, found, res, deadline, score)
            if waits:
                for key, value in (await _wait(waits, deadline)).items():
                    if value is None:  # its owner failed or went away: try again ourselves
                        todo.append(key)
                    else:
                        found[key] = value
                        res.coalesced += len(where[key][2])
        scores = unpack([found[key] for key, _, _ in refs])
        scores.add_cost(res.scores)
        res.scores = scores
        return res

    async def _fill(
        self,
        own: list[bytes],
        where: dict[bytes, tuple[Group, int, list[int]]],
        found: dict[bytes, bytes],
        res: Resolved,
        deadline: float | None,
        score: ScoreFn,
    ) -> None:
        """Claimed keys: Redis, then the model; every claim is settled whatever happens."""
        try:
            if self.redis is not None:
                refused = 0
                for key, value in (await self.redis.get_many(own)).items():
                    g, j, positions = where[key]
                    if not plausible(value, g.passages[j], self.max_length):
                        refused += 1  # scored anew below, and overwritten
                        continue
                    self._publish(key, value, found)
                    res.redis += len(positions)
                if refused:
                    self.redis.refused(refused)
            rest = [key for key in own if key not in found]
            if not rest:
                return
            part = await score(_subgroups(rest, where), len(rest), deadline)
            res.scores.add_cost(part)
            values = pack(part)
            for key, value in zip(rest, values, strict=True):
                self._publish(key, value, found)
                res.computed += len(where[key][2])
            if self.redis is not None:
                self.redis.set_many(dict(zip(rest, values, strict=True)))
        finally:
            for key in own:
                future = self._inflight.pop(key, None)
                if future is not None and not future.done():
                    future.set_result(None)

    def _publish(self, key: bytes, value: bytes, found: dict[bytes, bytes]) -> None:
        found[key] = value
        if self.memory is not None:
            evicted = self.memory.put(key, value)
            if evicted and self.metrics is not None:
                self.metrics.cache_evictions.inc(evicted)
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)

    def observe(self, res: Resolved, seconds: float) -> None:
        """Count one answered request in the cache metrics."""
        m = self.metrics
        if m is None:
            return
        if res.memory:
            m.cache_hits.labels("memory").inc(res.memory)
        if res.redis:
            m.cache_hits.labels("redis").inc(res.redis)
        if res.computed:
            m.cache_misses.inc(res.computed)
        if res.coalesced:
            m.cache_coalesced.inc(res.coalesced)
        m.cache_seconds.labels(res.outcome).observe(seconds)


def _subgroups(keys: list[bytes], where: dict[bytes, tuple[Group, int, list[int]]]) -> list:
    """The claimed pairs as groups whose positions index `keys`, one per original group."""
    by_group: dict[int, tuple[Group, list[str], list[int]]] = {}
    for i, key in enumerate(keys):
        g, j, _ = where[key]
        entry = by_group.setdefault(id(g), (g, [], []))
        entry[1].append(g.passages[j])
        entry[2].append(i)
    return [replace(g, passages=ps, positions=pos) for g, ps, pos in by_group.values()]


async def _wait(
    waits: dict[bytes, asyncio.Future[bytes | None]], deadline: float | None
) -> dict[bytes, bytes | None]:
    """Results of other requests' claims; asyncio.wait never cancels what it waits on."""
    timeout = None if deadline is None else deadline - time.monotonic()
    if timeout is not None and timeout <= 0:
        raise Expired("deadline passed while an identical request was being scored")
    _, pending = await asyncio.wait(set(waits.values()), timeout=timeout)
    if pending:
        raise Expired("deadline passed while an identical request was being scored")
    return {key: future.result() for key, future in waits.items()}


async def open_cache(
    config: EngineConfig, info: BackendInfo, metrics: Metrics | None = None
) -> ScoreCache | None:
    """The cache the config asks for, or None (off, or the model has no identity)."""
    if config.cache_bytes <= 0 and not config.cache_url:
        return None
    model = model_digest(info)
    if model is None:
        log.info("score cache off: %s has no manifest identity to key scores on", info.model)
        return None
    memory = MemoryLRU(config.cache_bytes) if config.cache_bytes > 0 else None
    redis = None
    if config.cache_url:
        from edgerank.engine.cache_redis import RedisTier

        redis = RedisTier(
            config.cache_url,
            ttl_s=config.cache_ttl_s,
            timeout_s=config.cache_timeout_ms / 1000,
            retry_s=config.cache_retry_s,
            metrics=metrics,
        )
        await redis.ping()
    cache = ScoreCache(model, memory, redis, metrics, max_length=info.max_length)
    if metrics is not None:
        metrics.add_gauges(cache.gauges())
    return cache
