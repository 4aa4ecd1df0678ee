"""The one table from domain errors to gRPC status codes, and the decorator that applies it.

Lookup walks the exception's class hierarchy, so a subclass (TooLarge, ModelNotFound) maps
like its parent unless the table names it. Anything that is not an EdgerankError is a bug:
it is logged with its traceback and the client gets INTERNAL with a short line, never the
traceback itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from edgerank import errors
from edgerank.engine.batcher import Cancelled, Expired

log = logging.getLogger(__name__)

TABLE: dict[type[BaseException], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,  # incl. TooLarge, ModelNotFound
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ModelCorrupt: grpc.StatusCode.FAILED_PRECONDITION,
    errors.BackendUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    errors.BackendFailure: grpc.StatusCode.INTERNAL,
    Expired: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    errors.EdgerankError: grpc.StatusCode.INTERNAL,
}


def code_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status for a domain error; None for anything outside the table (a bug)."""
    for cls in type(exc).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    return None


def trailers_for(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """gRPC's retry pushback for Overloaded, so well-behaved clients back off."""
    if isinstance(exc, errors.Overloaded):
        return (("grpc-retry-pushback-ms", str(max(1, int(exc.retry_after_s * 1000)))),)
    return ()


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def mapped(method: F) -> F:
    """Wrap an async servicer method: domain errors -> their status, bugs -> INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except errors.EdgerankError as exc:
            code = code_for(exc)
            assert code is not None  # EdgerankError is in the table
            if trailers := trailers_for(exc):
                context.set_trailing_metadata(trailers)
            await context.abort(code, str(exc) or type(exc).__name__)
        except grpc.aio.AbortError:
            raise  # context.abort() inside the method: already a status
        except Exception:
            log.exception("unexpected error in %s", method.__qualname__)
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal error; the server log has the details"
            )

    return wrapper  # type: ignore[return-value]
