"""The one error table, and the decorator that applies it to servicer methods."""

from __future__ import annotations

import asyncio
import inspect

import grpc
import pytest

from edgerank import errors
from edgerank.errors import Expired
from edgerank.server.status import code_for, mapped

S = grpc.StatusCode


@pytest.mark.parametrize(
    "exc, code",
    [
        (errors.InvalidInput("x"), S.INVALID_ARGUMENT),
        (errors.TooLarge("x"), S.INVALID_ARGUMENT),
        (errors.ModelNotFound("x"), S.INVALID_ARGUMENT),
        (errors.Overloaded("x"), S.RESOURCE_EXHAUSTED),
        (errors.Unavailable("x"), S.UNAVAILABLE),
        (errors.ModelCorrupt("x"), S.FAILED_PRECONDITION),
        (errors.BackendUnavailable("x"), S.FAILED_PRECONDITION),
        (errors.BackendFailure("x"), S.INTERNAL),
        (Expired("x"), S.DEADLINE_EXCEEDED),
    ],
)
def test_table(exc, code):
    assert code_for(exc) == code


def test_every_domain_error_has_a_code_and_bugs_have_none():
    domain = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.EdgerankError)
    ]
    assert len(domain) >= 9
    for cls in domain:
        assert code_for(cls.__new__(cls)) is not None, cls
    assert code_for(ValueError("bug")) is None


class FakeContext:
    """Records what the decorator does to the call, like grpc.aio's context would."""

    def __init__(self):
        self.code = None
        self.details = None
        self.trailers = ()

    def set_trailing_metadata(self, md):
        self.trailers = md

    async def abort(self, code, details):
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


class Servicer:
    def __init__(self, exc):
        self.exc = exc

    @mapped
    async def Method(self, request, context):
        if self.exc is not None:
            raise self.exc
        return "answer"


def call(exc):
    context = FakeContext()
    try:
        result = asyncio.run(Servicer(exc).Method(None, context))
    except grpc.aio.AbortError:
        result = None
    return result, context


def test_success_passes_through():
    result, ctx = call(None)
    assert result == "answer" and ctx.code is None


def test_domain_error_becomes_its_status_with_its_message():
    _, ctx = call(errors.TooLarge("1001 documents, over the limit of 1000"))
    assert ctx.code == S.INVALID_ARGUMENT
    assert ctx.details == "1001 documents, over the limit of 1000"


def test_overloaded_sends_retry_pushback():
    _, ctx = call(errors.Overloaded("full", retry_after_s=0.25))
    assert ctx.code == S.RESOURCE_EXHAUSTED
    assert dict(ctx.trailers)["grpc-retry-pushback-ms"] == "250"


def test_a_bug_is_internal_without_its_traceback_or_text():
    _, ctx = call(KeyError("secret internals"))
    assert ctx.code == S.INTERNAL
    assert "secret" not in ctx.details and "Traceback" not in ctx.details


def test_cancellation_is_not_swallowed():
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(Servicer(asyncio.CancelledError()).Method(None, FakeContext()))
