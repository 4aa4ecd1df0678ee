"""A loopback stand-in for the Hugging Face hub's file API, so the real download code
(huggingface_hub.hf_hub_download / snapshot_download) runs offline in tests.

Serves <root>/<org>/<repo>/<path> at /<org>/<repo>/resolve/<rev>/<path> with the headers
the client reads (X-Repo-Commit, ETag, Content-Length), plus /api/models/<org>/<repo>
[/revision/<rev>] for snapshots. Anything else is a 404 with the hub's error header.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(f"{h.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = self.root / parts[2] / parts[3]
            if not repo.is_dir():
                return self._not_found(h, "RepoNotFound")
            files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
            data = json.dumps(
                {
                    "id": f"{parts[2]}/{parts[3]}",
                    "sha": COMMIT,
                    "siblings": [{"rfilename": f} for f in files],
                }
            ).encode()
            return self._send(h, data, {"Content-Type": "application/json"}, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self.root / parts[0] / parts[1]
            if not repo.is_dir():
                return self._not_found(h, "RepoNotFound")
            f = repo.joinpath(*parts[4:])
            if not f.is_file():
                return self._not_found(h, "EntryNotFound")
            data = f.read_bytes()
            etag = hashlib.sha256(data).hexdigest()
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}
            return self._send(h, data, headers, body)
        return self._not_found(h, "RepoNotFound")

    @staticmethod
    def _send(h, data: bytes, headers: dict[str, str], body: bool) -> None:
        h.send_response(200)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _not_found(h, code: str) -> None:
        h.send_response(404)
        h.send_header("X-Error-Code", code)
        h.send_header("Content-Length", "0")
        h.end_headers()
