"""The shared tier of the score cache: Redis (redis-py's asyncio client), never in the way.

Replicas behind one Service see the same popular pairs; with one Redis a pair scored by one
replica is a hit on all. The tier only ever makes a request cheaper: every call is bounded by
cache_timeout_ms (socket timeouts plus an asyncio deadline around the whole call, no client
retries), writes go out in the background after the answer, and a failure opens a circuit
breaker: the daemon logs ONE warning, counts the error, and leaves Redis alone for
cache_retry_s before it tries again (and logs once more when Redis answers again).

What Redis holds is input from other processes: a value that is not a finite score with
plausible counts (cache_entries.plausible) is a miss, counted, and logged once per process.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING

from edgerank.engine.cache_entries import VALUE
from edgerank.errors import missing_extra

if TYPE_CHECKING:
    from edgerank.engine.metrics import Metrics

log = logging.getLogger(__name__)

#: key prefix in Redis (then the key digest in hex): operators can find or flush them
PREFIX = b"edgerank:score:"
VALUE_SIZE = VALUE.itemsize  # a key holding anything else is not ours


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + host))


class RedisTier:
    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        timeout_s: float,
        retry_s: float,
        metrics: Metrics | None = None,
    ):
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise missing_extra("redis", "redis") from None
        self.url = redacted(url)
        self.ttl_ms = int(ttl_s * 1000) or None
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.metrics = metrics
        self.up = True
        self.invalid = 0  # values refused as not ours (cache_entries.plausible)
        self._down_until = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._client = aioredis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # a retry would double the worst case; the breaker waits
            decode_responses=False,
        )

    @staticmethod
    def key(digest: bytes) -> bytes:
        return PREFIX + digest.hex().encode()

    @property
    def skipping(self) -> bool:
        """True while the breaker is open: Redis failed less than retry_s ago."""
        return time.monotonic() < self._down_until

    async def ping(self) -> bool:
        """At start-up: say whether Redis answers (a failure is the same one warning)."""
        try:
            await asyncio.wait_for(self._client.ping(), self.timeout_s)
        except Exception as exc:
            self._failed("ping", exc)
            return False
        log.info("score cache shared through Redis at %s", self.url)
        return True

    async def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        """The entries Redis holds for these keys; {} when it is down, slow or skipped."""
        if self.skipping or not keys:
            return {}
        try:
            values = await asyncio.wait_for(
                self._client.mget([self.key(k) for k in keys]), self.timeout_s
            )
        except Exception as exc:  # connection refused, timeout, protocol error: all the same
            self._failed("get", exc)
            return {}
        self._ok()
        return {
            k: v
            for k, v in zip(keys, values, strict=True)
            if v is not None and len(v) == VALUE_SIZE
        }

    def refused(self, count: int) -> None:
        """Values that were not plausible scores: counted, the first time logged."""
        if self.metrics is not None:
            self.metrics.cache_redis_invalid.inc(count)
        if not self.invalid:
            log.warning(
                "Redis score cache at %s holds values that are not edgerank scores (NaN, "
                "Infinity or impossible counts): treated as misses and scored anew; "
                "edgerank_cache_redis_invalid_total counts them from here on",
                self.url,
            )
        self.invalid += count

    def set_many(self, entries: dict[bytes, bytes]) -> None:
        """Store in the background: the answer does not wait for Redis."""
        if self.skipping or not entries:
            return
        task = asyncio.ensure_future(self._set(entries))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set(self, entries: dict[bytes, bytes]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for k, v in entries.items():
                pipe.set(self.key(k), v, px=self.ttl_ms)
            await asyncio.wait_for(pipe.execute(), self.timeout_s)
        except Exception as exc:
            self._failed("set", exc)
        else:
            self._ok()

    def _failed(self, op: str, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.cache_redis_errors.labels(op).inc()
        self._down_until = time.monotonic() + self.retry_s
        if self.up:
            self.up = False
            what = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            if isinstance(exc, asyncio.TimeoutError):
                what = f"no answer within {self.timeout_s * 1000:g} ms"
            log.warning(
                "Redis score cache at %s failed (%s): scoring without it, retrying every %gs",
                self.url,
                what.splitlines()[0],
                self.retry_s,
            )

    def _ok(self) -> None:
        if not self.up:
            self.up = True
            log.info("Redis score cache at %s answers again", self.url)

    async def flush(self) -> None:
        """Wait for the writes in flight (each is bounded by the timeout)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Let the last writes land, then disconnect."""
        await self.flush()
        try:
            await self._client.aclose()
        except Exception as exc:  # closing a dead connection must not fail the shutdown
            log.debug("closing the Redis client: %s", exc)
