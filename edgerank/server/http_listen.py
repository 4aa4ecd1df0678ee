"""The HTTP face's listeners: TCP (HTTPS when the TLS pair is set) and a Unix socket, on the
loop grpc.aio already runs, around http.py's Api; slow and idle peers are kept in check by
http_peers.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from edgerank.engine.service import Service
from edgerank.errors import EdgerankError
from edgerank.server import transport
from edgerank.server.http import Api
from edgerank.server.http_peers import ConnectionGuard, PeerLog
from edgerank.server.settings import Settings, http_address
from edgerank.server.transport import (
    BoundSocket,
    TlsPair,
    Token,
    is_loopback,
    private_socket,
    socket_path,
)

log = logging.getLogger("edgerank.server.http")


@dataclass
class HttpListening:
    runner: web.AppRunner
    tcp: tuple[str, int] | None = None  # the bound (host, port), port 0 resolved
    socket: BoundSocket | None = None
    scheme: str = "http"
    stopped: bool = False

    @property
    def socket_path(self) -> Path | None:
        return None if self.socket is None else self.socket.path

    @property
    def addresses(self) -> list[str]:
        out = []
        if self.tcp is not None:
            host, port = self.tcp
            out.append(f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{port}")
        if self.socket_path is not None:
            out.append(f"http on unix:{self.socket_path}")
        return out

    async def stop(self) -> None:
        """Close the listeners and the idle connections; answers being written may finish."""
        if self.stopped:
            return
        self.stopped = True
        await self.runner.cleanup()
        if self.socket is not None:
            self.socket.release()  # only if it is still the file this daemon bound


async def start(
    service: Service, settings: Settings, token: Token | None = None, tls: TlsPair | None = None
) -> HttpListening:
    """Bind and serve the HTTP face on the running loop (the one grpc.aio uses). `token` and
    `tls`: the daemon's, shared with gRPC (None: from the settings)."""
    if token is None:
        token = Token(settings.bearer_token())
    if tls is None and settings.tls_cert:
        tls = TlsPair(settings.tls_cert, settings.tls_key)
    api = Api(service, token, settings.read_timeout_s)
    runner = web.AppRunner(
        api.app(),
        access_log=None,  # one log line per request costs more than the request
        handler_cancellation=True,  # a client that hangs up drops its queued work
        shutdown_timeout=min(transport.FLUSH_S, settings.drain_timeout_s),
        keepalive_timeout=settings.idle_timeout_s,  # http_peers.py
        logger=PeerLog(service.metrics),
    )
    await runner.setup()
    assert runner.server is not None
    api.guard = ConnectionGuard(runner.server, settings.header_timeout_s, settings.max_connections)
    context = tls.context() if tls is not None else None
    listening = HttpListening(runner, scheme="https" if context else "http")
    try:
        if settings.http:
            host, port = http_address(settings.http)
            # no SO_REUSEPORT: a second daemon on a live port must fail, not share it
            await web.TCPSite(runner, host, port, ssl_context=context, reuse_port=False).start()
            listening.tcp = (host, runner.addresses[0][1])
            if not token.value and not is_loopback(host):
                log.warning("HTTP on %s without a token: anyone who can reach it can use it", host)
        if settings.http_socket:
            path = socket_path(settings.http_socket)
            transport.claim_socket(path, "http_socket")
            with private_socket(path):
                await web.UnixSite(runner, str(path)).start()
            listening.socket = BoundSocket.of(path)
    except EdgerankError:
        await runner.cleanup()
        raise
    except OSError as exc:
        await runner.cleanup()
        where = settings.http or settings.http_socket
        raise EdgerankError(f"cannot listen for HTTP on {where}: {exc}") from exc
    return listening
