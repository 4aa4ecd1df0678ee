"""A real daemon for the interop suite: `python -m edgerank.server.daemon` on port 0 (gRPC
and HTTP), the tiny INT8 model, a bearer token, and the model names clients default to served
as aliases. The clients under test are the real libraries, unmodified, each pointed at it."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server.test_daemon import Notifications, clean_env, stop

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "interop-s3cret"
#: what the clients send by default, or what their docs show
ALIASES = (
    "rerank-v3.5",
    "rerank-english-v3.0",
    "jina-reranker-v2-base-multilingual",
    "BAAI/bge-reranker-base",
)


@dataclass
class Daemon:
    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT
    token: str
    model_dir: Path
    log: list[str]


def _logged(log: list[str], text: str, reader: threading.Thread) -> str:
    """The first stderr line holding ``text``. READY=1 comes through the notify socket, the
    log through a pipe this process reads on another thread: the daemon wrote the line
    before READY, but the reader may not have appended it yet (issue 31, item 12), so wait
    for it, or for the pipe to close."""
    while True:
        line = next((ln for ln in log if text in ln), None)
        if line is not None:
            return line
        if not reader.is_alive():
            raise AssertionError(f"the daemon never logged {text!r}: {''.join(log)}")
        reader.join(0.05)


@pytest.fixture(scope="package")
def daemon(tiny_onnx_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interop")
    notify = Notifications(tmp / "notify.sock")
    cmd = [sys.executable, "-m", "edgerank.server.daemon", "--model", str(tiny_onnx_dir)]
    cmd += ["--listen", "127.0.0.1:0", "--socket", "", "--http", "127.0.0.1:0"]
    cmd += ["--token", TOKEN, "--threads", "1", "--served-model-name", ",".join(ALIASES)]
    env = clean_env(NOTIFY_SOCKET=str(notify.path))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        notify.wait_for("READY=1", timeout=120)
        listening = _logged(log, "listening on", reader)
        grpc_port = re.search(r"tcp port (\d+)", listening).group(1)
        http = re.search(r"(http://127\.0\.0\.1:\d+)", listening).group(1)
        yield Daemon(http, f"127.0.0.1:{grpc_port}", TOKEN, tiny_onnx_dir, log)
    finally:
        proc.stderr = None  # the reader thread owns it
        stop(proc)
        notify.close()
    assert proc.returncode == 0, "".join(log)
    assert not [line for line in log if "Traceback" in line], "".join(log)
