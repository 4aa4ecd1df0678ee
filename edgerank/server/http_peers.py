"""The HTTP face against slow, idle and malformed peers (aiohttp's own defaults let them be).

- A new connection must have sent its first request's headers within header_timeout_s;
  after an answer, a keep-alive connection (idle, or sending the next headers) is closed
  after idle_timeout_s (aiohttp's keepalive_timeout, which closes only a connection with no
  request under way). A body must arrive within read_timeout_s (http.py).
- At most max_connections are open (TCP and Unix socket together): a newcomer past the
  bound closes the connection that has waited longest without a request under way, or is
  closed itself when every one is busy. A peer that trickles bytes cannot crowd out others.
- A malformed request (a line or header too long, a bad encoding, not HTTP at all) is
  refused by aiohttp with 400; the log gets one line for it, not a traceback, and
  edgerank_rejections_total{reason="bad_request"} counts it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

if TYPE_CHECKING:
    from aiohttp import web

    from edgerank.engine.metrics import Metrics

log = logging.getLogger("edgerank.server.http")


class _Peer:
    __slots__ = ("since", "busy", "served", "timer")

    def __init__(self, since: float):
        self.since = since  # when it last began waiting for a request
        self.busy = 0  # requests of it being handled
        self.served = 0
        self.timer: asyncio.TimerHandle | None = None


class ConnectionGuard:
    """Open connections of one aiohttp server, their header deadline and their bound."""

    def __init__(self, server: web.Server, header_timeout_s: float, max_connections: int):
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.closed_slow = 0  # closed for not sending headers in time
        self.evicted = 0  # closed to make room
        self._peers: dict[Any, _Peer] = {}
        self._loop = asyncio.get_running_loop()
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._opened(handler)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self._closed(handler)
            lost(handler, exc)

        # the Server is the protocol factory the sites bind; its two hooks see every peer
        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def __len__(self) -> int:
        return len(self._peers)

    def _opened(self, handler: Any) -> None:
        peer = _Peer(self._loop.time())
        self._peers[handler] = peer
        peer.timer = self._loop.call_later(self.header_timeout_s, self._too_slow, handler)
        if len(self._peers) > self.max_connections:
            self._make_room(handler)

    def _closed(self, handler: Any) -> None:
        peer = self._peers.pop(handler, None)
        if peer is not None and peer.timer is not None:
            peer.timer.cancel()

    def _too_slow(self, handler: Any) -> None:
        peer = self._peers.get(handler)
        if peer is not None and peer.served == 0 and peer.busy == 0:
            self.closed_slow += 1
            handler.force_close()

    def _make_room(self, newcomer: Any) -> None:
        idle = [(p.since, id(h), h) for h, p in self._peers.items() if p.busy == 0]
        victim = min(idle)[2] if idle else newcomer
        self.evicted += 1
        if victim is newcomer:
            log.warning("max_connections (%d) busy: a new connection is closed", len(self) - 1)
        victim.force_close()
        self._closed(victim)

    def begin(self, handler: Any) -> None:
        """A request's headers are in: it is under way (called by the middleware)."""
        peer = self._peers.get(handler)
        if peer is not None:
            peer.busy += 1
            if peer.timer is not None:
                peer.timer.cancel()
                peer.timer = None

    def end(self, handler: Any) -> None:
        peer = self._peers.get(handler)
        if peer is not None:
            peer.busy -= 1
            peer.served += 1
            peer.since = self._loop.time()


class PeerLog(logging.LoggerAdapter):
    """aiohttp's server logger: a malformed request is one line and a count, a real error
    keeps its traceback."""

    def __init__(self, metrics: Metrics):
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.metrics = metrics

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, RequestPayloadError):  # the rest of a body already refused
            log.debug("unreadable rest of a refused body: %s", _one_line(exc))
            return
        if isinstance(exc, HttpProcessingError):
            self.metrics.rejections.labels("bad_request").inc()
            peer = f" from {args[0]}" if args and args[0] else ""
            log.info("malformed HTTP request%s refused (400): %s", peer, _one_line(exc))
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """aiohttp's own quiet case (TLS or another protocol sent to the port): one line."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            self.metrics.rejections.labels("bad_request").inc()
            log.debug("not HTTP, refused (400): %s", _one_line(exc))
            return
        self.logger.debug(msg, *args, **kwargs)


def _one_line(exc: BaseException) -> str:
    text = " ".join(x.strip() for x in str(getattr(exc, "message", "") or exc).splitlines())
    return (text or type(exc).__name__)[:300]
