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
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

from edgerank.errors import InvalidInput


@dataclass(frozen=True)
class Undecodable:
    """What the tolerant deserializer hands over for bytes protobuf refused to parse."""

    type_name: str
    #: why, in words: a string field that is not UTF-8, or bytes that are no protobuf
    reason: str

    def refuse(self) -> InvalidInput:
        return InvalidInput(f"cannot parse the request as {self.type_name}: {self.reason}")


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise DecodeError("malformed wire format")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def why_undecodable(data: bytes, descriptor: Descriptor) -> str:
    """protobuf says only that parsing failed: walk the wire format to say why (the first
    string field that is not UTF-8, or that the bytes are not a protobuf message)."""
    try:
        return _walk(data, descriptor) or "not a valid protobuf message"
    except DecodeError:
        return "not a valid protobuf message (garbage, or cut short)"


def _walk(data: bytes, descriptor: Descriptor) -> str | None:
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, kind = key >> 3, key & 7
        if kind == 0:
            _, at = _varint(data, at)
        elif kind in (1, 5):
            at += 8 if kind == 1 else 4
        elif kind == 2:
            size, at = _varint(data, at)
            value, at = data[at : at + size], at + size
            field = descriptor.fields_by_number.get(number)
            if field is not None and field.type == FieldDescriptor.TYPE_STRING:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return f"field {field.name!r} is not valid UTF-8 (byte {exc.start})"
            elif field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                if (inner := _walk(value, field.message_type)) is not None:
                    return f"{field.name}: {inner}"
        else:
            raise DecodeError("malformed wire format")
        if number == 0 or at > len(data):
            raise DecodeError("malformed wire format")
    return None


def _tolerant(cls: Any) -> Callable[[bytes], Any]:
    """cls.FromString, except that bad bytes become an Undecodable the handler refuses
    (INVALID_ARGUMENT, counted) instead of grpc's UNKNOWN "Unexpected DecodeError"."""
    name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError:
            return Undecodable(name, why_undecodable(data, cls.DESCRIPTOR))

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
