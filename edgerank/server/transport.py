"""What the gRPC and HTTP listeners share: addresses, Unix sockets, TLS files, bearer tokens.

Unix-socket peers are trusted by the socket's file mode (0660: the service's user and group),
so a token is checked only on TCP. A socket is created under umask 0o117, so there is no
window in which others could connect before the chmod.

Unix sockets: gRPC core and asyncio both unlink whatever socket file sits at the path before
they bind, so a second daemon given the same --socket silently takes a live socket from the
first, and deletes it on exit. `claim_socket` therefore connects first: a socket somebody
answers on is refused (one line, exit 1), a stale file nobody listens on is replaced, and
anything that is not a socket is left alone. At exit a daemon removes the path only while
it is still the very file it bound (same device and inode), never a successor's; gRPC
unlinks its path when it stops, so a successor's file is hard-linked aside around that.

TCP: grpc binds with SO_REUSEPORT unless told otherwise, so two daemons could share one
port and split its traffic; both transports bind without it (`grpc.so_reuseport` = 0,
aiohttp's reuse_port=False) and a port in use is an error.

TLS: grpc only says "Failed to bind to address" when the certificate and the key do not
belong together; the pair is loaded by Python's ssl first, so the error says what is wrong.
Both the token and the TLS pair are held in one object each that both faces share, so a
SIGHUP reload (server/reload.py) swaps them for both at once; a call already admitted is
never looked at again.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import os
import re
import socket
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerank.errors import EdgerankError, InvalidInput

if TYPE_CHECKING:
    from edgerank.server.settings import Settings

SOCKET_MODE = 0o660
#: on shutdown, after the drain, seconds answers being written get before connections close
FLUSH_S = 0.4


# -- TCP addresses ---------------------------------------------------------------------


def split_host_port(setting: str, what: str, *, default_host: str | None = None) -> tuple[str, int]:
    """(host, port) of a HOST:PORT setting; the port must be 0..65535 (0 = any free one).

    `default_host`: the host when the setting is a bare PORT (None = a host is required).
    """
    text = setting.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    hint = " (use http_socket for Unix)" if what == "http" else " (use socket for Unix)"
    if host.startswith("unix") or text.startswith("unix"):
        raise InvalidInput(f"{what} must be HOST:PORT, got {setting!r}{hint}")
    if not sep and default_host is None:
        raise InvalidInput(f"{what} must be HOST:PORT, got {setting!r}{hint}")
    if port.startswith("-") and port[1:].isdigit():
        raise InvalidInput(f"{what}: port {port} is out of range (0-65535; 0 = any free port)")
    if not port.isdigit():
        raise InvalidInput(f"{what} must be HOST:PORT with a numeric port, got {setting!r}{hint}")
    number = int(port)
    if number > 65535:
        raise InvalidInput(f"{what}: port {number} is out of range (0-65535; 0 = any free port)")
    host = host.strip("[]") or (default_host or "")
    return host, number


def unix_peer(connection: Any) -> bool:
    """Is this asyncio transport's peer on a Unix socket (trusted by the file mode)?"""
    sock = connection.get_extra_info("socket") if connection is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_in_use_reason(host: str, port: int) -> str:
    """Why binding host:port failed, as far as a plain bind can tell ('' = no idea)."""
    if port == 0:
        return ""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host!r}: {exc}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "the port is already in use (another edgerank daemon?)"
                return exc.strerror or str(exc)
    return ""


# -- Unix sockets ----------------------------------------------------------------------


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


@dataclass(frozen=True)
class BoundSocket:
    """A Unix socket file this process bound: removed at exit only if it is still ours."""

    path: Path
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> BoundSocket:
        st = path.lstat()
        return cls(path, st.st_dev, st.st_ino)

    def ours(self) -> bool:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (self.device, self.inode)

    def shelter(self) -> Path | None:
        """Before gRPC stops (it unlinks its socket path whatever is there by then): a
        successor's socket at the path is hard-linked aside, for `restore` to put back."""
        if self.ours() or not self.path.exists():
            return None
        aside = self.path.with_name(f".{self.path.name}.{os.getpid()}.keep")
        try:
            os.link(self.path, aside)
        except OSError:
            return None
        return aside

    def restore(self, aside: Path | None) -> None:
        if aside is None:
            return
        if self.path.exists():
            aside.unlink(missing_ok=True)
        else:
            os.replace(aside, self.path)

    def release(self) -> bool:
        """Unlink the socket file if it is still the one this process bound."""
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return False
        if (st.st_dev, st.st_ino) != (self.device, self.inode):
            return False  # replaced since: another daemon's socket now
        self.path.unlink(missing_ok=True)
        return True


def claim_socket(path: Path, what: str = "socket") -> None:
    """Make `path` free to bind: refuse a live socket or a non-socket, clear a stale one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise EdgerankError(f"cannot listen on {what} {path}: the path exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # stale: nobody listens there any more
            return
        except OSError as exc:
            raise EdgerankError(f"cannot listen on {what} {path}: {exc.strerror or exc}") from exc
    raise EdgerankError(
        f"cannot listen on {what} {path}: another process is listening on it "
        "(another edgerank daemon?)"
    )


# -- TLS -------------------------------------------------------------------------------


def tls_files(settings: Settings) -> tuple[bytes, bytes]:
    """(certificate chain, private key) as PEM bytes, checked to belong together, or one
    clear error."""
    return _pem_pair(settings.tls_cert, settings.tls_key)


def _pem_pair(cert_file: str, key_file: str) -> tuple[bytes, bytes]:
    try:
        cert = Path(cert_file).read_bytes()
        key = Path(key_file).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read TLS files: {exc}") from exc
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise InvalidInput(f"tls_cert {cert_file} holds no PEM certificate (BEGIN CERTIFICATE)")
    if not re.search(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----", key):
        raise InvalidInput(f"tls_key {key_file} holds no PEM private key (BEGIN ... PRIVATE KEY)")
    if b"ENCRYPTED" in key:
        raise InvalidInput(
            f"tls_key {key_file} is encrypted: the daemon cannot ask for a passphrase; "
            "give it the key unencrypted (readable by the service's user only)"
        )
    _load_pair(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), cert_file, key_file)
    return cert, key


def _no_passphrase() -> bytes:
    raise InvalidInput("the key is encrypted")  # never prompt on a terminal


def _load_pair(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load the pair into `context`; every failure is one line naming the file at fault."""
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except ssl.SSLError as exc:
        text = f"{exc.reason or ''} {exc}".lower()
        if "key_values_mismatch" in text or "mismatch" in text:
            raise InvalidInput(
                f"tls_key {key_file} does not match tls_cert {cert_file}: "
                "they are not one certificate's pair"
            ) from None
        raise InvalidInput(
            f"cannot use TLS files {cert_file} / {key_file}: the certificate or the key is "
            f"damaged or not PEM ({exc.reason or 'unreadable'})"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read TLS files: {exc}") from exc


def server_context(settings: Settings) -> ssl.SSLContext:
    """An SSL server context with the pair loaded; a mismatch is named as such."""
    _pem_pair(settings.tls_cert, settings.tls_key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_pair(context, settings.tls_cert, settings.tls_key)
    return context


class TlsPair:
    """The certificate and key both TCP listeners serve. `reload` checks a new pair whole
    before it swaps it in; new handshakes then get it (gRPC asks `fetch` on each one, the
    HTTP context is reloaded in place), connections already open keep theirs."""

    def __init__(self, cert_file: str, key_file: str):
        self.cert_file, self.key_file = cert_file, key_file
        self.pem = _pem_pair(cert_file, key_file)
        self.generation = 0
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        """The HTTP face's server context (one, reloaded in place)."""
        if self._context is None:
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            _load_pair(self._context, self.cert_file, self.key_file)
        return self._context

    def reload(self, cert_file: str, key_file: str) -> bool:
        """Read the pair again (maybe from new paths); True when it changed. Raises, with
        nothing changed, when the new pair is unusable."""
        pem = _pem_pair(cert_file, key_file)
        if pem == self.pem and (cert_file, key_file) == (self.cert_file, self.key_file):
            return False
        if self._context is not None:
            _load_pair(self._context, cert_file, key_file)
        self.cert_file, self.key_file, self.pem = cert_file, key_file, pem
        self.generation += 1
        return True


# -- bearer token ----------------------------------------------------------------------


class Token:
    """The bearer token TCP clients must send ('' = none), one object both faces check."""

    def __init__(self, token: str = ""):
        self.value = token.encode()

    def ok(self, authorization: str) -> bool:
        return bearer_ok(self.value, authorization)


def bearer_ok(expected: bytes, authorization: str) -> bool:
    """An `Authorization: Bearer <token>` value against the configured token, in constant
    time; no token configured lets everyone in."""
    if not expected:
        return True
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), expected)
