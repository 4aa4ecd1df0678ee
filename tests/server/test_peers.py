"""Slow, idle and malformed peers against a real daemon process (port 0, real sockets):
headers that never finish, gRPC connections that never send their preface, idle keep-alive,
more connections than the bound; serving goes on meanwhile. And malformed HTTP requests are
one log line each, not a traceback.
"""

from __future__ import annotations

import logging
import socket
import time

import grpc
import httpx
import pytest

from edgerank.backends.onnx import OnnxBackend
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc
from tests.server.test_http import HttpServerThread, http_settings, scrape, value
from tests.support.daemon import DaemonProcess


def host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def closed_by_server(sock: socket.socket, timeout: float = 120) -> bool:
    """Read until the server closes (what it sends before is ignored); False if it never
    does within `timeout` (a hang guard: the settings under test are a few seconds)."""
    sock.settimeout(timeout)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def rerank_ok(daemon: DaemonProcess) -> None:
    r = httpx.post(f"{daemon.http}/v2/rerank", json={"query": "q", "documents": ["a"]}, timeout=60)
    assert r.status_code == 200, r.text
    stub = pb_grpc.RerankerStub(grpc.insecure_channel(daemon.grpc))
    assert len(stub.Rerank(pb.RerankRequest(query="q", documents=["a"]), timeout=60).results) == 1


@pytest.fixture
def daemon(tiny_onnx_dir, tmp_path):
    d = DaemonProcess(
        tmp_path,
        "--model", str(tiny_onnx_dir), "--listen", "127.0.0.1:0", "--socket", "",
        "--http", "127.0.0.1:0", "--header-timeout-s", "1", "--idle-timeout-s", "2",
        "--max-connections", "40",
    )  # fmt: skip
    try:
        yield d.wait_ready()
    finally:
        d.close()


def test_slow_headers_and_silent_grpc_peers_are_closed_while_serving_goes_on(daemon):
    """Before: 1000 HTTP connections trickling headers and 200 gRPC connections that never
    sent a preface were all still open 45 s later (aiohttp has no header timeout; gRPC's
    handshake timeout was 120 s and idle connections were never closed)."""
    slow_http = []
    for _ in range(30):
        s = socket.create_connection(host_port(daemon.http), timeout=60)
        s.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Le")  # ... and no more
        slow_http.append(s)
    silent_grpc = [socket.create_connection(host_port(daemon.grpc), timeout=60) for _ in range(30)]
    try:
        rerank_ok(daemon)  # serving goes on beside them (on fresh connections)
        assert all(closed_by_server(s) for s in slow_http)
        assert all(closed_by_server(s) for s in silent_grpc)
        rerank_ok(daemon)
    finally:
        for s in slow_http + silent_grpc:
            s.close()


def test_idle_keep_alive_connections_are_closed(daemon):
    with socket.create_connection(host_port(daemon.http), timeout=60) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        assert closed_by_server(s)  # idle_timeout_s after the answer
    channel = grpc.insecure_channel(daemon.grpc)
    stub = pb_grpc.RerankerStub(channel)
    stub.Rerank(pb.RerankRequest(query="q", documents=["a"]), timeout=60)
    states: list[grpc.ChannelConnectivity] = []
    channel.subscribe(states.append)
    end = time.monotonic() + 120
    while grpc.ChannelConnectivity.IDLE not in states[1:]:  # the server's GOAWAY on idle
        assert time.monotonic() < end, states
        time.sleep(0.05)
    channel.close()


def test_past_max_connections_the_longest_idle_gives_way(tiny_onnx_dir, tmp_path):
    """40 connections per face at most: 60 silent HTTP ones cannot lock a real client out, and
    gRPC refuses the 41st. The header timeout is far away here: what closes them is the bound."""
    daemon = DaemonProcess(
        tmp_path,
        "--model", str(tiny_onnx_dir), "--listen", "127.0.0.1:0", "--socket", "",
        "--http", "127.0.0.1:0", "--header-timeout-s", "3600", "--max-connections", "40",
    )  # fmt: skip
    silent: list[socket.socket] = []
    try:
        daemon.wait_ready()
        for _ in range(60):
            silent.append(socket.create_connection(host_port(daemon.http), timeout=60))
        r = httpx.post(f"{daemon.http}/v2/rerank", json={"query": "q", "documents": ["a"]})
        assert r.status_code == 200, r.text
        assert all(closed_by_server(s, timeout=60) for s in silent[:21])  # 20, then 1 more
        # gRPC: past the bound a newcomer is refused (the ones in keep their place)
        grpc_silent = [socket.create_connection(host_port(daemon.grpc), 60) for _ in range(45)]
        silent += grpc_silent
        assert all(closed_by_server(s, timeout=60) for s in grpc_silent[40:])
    finally:
        for s in silent:
            s.close()
        daemon.close()


# -- malformed requests -----------------------------------------------------------------------

MALFORMED = [
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # request line too long
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 10_000 + b"\r\n\r\n",  # header too long
    b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS sent to plain HTTP
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
]


def test_malformed_requests_are_one_line_each_not_tracebacks(tiny_onnx_dir, tmp_path, caplog):
    server = HttpServerThread(http_settings(tmp_path))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        before = scrape(server)
        with caplog.at_level(logging.DEBUG):
            for payload in MALFORMED * 5:
                with socket.create_connection(("127.0.0.1", server.http.tcp[1]), 60) as s:
                    s.sendall(payload)
                    closed_by_server(s, timeout=60)
        after = scrape(server)
    finally:
        server.close()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    lines = [r for r in caplog.records if "refused (400)" in r.getMessage()]
    refused = value(after, "edgerank_rejections_total", reason="bad_request") - value(
        before, "edgerank_rejections_total", reason="bad_request"
    )
    assert refused == len(lines) == len(MALFORMED) * 5  # one line and one count each
    assert all("\n" not in r.getMessage() for r in lines)
