"""Server reflection on both protocol versions: grpc.reflection.v1 and v1alpha.

grpcio-reflection implements only v1alpha (grpc/grpc#38576), while current tools (grpcurl,
Postman, grpcui, grpc-java's and grpc-go's clients) ask v1 first. The two versions are the
same schema under another package name, field for field, so one servicer answers both: the
v1 method is registered with v1alpha's message classes, which read and write the same bytes.
The v1 file descriptor is derived from v1alpha's by renaming the package, and added to the
descriptor pool, so that reflection can describe its own v1 service as well.

Reflection lists the whole API, so on a token-protected port it asks for the token like
every other call (the `guard`); health alone stays open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha
from grpc_reflection.v1alpha._async import ReflectionServicer  # what reflection.aio is

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE = reflection.SERVICE_NAME
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """Add grpc/reflection/v1/reflection.proto to `pool` (derived from v1alpha's) once."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    proto.options.Clear()
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    pool.Add(proto)


Guard = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def enable(
    server: grpc.aio.Server, service_names: Sequence[str], guard: Guard | None = None
) -> None:
    """Serve reflection for `service_names` (plus both reflection services) on v1 and v1alpha;
    `guard(context)` runs first on every call (it aborts one without the token)."""
    pool = descriptor_pool.Default()
    _v1_file(pool)
    names = (*service_names, V1_SERVICE, V1ALPHA_SERVICE)
    servicer = ReflectionServicer(names, pool=pool)

    async def info(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext):
        if guard is not None:
            await guard(context)
        async for response in servicer.ServerReflectionInfo(requests, context):
            yield response

    handler = grpc.stream_stream_rpc_method_handler(
        info,
        request_deserializer=v1alpha.ServerReflectionRequest.FromString,
        response_serializer=v1alpha.ServerReflectionResponse.SerializeToString,
    )
    for service in (V1_SERVICE, V1ALPHA_SERVICE):
        handlers = {"ServerReflectionInfo": handler}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
