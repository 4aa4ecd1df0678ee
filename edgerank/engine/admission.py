"""Admission control: a bounded budget of pairs and tokens, queued or running.

Work beyond the budget is refused at once with Overloaded (never parked), so a burst
costs the caller one round trip and the daemon no memory. A request that could never fit,
even into an empty queue, is refused as TooLarge instead: retrying it would not help.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from edgerank.errors import Overloaded, TooLarge


class Admission:
    def __init__(
        self,
        max_pairs: int,
        max_tokens: int,
        drain_rate: Callable[[], float] | None = None,
    ):
        """`drain_rate` gives recent tokens/s, to tell a refused caller when to come back."""
        if max_pairs <= 0 or max_tokens <= 0:
            raise ValueError("admission limits must be > 0")
        self.max_pairs = max_pairs
        self.max_tokens = max_tokens
        self._drain_rate = drain_rate
        self._lock = threading.Lock()
        self.pairs = 0
        self.tokens = 0
        self.refused = 0

    def admit(self, pairs: int, tokens: int = 0) -> Ticket:
        """Reserve room or raise; the ticket gives it back."""
        ticket = Ticket(self)
        ticket.resize(pairs, tokens)
        return ticket

    def _retry_after(self) -> float:
        rate = self._drain_rate() if self._drain_rate else 0.0
        if rate <= 0:
            return 1.0
        return min(max(self.tokens / rate, 0.05), 30.0)

    def _change(self, ticket: Ticket, pairs: int, tokens: int) -> None:
        if pairs > self.max_pairs:
            raise TooLarge(
                f"request has {pairs} pairs, more than the whole queue holds "
                f"({self.max_pairs}): split it, or raise max_queue_pairs"
            )
        if tokens > self.max_tokens:
            raise TooLarge(
                f"request has {tokens} tokens, more than the whole queue holds "
                f"({self.max_tokens}): split it, or raise max_queue_tokens"
            )
        with self._lock:
            new_pairs = self.pairs - ticket.pairs + pairs
            new_tokens = self.tokens - ticket.tokens + tokens
            growing = pairs > ticket.pairs or tokens > ticket.tokens
            if growing and (new_pairs > self.max_pairs or new_tokens > self.max_tokens):
                self.refused += 1
                raise Overloaded(
                    f"overloaded: {self.pairs}/{self.max_pairs} pairs and "
                    f"{self.tokens}/{self.max_tokens} tokens already queued",
                    retry_after_s=self._retry_after(),
                )
            self.pairs, self.tokens = new_pairs, new_tokens
            ticket.pairs, ticket.tokens = pairs, tokens


class Ticket:
    """One request's reservation. resize() once its real token count is known."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self.pairs = 0
        self.tokens = 0

    def resize(self, pairs: int, tokens: int) -> None:
        """Change the reservation; raises (keeping the old one) when the queue is full."""
        self._admission._change(self, pairs, tokens)

    def release(self) -> None:
        """Give the reservation back; safe to call twice."""
        self._admission._change(self, 0, 0)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
