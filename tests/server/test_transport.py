"""Listeners shared by gRPC and HTTP: a live port or socket is never shared or stolen, a stale
socket is replaced, a daemon removes only its own socket, ports are in range, TLS pairs match.

The "second daemon" is the real entry point in a subprocess against a real first server; it
fails at bind time, before any model is loaded, so nothing here waits on a model or a clock.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from edgerank.backends.onnx import OnnxBackend
from edgerank.errors import EdgerankError, InvalidInput, SettingsError
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc
from edgerank.server import transport
from edgerank.server.settings import Settings, load
from tests.server.test_daemon import Notifications, clean_env, stop
from tests.server.test_http import HttpServerThread, http_settings
from tests.server.test_server import ServerThread, settings_for

ROOT = Path(__file__).resolve().parents[2]


def second_daemon(model_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "edgerank.server.daemon",
        "--model",
        str(model_dir),
        "--threads",
        "1",
    ]
    return subprocess.run(
        [*cmd, *flags], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line or "Traceback" in line]


def rerank_ok(address: str) -> None:
    stub = pb_grpc.RerankerStub(grpc.insecure_channel(address))
    resp = stub.Rerank(pb.RerankRequest(query="cat", documents=["cat dog", "ocean"]), timeout=30)
    assert len(resp.results) == 2


@pytest.fixture
def first(tiny_onnx_dir, tmp_path):
    """A serving daemon (gRPC on TCP and a socket, HTTP on TCP and a socket)."""
    server = HttpServerThread(http_settings(tmp_path))
    server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
    yield server
    server.close()


# -- a second daemon --------------------------------------------------------------------


def test_a_second_daemon_on_a_live_grpc_port_exits_1_with_one_line(first, tiny_onnx_dir):
    done = second_daemon(tiny_onnx_dir, "--listen", first.tcp, "--socket", "")
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done.stderr)
    assert f"cannot listen on {first.tcp}" in line and "in use" in line
    rerank_ok(first.tcp)  # the first one still owns its port


def test_a_busy_grpc_port_is_the_only_line(first, tiny_onnx_dir):
    """Before: gRPC core printed its own "E... add_port.cc" line ahead of ours."""
    done = second_daemon(tiny_onnx_dir, "--listen", first.tcp, "--socket", "")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "in use" in lines[0], done.stderr


def test_a_second_daemon_on_a_live_http_port_exits_1(first, tiny_onnx_dir, tmp_path):
    host, port = first.http.tcp
    flags = ("--listen", "", "--socket", str(tmp_path / "b.sock"), "--http", f"{host}:{port}")
    done = second_daemon(tiny_onnx_dir, *flags)
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done.stderr)
    assert "cannot listen for HTTP" in line
    assert not (tmp_path / "b.sock").exists()  # its own gRPC socket was cleaned up


@pytest.mark.parametrize("which", ["socket", "http-socket"])
def test_a_second_daemon_on_a_live_socket_exits_1_and_leaves_it(first, tiny_onnx_dir, which):
    path = first.listening.socket_path if which == "socket" else first.http.socket_path
    flags = ["--listen", ""]
    flags += ["--socket", str(path)] if which == "socket" else ["--http-socket", str(path)]
    if which == "http-socket":
        flags += ["--socket", str(path.parent / "other.sock")]
    done = second_daemon(tiny_onnx_dir, *flags)
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done.stderr)
    assert "another process is listening" in line
    rerank_ok(first.unix)  # both sockets of the first daemon still answer
    with first.unix_client() as client:
        assert client.get("/health").status_code == 200


def test_a_stale_socket_file_is_replaced(tiny_onnx_dir, tmp_path):
    path = tmp_path / "edgerank.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves behind
    assert path.is_socket()
    server = ServerThread(settings_for(tmp_path, listen=""))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        rerank_ok(server.unix)
    finally:
        server.close()


def test_a_path_that_is_not_a_socket_is_left_alone(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_text("data")
    with pytest.raises(EdgerankError, match="not a socket"):
        transport.claim_socket(path)
    assert path.read_text() == "data"


def test_a_daemon_removes_only_its_own_socket(tiny_onnx_dir, tmp_path):
    """Its socket replaced behind its back (a successor), the daemon leaves the new one."""
    sock = tmp_path / "edgerank.sock"
    notify = Notifications(tmp_path / "notify.sock")
    cmd = [sys.executable, "-m", "edgerank.server.daemon", "--model", str(tiny_onnx_dir)]
    cmd += ["--socket", str(sock), "--listen", "", "--threads", "1"]
    env = clean_env(NOTIFY_SOCKET=str(notify.path))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        notify.wait_for("READY=1")
        sock.unlink()
        successor.bind(str(sock))
        successor.listen()
        proc.send_signal(signal.SIGTERM)
        code, err = stop(proc)
        assert code == 0, err
        assert sock.is_socket()  # still there: not the daemon's to remove
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(sock))
        probe.close()
    finally:
        stop(proc)
        successor.close()
        notify.close()


def test_bound_socket_release_checks_identity(tmp_path):
    path = tmp_path / "s.sock"
    mine = socket.socket(socket.AF_UNIX)
    mine.bind(str(path))
    bound = transport.BoundSocket.of(path)
    assert bound.release() and not path.exists()
    theirs = socket.socket(socket.AF_UNIX)
    theirs.bind(str(path))
    assert not bound.release() and path.exists()
    mine.close()
    theirs.close()


# -- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
@pytest.mark.parametrize("key", ["listen", "http"])
def test_out_of_range_ports_are_refused_by_name(key, port):
    with pytest.raises(SettingsError, match=rf"{key}: port {port} is out of range"):
        load({key: f"127.0.0.1:{port}", "socket": "/tmp/x.sock"}, env={}, config="/dev/null")


def test_edges_of_the_port_range_are_fine():
    assert transport.split_host_port("127.0.0.1:0", "listen") == ("127.0.0.1", 0)
    assert transport.split_host_port("[::1]:65535", "listen") == ("::1", 65535)
    with pytest.raises(InvalidInput, match="HOST:PORT"):
        transport.split_host_port("50051", "listen")  # gRPC's listen needs a host


def test_serve_with_an_out_of_range_port_is_one_line_exit_1(tmp_path):
    cmd = [sys.executable, "-m", "edgerank", "serve", "--listen", "127.0.0.1:99999"]
    done = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "edgerank: error: listen: port 99999 is out of range (0-65535; 0 = any free port)"
    ]


def test_grpc_on_every_interface_without_a_token_warns(tiny_onnx_dir, tmp_path, caplog):
    server = ServerThread(settings_for(tmp_path, listen="0.0.0.0:0", socket=""))
    server.close()
    assert any("gRPC on 0.0.0.0:0 without a token" in r.message for r in caplog.records)
    caplog.clear()
    server = ServerThread(settings_for(tmp_path, listen="0.0.0.0:0", socket="", token="t"))
    server.close()
    assert not any("without a token" in r.message for r in caplog.records)


# -- TLS ---------------------------------------------------------------------------------


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_certificate_and_a_key_that_do_not_match_say_so(tmp_path, tiny_onnx_dir):
    cert_a, _ = _self_signed(tmp_path, "a")
    _, key_b = _self_signed(tmp_path, "b")
    with pytest.raises(InvalidInput, match="does not match"):
        transport.server_context(Settings(tls_cert=str(cert_a), tls_key=str(key_b)))
    flags = ("--listen", "127.0.0.1:0", "--socket", "", "--tls-cert", str(cert_a))
    done = second_daemon(tiny_onnx_dir, *flags, "--tls-key", str(key_b))
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done.stderr)
    assert f"tls_key {key_b} does not match tls_cert {cert_a}" in line


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("junk", [b"", b"not a key\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_a_junk_tls_key_is_named_in_one_line(tmp_path, tiny_onnx_dir, junk):
    """Before: "[SSL] PEM lib (_ssl.c:3926)", naming neither file nor fault."""
    cert, key = _self_signed(tmp_path, "a")
    key.write_bytes(junk)
    with pytest.raises(InvalidInput, match=f"tls_key {key}|{key}") as err:
        transport.server_context(Settings(tls_cert=str(cert), tls_key=str(key)))
    assert "PEM lib" not in str(err.value) and "_ssl.c" not in str(err.value)
    flags = ("--listen", "127.0.0.1:0", "--socket", "", "--tls-cert", str(cert))
    done = second_daemon(tiny_onnx_dir, *flags, "--tls-key", str(key))
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done.stderr)
    assert str(key) in line and "_ssl.c" not in line


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_an_encrypted_tls_key_is_refused_without_a_prompt(tmp_path):
    cert, key = _self_signed(tmp_path, "a")
    locked = tmp_path / "locked.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:x", "-out", str(locked)],
        check=True, capture_output=True,
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="is encrypted"):
        transport.server_context(Settings(tls_cert=str(cert), tls_key=str(locked)))
