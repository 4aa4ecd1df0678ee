"""What the engine is told by whoever runs it: request limits, the batch shape asked for, the
queue bounds and the score cache. Any face builds one (the daemon from its Settings, a test or
an embedding app directly), so the engine serves them all without knowing where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    #: more names requests may ask for the model by, in order (the model's own comes after)
    served_names: tuple[str, ...]
    #: padded tokens / pairs per batch; 0 = auto (the planner's shape for the model)
    max_batch_tokens: int
    max_batch_pairs: int
    #: how long the batcher waits to fill a batch
    batch_wait_ms: float
    #: admission: pairs and tokens queued or running at most
    max_queue_pairs: int
    max_queue_tokens: int
    #: what one request may carry: documents, characters per text, bytes per message
    max_documents: int
    max_document_chars: int
    max_message_bytes: int
    #: the score cache: in-process bytes (0 = off), a shared Redis ('' = none) and its budget
    cache_bytes: int
    cache_url: str
    cache_ttl_s: float
    cache_timeout_ms: float
    cache_retry_s: float

    def batch_shape(self, planned: tuple[int, int | None]) -> tuple[int, int | None]:
        """(padded tokens, pairs or None = no cap) the batcher runs with: each setting that is
        0 (auto) takes the planner's value for the model, an explicit one wins."""
        tokens, pairs = planned
        return self.max_batch_tokens or tokens, self.max_batch_pairs or pairs
