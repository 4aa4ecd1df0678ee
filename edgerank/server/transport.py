"""What the gRPC and HTTP listeners share: Unix sockets born private, TLS files, bearer tokens.

Unix-socket peers are trusted by the socket's file mode (0660: the service's user and group),
so a token is checked only on TCP. A socket is created under umask 0o117, so there is no
window in which others could connect before the chmod.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Iterator
from pathlib import Path

from edgerank.errors import InvalidInput
from edgerank.server.settings import Settings

SOCKET_MODE = 0o660


def socket_path(setting: str) -> Path:
    """'unix:/p', 'unix:///p' or a plain path -> the path."""
    return Path(setting.removeprefix("unix://").removeprefix("unix:"))


@contextlib.contextmanager
def private_socket(path: Path) -> Iterator[Path]:
    """Bind inside the block; the socket is 0660 from birth and after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o117)
    try:
        yield path
    finally:
        os.umask(old)
    if path.exists():
        os.chmod(path, SOCKET_MODE)


def tls_files(settings: Settings) -> tuple[bytes, bytes]:
    """(certificate chain, private key) as PEM bytes, or one clear error."""
    try:
        return Path(settings.tls_cert).read_bytes(), Path(settings.tls_key).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read TLS files: {exc}") from exc


def bearer_ok(expected: bytes, authorization: str) -> bool:
    """An `Authorization: Bearer <token>` value against the configured token, in constant
    time; no token configured lets everyone in."""
    if not expected:
        return True
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), expected)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
