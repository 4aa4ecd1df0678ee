"""Signals to a real daemon process (port 0, real sockets): SIGTERM past the drain timeout
answers every open call and exits 0; SIGHUP reloads the token and the TLS files and drops
nothing. The model is the tiny INT8 one behind tests/support/daemon.py's doubles.
"""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import signal
import ssl
import subprocess
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import pytest

from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc
from edgerank.testing import tiny_models
from tests.support.daemon import DaemonProcess

CORPUS = tiny_models.corpus(200, seed=31)


def in_flight(http: str) -> float:
    text = httpx.get(f"{http}/metrics", timeout=30).text
    m = re.search(r"^edgerank_in_flight_requests (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_until(condition, what: str, timeout: float = 120) -> None:
    """Poll `condition`: the deadline is a hang guard, nothing is asserted about time."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.02)


def http_call(base: str, query: str, headers: dict | None = None) -> str:
    """One request on its own connection; the status, or what went wrong instead."""
    body = {"query": query, "documents": CORPUS[:6]}
    try:
        r = httpx.post(f"{base}/v2/rerank", json=body, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        return f"http {type(exc).__name__}"
    r.json()  # every answer is JSON, refusals included
    return f"http {r.status_code}"


def grpc_call(address: str, query: str) -> str:
    stub = pb_grpc.RerankerStub(grpc.insecure_channel(address))
    try:
        stub.Rerank(pb.RerankRequest(query=query, documents=CORPUS[:6]), timeout=120)
    except grpc.RpcError as exc:
        return f"grpc {exc.code().name}"
    return "grpc OK"


def logged_answers(line: str) -> Counter:
    """'stopped after answering 11 requests (grpc OK 2, http 503 9)' -> its counts."""
    return Counter(
        {f"{t} {code}": int(n) for t, code, n in re.findall(r"(grpc|http) (\w+) (\d+)", line)}
    )


# -- SIGTERM ----------------------------------------------------------------------------------


def test_sigterm_past_the_drain_answers_every_open_call_and_exits_0(tiny_onnx_dir, tmp_path):
    """Before: the calls left at the drain deadline were cut (HTTP clients saw the connection
    drop), the process could die with SIGABRT (onnxruntime torn under its running batch),
    and the log's count included the warm-up. Now each open call is answered 503 /
    UNAVAILABLE, the exit is 0, and the log counts what the clients saw."""
    stuck = tmp_path / "stuck"
    daemon = DaemonProcess(
        tmp_path,
        "--model", str(tiny_onnx_dir), "--listen", "127.0.0.1:0", "--socket", "",
        "--http", "127.0.0.1:0", "--drain-timeout-s", "1", "--drain-quiet-s", "0",
        "--cache-bytes", "0",
        TEST_DOUBLE_STUCK=str(stuck),
    )  # fmt: skip
    pool = concurrent.futures.ThreadPoolExecutor(24)
    try:
        daemon.wait_ready()
        seen = Counter([http_call(daemon.http, "before one"), grpc_call(daemon.grpc, "before")])
        assert seen == Counter({"http 200": 1, "grpc OK": 1})
        # a batch that never ends holds the worker inside onnxruntime; 16 calls queue behind
        hung = pool.submit(grpc_call, daemon.grpc, "stuck")
        wait_until(stuck.exists, "the stuck batch began")
        queued = [pool.submit(http_call, daemon.http, f"queued {k}") for k in range(8)]
        queued += [pool.submit(grpc_call, daemon.grpc, f"queued {k}") for k in range(8)]
        wait_until(lambda: in_flight(daemon.http) == 17, "17 calls in flight")
        daemon.send(signal.SIGTERM)
        code = daemon.wait()
        seen.update(f.result(120) for f in [hung, *queued])
    finally:
        pool.shutdown(cancel_futures=True)
        daemon.close()
    log = daemon.text()
    # before: -6 (SIGABRT, the runtime torn under its batch) and dropped connections
    want = Counter({"http 200": 1, "grpc OK": 1, "http 503": 8, "grpc UNAVAILABLE": 9})
    assert (code, seen) == (0, want), f"clients saw {dict(seen)}\n{log}"
    assert "drain timeout: 17 calls still running are answered UNAVAILABLE / 503" in log
    (stopped,) = [
        line for line in log.splitlines() if "stopped after answering 19 requests" in line
    ]
    assert logged_answers(stopped) == seen, stopped
    assert "Traceback" not in log


def test_sigterm_refuses_the_call_a_client_sends_the_moment_its_last_one_is_answered(
    tiny_onnx_dir, tmp_path
):
    """Before: the quiet window ran from the last refusal only, so once the last accepted
    calls were answered the listener closed at once, racing the next call each client sent
    straight away: such a call came back CANCELLED (the deploy checks' lost call) or as a
    connection that could not be made. Now an answer restarts the quiet window, and every
    next call meets the drain's own refusal. The gate holds the calls past the window the
    SIGTERM opened; the window itself (3 s) is each client's time to send its next call."""
    gate = tmp_path / "gate"
    quiet_s, callers = 3.0, 4
    daemon = DaemonProcess(
        tmp_path,
        "--model", str(tiny_onnx_dir), "--listen", "127.0.0.1:0", "--socket", "",
        "--http", "127.0.0.1:0", "--drain-timeout-s", "120", "--drain-quiet-s", str(quiet_s),
        "--cache-bytes", "0",
        TEST_DOUBLE_GATE=str(gate),
    )  # fmt: skip
    pool = concurrent.futures.ThreadPoolExecutor(callers)

    def two_calls(k: int) -> tuple[str, str]:
        """A held call, then at once the next one, on the same connection."""
        stub = pb_grpc.RerankerStub(grpc.insecure_channel(daemon.grpc))
        seen = []
        for query in (f"held {k}", f"next {k}"):
            try:
                stub.Rerank(pb.RerankRequest(query=query, documents=CORPUS[:6]), timeout=120)
                seen.append("OK")
            except grpc.RpcError as exc:
                seen.append(f"{exc.code().name}: {exc.details()}")
        return seen[0], seen[1]

    try:
        daemon.wait_ready()
        gate.touch()  # after the warm-up, which is a batch too
        calls = [pool.submit(two_calls, k) for k in range(callers)]
        wait_until(lambda: in_flight(daemon.http) == callers, f"{callers} calls in flight")
        daemon.send(signal.SIGTERM)
        daemon.wait_log(f"SIGTERM: draining {callers} in-flight calls")
        time.sleep(quiet_s + 0.5)  # the window the SIGTERM opened is over (at least)
        gate.unlink()
        seen = [f.result(120) for f in calls]
        code = daemon.wait()
    finally:
        pool.shutdown(cancel_futures=True)
        daemon.close()
    log = daemon.text()
    assert [held for held, _ in seen] == ["OK"] * callers, log
    # before: "CANCELLED: CANCELLED", or "UNAVAILABLE: failed to connect to all addresses"
    following = [nxt for _, nxt in seen]
    assert all(f.startswith("UNAVAILABLE: the server is draining") for f in following), following
    assert code == 0 and "Traceback" not in log, log


# -- SIGHUP -----------------------------------------------------------------------------------


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def served_certificate(http: str) -> bytes:
    host, port = http.removeprefix("https://").split(":")
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, int(port)), timeout=30))


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def grpc_tls_call(address: str, ca: Path, token: str) -> str:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    stub = pb_grpc.RerankerStub(grpc.secure_channel(address, credentials))
    try:
        stub.Rerank(
            pb.RerankRequest(query="tls", documents=["a"]),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=30,
        )
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def unix_rerank(sock: Path, query: str) -> int:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120) as c:
        r = c.post("http://edgerank/v2/rerank", json={"query": query, "documents": CORPUS[:30]})
    return len(r.json()["results"]) if r.status_code == 200 else -r.status_code


def unix_grpc_rerank(sock: Path, query: str) -> int:
    stub = pb_grpc.RerankerStub(grpc.insecure_channel(f"unix:{sock}"))
    answer = stub.Rerank(pb.RerankRequest(query=query, documents=CORPUS[:30]), timeout=120)
    return len(answer.results)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_sighup_reloads_token_and_tls_files_and_drops_nothing(tiny_onnx_dir, tmp_path):
    """Before: SIGHUP killed the daemon at once (4 of 5 requests lost, the socket file left
    behind). Now it reloads what rotates on disk, answers every call, and says so."""
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    cert, key = self_signed(tmp_path, "old")
    new_cert, new_key = self_signed(tmp_path, "new")
    http_sock, grpc_sock = tmp_path / "http.sock", tmp_path / "grpc.sock"
    gate = tmp_path / "gate"
    daemon = DaemonProcess(
        tmp_path,
        "--model", str(tiny_onnx_dir), "--listen", "127.0.0.1:0", "--socket", str(grpc_sock),
        "--http", "127.0.0.1:0", "--http-socket", str(http_sock), "--token-file",
        str(token_file), "--tls-cert", str(cert), "--tls-key", str(key), "--max-batch-tokens",
        "256", "--cache-bytes", "0",
        TEST_DOUBLE_GATE=str(gate),
    )  # fmt: skip
    pool = concurrent.futures.ThreadPoolExecutor(6)
    try:
        daemon.wait_ready()
        trusted = ssl.create_default_context(cafile=str(cert))
        health = httpx.get(f"{daemon.http}/health", verify=trusted, timeout=30)
        assert health.status_code == 200
        gate.touch()  # the worker holds every batch until the gate opens
        calls = [pool.submit(unix_rerank, http_sock, f"hup {k}") for k in range(3)]
        calls += [pool.submit(unix_grpc_rerank, grpc_sock, f"hup grpc {k}") for k in range(2)]
        wait_until(lambda: in_flight_unix(http_sock) == 5, "5 calls in flight")
        # the files rotate on disk, then the operator (or systemctl reload) sends SIGHUP
        token_file.write_text("second-token\n")
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)
        daemon.send(signal.SIGHUP)
        line = daemon.wait_log("SIGHUP")
        assert "reloaded: token changed, TLS certificate changed" in line, line
        assert in_flight_unix(http_sock) == 5  # the reload touched no call
        gate.unlink()
        assert [f.result(120) for f in calls] == [30] * 5  # nothing dropped
        daemon.notify.wait_for("RELOADING=1")
        daemon.notify.wait_for("READY=1")
        assert daemon.proc.poll() is None

        assert served_certificate(daemon.http) == der(new_cert)
        assert grpc_tls_call(daemon.grpc, new_cert, "second-token") == "OK"
        assert grpc_tls_call(daemon.grpc, new_cert, "first-token") == "UNAUTHENTICATED"
        new_trust = ssl.create_default_context(cafile=str(new_cert))
        for token, status in (("first-token", 401), ("second-token", 200)):
            r = httpx.post(
                f"{daemon.http}/v2/rerank",
                json={"query": "q", "documents": ["a"]},
                headers={"Authorization": f"Bearer {token}"},
                verify=new_trust,
                timeout=30,
            )
            assert r.status_code == status, r.text

        # a token file emptied by mistake is refused: the old token stays, the log says why
        token_file.write_text("\n")
        daemon.send(signal.SIGHUP)
        refused = daemon.wait_log("reload refused")
        assert f"token_file {token_file} is empty" in refused, refused
        assert grpc_tls_call(daemon.grpc, new_cert, "second-token") == "OK"

        daemon.send(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.text()
    finally:
        pool.shutdown(cancel_futures=True)
        daemon.close()
    assert not http_sock.exists() and not grpc_sock.exists()
    assert len([x for x in daemon.text().splitlines() if "SIGHUP" in x]) == 2


def in_flight_unix(sock: Path) -> float:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as c:
        text = c.get("http://edgerank/metrics").text
    m = re.search(r"^edgerank_in_flight_requests (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0
