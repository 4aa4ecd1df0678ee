"""Requests gRPC could not parse are the caller's error, answered like any other.

grpc.aio deserializes before the handler runs: bytes protobuf refuses (invalid UTF-8 in a
string field) end as UNKNOWN "Unexpected <class DecodeError>", uncounted. The servicers are
registered here from their service descriptors (what the generated add_*_to_server does)
with a deserializer that hands such bytes over as an `Undecodable`; the handler refuses it
with INVALID_ARGUMENT through status.mapped, so it is counted in /metrics like any refusal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from edgerank.errors import InvalidInput


@dataclass(frozen=True)
class Undecodable:
    """What the tolerant deserializer hands over for bytes protobuf refused to parse."""

    type_name: str
    error: str

    def refuse(self) -> InvalidInput:
        return InvalidInput(
            f"cannot parse the request as {self.type_name} (string fields must be valid "
            f"UTF-8): {self.error}"
        )


def _tolerant(cls: Any) -> Callable[[bytes], Any]:
    """cls.FromString, except that bad bytes become an Undecodable the handler refuses
    (INVALID_ARGUMENT, counted) instead of grpc's UNKNOWN "Unexpected DecodeError"."""
    name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return Undecodable(name, str(exc))

    return parse


def register(server: grpc.aio.Server, servicer: Any, service: ServiceDescriptor) -> None:
    """Like the generated add_*Servicer_to_server, with tolerant request parsing."""
    handlers = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(service.full_name, handlers)


async def decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A client stream whose undecodable messages are refused (INVALID_ARGUMENT)."""
    async for msg in requests:
        if isinstance(msg, Undecodable):
            raise msg.refuse()
        yield msg
