"""Fidelity watch: does the INT8 model still rank like its FP32 reference on live traffic?

An install-time probe proves fidelity on the text it saw; the traffic a daemon serves may
differ (another language, longer passages, a new domain). With `fidelity_sample` > 0 the
service offers that fraction of its requests here after answering them; each sample is
rescored with the FP32 reference, only while the service has nothing else to do, on one
thread of its own, and its rank agreement with the served scores joins a rolling window.
Prometheus gauges carry the window's mean Spearman and top-1 agreement, and one warning is
logged when the window falls under the floor (again only after it has recovered).

Off (the default) costs nothing: the service holds no watch and calls nothing.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgerank.backends.base import Backend, ScoreOptions
from edgerank.engine.agreement import spearman
from edgerank.engine.rank import score_documents

if TYPE_CHECKING:
    from edgerank.engine.requests import Group

log = logging.getLogger(__name__)

#: the floor every INT8 install is held to (quality/ and the manifest use the same figures)
FLOOR_SPEARMAN, FLOOR_TOP1 = 0.99, 0.97


@dataclass(frozen=True)
class Sample:
    query: str
    passages: tuple[str, ...]
    options: ScoreOptions
    served: np.ndarray  # the raw scores the client got


class FidelityWatch:
    def __init__(
        self,
        reference: Backend,
        sample: float,
        *,
        idle: Callable[[], bool],
        window: int = 200,
        min_samples: int = 20,
        pending: int = 32,
        poll_s: float = 0.02,
        seed: int | None = None,
    ):
        self.reference = reference
        self.sample = sample
        self._idle = idle
        self._rhos: collections.deque[float] = collections.deque(maxlen=window)
        self._tops: collections.deque[bool] = collections.deque(maxlen=window)
        self._min = min_samples
        self._pending: collections.deque[Sample] = collections.deque(maxlen=pending)
        self._poll = poll_s
        self._rng = random.Random(seed)
        self._wake = asyncio.Event()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "edgerank-watch")
        self.samples = 0
        self.dropped = 0
        self._warned = False

    # -- the service's side -------------------------------------------------------------

    def offer(self, query: str, passages: Sequence[str], options: ScoreOptions, served) -> None:
        """Maybe keep one answered group; never blocks, never fails the request."""
        if len(passages) < 2 or self._rng.random() >= self.sample:
            return
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1  # the oldest waiting sample gives way
        self._pending.append(Sample(query, tuple(passages), options, np.asarray(served)))
        self._wake.set()

    def offer_groups(self, groups: Sequence[Group], raw: np.ndarray) -> None:
        """Each group of one answered request with its positions' served scores."""
        for g in groups:
            served = raw[g.positions] if g.positions is not None else raw[: len(g.passages)]
            self.offer(g.query, g.passages, g.options, served)

    # -- the watcher's side -------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                while not self._idle():  # serving comes first, always
                    await asyncio.sleep(self._poll)
                s = self._pending.popleft()
                ref = await loop.run_in_executor(self._worker, self._rescore, s)
                self._record(ref, s.served)

    def _rescore(self, s: Sample) -> np.ndarray:
        return score_documents(self.reference, s.query, list(s.passages), s.options).raw

    def _record(self, ref: np.ndarray, served: np.ndarray) -> None:
        self.samples += 1
        self._rhos.append(spearman(ref, served))
        self._tops.append(int(np.argmax(ref)) == int(np.argmax(served)))
        below = self.below_floor()
        if below and not self._warned:
            log.warning(
                "fidelity watch: over the last %d sampled requests the served model ranks "
                "unlike its FP32 reference (mean Spearman %.4f, top-1 kept %.1f%%; floor %.2f "
                "and %.0f%%): check the traffic against the install-time probe",
                len(self._rhos), self.spearman, 100 * self.top1, FLOOR_SPEARMAN, 100 * FLOOR_TOP1,
            )  # fmt: skip
        self._warned = below

    # -- figures --------------------------------------------------------------------------

    @property
    def spearman(self) -> float:
        return float(np.mean(self._rhos)) if self._rhos else float("nan")

    @property
    def top1(self) -> float:
        return float(np.mean(self._tops)) if self._tops else float("nan")

    def below_floor(self) -> bool:
        if len(self._rhos) < self._min:
            return False
        return self.spearman < FLOOR_SPEARMAN or self.top1 < FLOOR_TOP1

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        self.reference.close()
