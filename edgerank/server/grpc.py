"""Build the gRPC server: servicers, health, reflection, TCP (optional TLS) and a Unix socket.

Health starts NOT_SERVING for every service; the daemon flips it once the model is warm
and back when it drains. The Unix socket gets mode 0660 (owner and group only): local apps
in the service's group use it without a token.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from edgerank.engine.service import Service
from edgerank.errors import EdgerankError
from edgerank.proto.edgerank.v1 import reranker_pb2, reranker_pb2_grpc
from edgerank.proto.tei.v1 import tei_pb2, tei_pb2_grpc
from edgerank.server.servicers import Reranker, TeiInfo, TeiRerank
from edgerank.server.settings import Settings
from edgerank.server.transport import SOCKET_MODE, private_socket, socket_path, tls_files

log = logging.getLogger(__name__)

#: what health reports on (besides "", the whole server) and reflection lists
SERVICES = (
    reranker_pb2.DESCRIPTOR.services_by_name["Reranker"].full_name,
    tei_pb2.DESCRIPTOR.services_by_name["Rerank"].full_name,
    tei_pb2.DESCRIPTOR.services_by_name["Info"].full_name,
)


@dataclass
class Listening:
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    tcp_port: int | None
    socket_path: Path | None

    @property
    def addresses(self) -> list[str]:
        out = []
        if self.tcp_port is not None:
            out.append(f"tcp port {self.tcp_port}")
        if self.socket_path is not None:
            out.append(f"unix:{self.socket_path}")
        return out

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            await self.health.set(name, status)


def _options(settings: Settings) -> list[tuple[str, int]]:
    # gRPC's own cap sits above ours so that an oversized request meets our message
    # (INVALID_ARGUMENT, naming the limit) rather than a bare RESOURCE_EXHAUSTED
    cap = min(2 * settings.max_message_bytes + (1 << 20), 2**31 - 1)
    opts = [("grpc.max_receive_message_length", cap), ("grpc.max_send_message_length", cap)]
    if settings.max_connection_age_s > 0:
        opts.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        opts.append(("grpc.max_connection_age_grace_ms", int(settings.drain_timeout_s * 1000)))
    return opts


def _tls(settings: Settings) -> grpc.ServerCredentials:
    cert, key = tls_files(settings)
    return grpc.ssl_server_credentials([(key, cert)])


async def start(service: Service, settings: Settings) -> Listening:
    """Bind, register everything and start; health is NOT_SERVING until set_serving(True)."""
    server = grpc.aio.server(options=_options(settings))
    token = settings.bearer_token()
    reranker_pb2_grpc.add_RerankerServicer_to_server(Reranker(service, token), server)
    tei_pb2_grpc.add_RerankServicer_to_server(TeiRerank(service, token), server)
    tei_pb2_grpc.add_InfoServicer_to_server(TeiInfo(service, token), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    listening = Listening(server, health, None, None)
    await listening.set_serving(False)
    names = (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)

    try:
        if settings.listen:
            if settings.tls_cert:
                port = server.add_secure_port(settings.listen, _tls(settings))
            else:
                port = server.add_insecure_port(settings.listen)
            listening.tcp_port = port
        if settings.socket:
            path = socket_path(settings.socket)
            with private_socket(path):
                server.add_insecure_port(f"unix:{path}")
            listening.socket_path = path
    except RuntimeError as exc:  # grpc's "failed to bind"
        where = settings.listen or settings.socket
        raise EdgerankError(f"cannot listen on {where}: {exc}") from exc
    await server.start()
    if listening.socket_path is not None:  # grpc creates the file only when it starts
        os.chmod(listening.socket_path, SOCKET_MODE)
    return listening
