"""The one table from domain errors to transport codes (gRPC and HTTP), and the gRPC decorator.

Each row gives the gRPC status, the HTTP status and the short reason the rejection metric is
labelled with. Lookup walks the exception's class hierarchy, so a subclass maps like its
parent unless the table names it (TooLarge: INVALID_ARGUMENT on gRPC, but 413 on HTTP).
Anything that is not an EdgerankError is a bug: it is logged with its traceback and the
client gets INTERNAL / 500 with a short line, never the traceback itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import grpc

from edgerank import errors
from edgerank.errors import Cancelled, Expired

log = logging.getLogger(__name__)

S = grpc.StatusCode


class Mapping(NamedTuple):
    grpc: grpc.StatusCode
    http: int
    reason: str  # label of edgerank_rejections_total


TABLE: dict[type[BaseException], Mapping] = {
    errors.InvalidInput: Mapping(S.INVALID_ARGUMENT, 400, "invalid_input"),
    errors.TooLarge: Mapping(S.INVALID_ARGUMENT, 413, "too_large"),
    errors.EmptyInput: Mapping(S.INVALID_ARGUMENT, 400, "empty"),
    errors.ReadTimeout: Mapping(S.DEADLINE_EXCEEDED, 408, "read_timeout"),
    errors.ModelNotFound: Mapping(S.INVALID_ARGUMENT, 400, "unknown_model"),
    errors.Overloaded: Mapping(S.RESOURCE_EXHAUSTED, 429, "overloaded"),
    errors.Unavailable: Mapping(S.UNAVAILABLE, 503, "unavailable"),
    errors.ModelCorrupt: Mapping(S.FAILED_PRECONDITION, 500, "model_corrupt"),
    errors.BackendUnavailable: Mapping(S.FAILED_PRECONDITION, 500, "backend_unavailable"),
    errors.BackendFailure: Mapping(S.INTERNAL, 500, "backend_failure"),
    errors.BelowFidelityFloor: Mapping(S.FAILED_PRECONDITION, 422, "below_fidelity_floor"),
    Expired: Mapping(S.DEADLINE_EXCEEDED, 504, "deadline"),
    Cancelled: Mapping(S.CANCELLED, 499, "cancelled"),  # 499: nginx's "client closed"
    errors.EdgerankError: Mapping(S.INTERNAL, 500, "internal"),
}
#: not domain errors: a bug, and a caller that went away
BUG = Mapping(S.INTERNAL, 500, "internal")
GONE = Mapping(S.CANCELLED, 499, "cancelled")


def lookup(exc: BaseException) -> Mapping | None:
    """The row for a domain error; None for anything outside the table (a bug)."""
    for cls in type(exc).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    return None


def code_for(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status for a domain error; None for anything outside the table (a bug)."""
    row = lookup(exc)
    return None if row is None else row.grpc


def http_status_for(exc: BaseException) -> int | None:
    """The HTTP status for a domain error; None for anything outside the table (a bug)."""
    row = lookup(exc)
    return None if row is None else row.http


def retry_after_s(exc: BaseException) -> float | None:
    """How long a refused caller should wait (Overloaded only)."""
    return exc.retry_after_s if isinstance(exc, errors.Overloaded) else None


def trailers_for(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """gRPC's retry pushback for Overloaded, so well-behaved clients back off."""
    if (wait := retry_after_s(exc)) is not None:
        return (("grpc-retry-pushback-ms", str(max(1, int(wait * 1000)))),)
    return ()


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def mapped(method: F) -> F:
    """Wrap an async servicer method: domain errors -> their status, bugs -> INTERNAL.

    Every call is also counted in the servicer's service.metrics (when it has one), by
    status code and, for refusals, by the table's reason.
    """
    endpoint = method.__qualname__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metrics = getattr(getattr(self, "service", None), "metrics", None)
        code, reason = "OK", None
        t0 = time.perf_counter()
        try:
            return await method(self, request, context)
        except errors.EdgerankError as exc:
            row = lookup(exc)
            assert row is not None  # EdgerankError is in the table
            code, reason = row.grpc.name, row.reason
            if trailers := trailers_for(exc):
                context.set_trailing_metadata(trailers)
            await context.abort(row.grpc, str(exc) or type(exc).__name__)
        except grpc.aio.AbortError:
            # context.abort() inside the method (the token check): already a status
            aborted = context.code()
            code = aborted.name if isinstance(aborted, grpc.StatusCode) else "UNKNOWN"
            reason = code.lower()
            raise
        except asyncio.CancelledError:
            code, reason = GONE.grpc.name, GONE.reason
            raise
        except Exception:
            code, reason = BUG.grpc.name, BUG.reason
            log.exception("unexpected error in %s", method.__qualname__)
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal error; the server log has the details"
            )
        finally:
            if metrics is not None:
                metrics.answered("grpc", endpoint, code, reason, time.perf_counter() - t0)

    return wrapper  # type: ignore[return-value]
