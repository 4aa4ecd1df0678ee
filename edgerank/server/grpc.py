"""Build the gRPC server: servicers, health, reflection, TCP (optional TLS) and a Unix socket.

Health starts NOT_SERVING for every service; the daemon flips it once the model is warm
and back when it drains. The Unix socket gets mode 0660 (owner and group only): local apps
in the service's group use it without a token.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from edgerank.engine.service import Service
from edgerank.errors import EdgerankError
from edgerank.proto.edgerank.v1 import reranker_pb2
from edgerank.proto.tei.v1 import tei_pb2
from edgerank.server import reflection, transport
from edgerank.server.decoding import register
from edgerank.server.servicers import Reranker, TeiInfo, TeiRerank
from edgerank.server.settings import Settings
from edgerank.server.transport import (
    SOCKET_MODE,
    BoundSocket,
    private_socket,
    socket_path,
    tls_files,
)

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
    socket: BoundSocket | None

    @property
    def socket_path(self):
        return None if self.socket is None else self.socket.path

    @property
    def addresses(self) -> list[str]:
        out = []
        if self.tcp_port is not None:
            out.append(f"tcp port {self.tcp_port}")
        if self.socket_path is not None:
            out.append(f"unix:{self.socket_path}")
        return out

    async def stop(self, grace: float | None) -> None:
        """Stop serving; a successor's socket at our path survives gRPC's own unlink."""
        aside = self.socket.shelter() if self.socket is not None else None
        try:
            await self.server.stop(grace)
        finally:
            if self.socket is not None:
                self.socket.restore(aside)

    def release_socket(self) -> None:
        """Remove the Unix socket file, if it is still the one this server bound."""
        if self.socket is not None:
            self.socket.release()

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
    # no SO_REUSEPORT: a second daemon on a live port must fail, not share its traffic
    opts.append(("grpc.so_reuseport", 0))
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
    for servicer, descriptor in (
        (Reranker(service, token), reranker_pb2.DESCRIPTOR.services_by_name["Reranker"]),
        (TeiRerank(service, token), tei_pb2.DESCRIPTOR.services_by_name["Rerank"]),
        (TeiInfo(service, token), tei_pb2.DESCRIPTOR.services_by_name["Info"]),
    ):
        register(server, servicer, descriptor)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    listening = Listening(server, health, None, None)
    await listening.set_serving(False)
    names = (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable(server, names)

    if settings.listen:
        host, port = transport.split_host_port(settings.listen, "listen")
        credentials = _tls(settings) if settings.tls_cert else None
        try:
            if credentials is not None:
                listening.tcp_port = server.add_secure_port(settings.listen, credentials)
            else:
                listening.tcp_port = server.add_insecure_port(settings.listen)
        except RuntimeError as exc:  # grpc's "Failed to bind to address"
            reason = transport.port_in_use_reason(host, port) or str(exc)
            raise EdgerankError(f"cannot listen on {settings.listen}: {reason}") from exc
        if not token and not transport.is_loopback(host):
            log.warning(
                "gRPC on %s without a token: anyone who can reach it can use it", settings.listen
            )
    if settings.socket:
        path = socket_path(settings.socket)
        transport.claim_socket(path)
        try:
            with private_socket(path):
                server.add_insecure_port(f"unix:{path}")
        except RuntimeError as exc:
            raise EdgerankError(f"cannot listen on socket {path}: {exc}") from exc
    await server.start()
    if settings.socket:  # grpc creates the file only when it starts
        listening.socket = BoundSocket.of(path)
        os.chmod(path, SOCKET_MODE)
    return listening
