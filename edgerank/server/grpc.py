"""Build the gRPC server: servicers, health, reflection, TCP (optional TLS) and a Unix socket.

Health starts NOT_SERVING for every service; the daemon flips it once the model is warm
and back when it drains. The Unix socket gets mode 0660 (owner and group only): local apps
in the service's group use it without a token. Health stays open on TCP (probes need it);
everything else, reflection included, needs the token there.

Slow or idle peers: a connection must finish its handshake (TLS and the HTTP/2 preface)
within header_timeout_s, is closed after idle_timeout_s without a call, is pinged when
quiet so that a dead peer is noticed, and there are at most max_connections of them.
"""

from __future__ import annotations

import functools
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
from edgerank.server.servicers import Reranker, TeiInfo, TeiRerank, authorise
from edgerank.server.settings import Settings
from edgerank.server.transport import (
    SOCKET_MODE,
    BoundSocket,
    TlsPair,
    Token,
    private_socket,
    socket_path,
)

log = logging.getLogger(__name__)

#: how long a keepalive ping may go unanswered before the connection is closed
KEEPALIVE_TIMEOUT_MS = 20_000

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
    # slow and idle peers (server/grpc.py's docstring)
    opts.append(("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)))
    opts.append(("grpc.max_connection_idle_ms", int(settings.idle_timeout_s * 1000)))
    opts.append(("grpc.keepalive_time_ms", int(settings.idle_timeout_s * 1000)))
    opts.append(("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS))
    opts.append(("grpc.max_allowed_incoming_connections", settings.max_connections))
    if settings.max_connection_age_s > 0:
        opts.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        opts.append(("grpc.max_connection_age_grace_ms", int(settings.drain_timeout_s * 1000)))
    return opts


def _tls(tls: TlsPair) -> grpc.ServerCredentials:
    """Credentials that ask `tls` on each handshake, so a SIGHUP's new pair serves new
    connections (grpc keeps its last configuration while the fetcher answers None)."""
    seen = [tls.generation]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        if tls.generation == seen[0]:
            return None
        seen[0] = tls.generation
        key_cert = [(tls.pem[1], tls.pem[0])]
        return grpc.ssl_server_certificate_configuration(key_cert)

    initial = grpc.ssl_server_certificate_configuration([(tls.pem[1], tls.pem[0])])
    return grpc.dynamic_ssl_server_credentials(initial, fetch)


async def start(
    service: Service, settings: Settings, token: Token | None = None, tls: TlsPair | None = None
) -> Listening:
    """Bind, register everything and start; health is NOT_SERVING until set_serving(True).
    `token` and `tls`: the daemon's, shared with the HTTP face (None: from the settings)."""
    server = grpc.aio.server(options=_options(settings))
    if token is None:
        token = Token(settings.bearer_token())
    if tls is None and settings.tls_cert:
        tls = TlsPair(settings.tls_cert, settings.tls_key)
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
    reflection.enable(server, names, functools.partial(authorise, token))

    if settings.listen:
        host, port = transport.split_host_port(settings.listen, "listen")
        credentials = _tls(tls) if tls is not None else None
        # checked first: a failed bind makes grpc core print its own error line
        if reason := transport.port_in_use_reason(host, port):
            raise EdgerankError(f"cannot listen on {settings.listen}: {reason}")
        try:
            if credentials is not None:
                listening.tcp_port = server.add_secure_port(settings.listen, credentials)
            else:
                listening.tcp_port = server.add_insecure_port(settings.listen)
        except RuntimeError as exc:  # grpc's "Failed to bind to address"
            reason = transport.port_in_use_reason(host, port) or str(exc)
            raise EdgerankError(f"cannot listen on {settings.listen}: {reason}") from exc
        if not token.value and not transport.is_loopback(host):
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
