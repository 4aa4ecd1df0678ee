"""The daemon's settings: one schema for `serve` flags, EDGERANK_* variables and the TOML file.

Precedence: flags > environment > file > defaults. The file is /etc/edgerank/edgerank.toml
when it exists (or the one --config / EDGERANK_CONFIG names) and holds top-level keys named
exactly like the fields below; an unknown key is an error, so a typo never passes silently.
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgerank.engine.config import EngineConfig
from edgerank.errors import InvalidInput, SettingsError
from edgerank.server.transport import socket_path, split_host_port

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_CONFIG = Path("/etc/edgerank/edgerank.toml")
ENV_PREFIX = "EDGERANK_"
CONFIG_ENV = "EDGERANK_CONFIG"
BACKENDS = ("auto", "onnx", "gguf", "torch", "biencoder")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _opt(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    listen: str = _opt("127.0.0.1:50051", "TCP address HOST:PORT; empty = no TCP listener")
    socket: str = _opt("", "Unix socket path (mode 0660), e.g. /run/edgerank/edgerank.sock")
    http: str = _opt("", "HTTP listener HOST:PORT (or PORT = on 127.0.0.1); empty = none")
    http_socket: str = _opt("", "HTTP on a Unix socket (mode 0660); empty = none")
    model: str = _opt("", "model name in the store, or a model directory")
    served_model_name: str = _opt(
        "",
        "other names clients may ask for the model by, comma-separated (e.g. rerank-v3.5)",
    )
    backend: str = _opt("auto", f"runtime: {', '.join(BACKENDS)}")
    allow_remote_code: bool = _opt(
        False, "run modelling code a checkpoint ships (torch: the layerwise MiniCPM reranker)"
    )
    threads: int = _opt(0, "inference threads; 0 = every usable core")
    max_batch_tokens: int = _opt(
        0,
        "padded tokens per batch; 0 = the planner's (`probe --calibrate` finds the fastest)",
    )
    max_batch_pairs: int = _opt(
        0,
        "pairs per batch at most; 0 = the planner's cap (none unless one measured faster)",
    )
    batch_wait_ms: float = _opt(2.0, "how long the batcher waits to fill a batch")
    max_queue_pairs: int = _opt(4096, "pairs queued or running at most; beyond = overloaded")
    max_queue_tokens: int = _opt(1 << 20, "tokens queued or running at most; beyond = overloaded")
    max_documents: int = _opt(1000, "documents (or pairs) per request at most")
    max_document_chars: int = _opt(32768, "characters per document (and query) at most")
    max_message_bytes: int = _opt(16 << 20, "bytes per request message (or stream) at most")
    drain_timeout_s: float = _opt(
        30.0, "on SIGTERM, how long in-flight requests may finish (then: UNAVAILABLE / 503)"
    )
    read_timeout_s: float = _opt(30.0, "how long an HTTP client may take to send its body")
    header_timeout_s: float = _opt(
        10.0, "how long a new connection may take to send its headers or finish its handshake"
    )
    idle_timeout_s: float = _opt(
        60.0, "close a connection after this long without a request (keep-alive, gRPC idle)"
    )
    max_connections: int = _opt(
        400, "open connections per face at most (HTTP closes the idlest; gRPC refuses)"
    )
    drain_quiet_s: float = _opt(
        0.5, "on SIGTERM, refuse new calls until none came or ended for this long"
    )
    max_connection_age_s: float = _opt(0.0, "close connections after this age; 0 = never")
    tls_cert: str = _opt("", "PEM certificate for TLS on the TCP listeners (gRPC and HTTP)")
    tls_key: str = _opt("", "PEM private key for TLS on the TCP listeners (gRPC and HTTP)")
    token: str = _opt("", "bearer token TCP clients must send; empty = none", secret=True)
    token_file: str = _opt("", "file holding the bearer token (e.g. a systemd credential)")
    home: str = _opt("", "model store directory; empty = $STATE_DIRECTORY or XDG data dir")
    cache_bytes: int = _opt(32 << 20, "in-process score cache size in bytes (LRU); 0 = off")
    cache_url: str = _opt(
        "",
        "shared score cache: redis://[:PASSWORD@]HOST:6379/0 or unix:///PATH.sock; empty = none",
        secret=True,
    )
    cache_ttl_s: float = _opt(86400.0, "how long a Redis cache entry lives; 0 = until evicted")
    cache_timeout_ms: float = _opt(50.0, "Redis time budget per call; past it, go on without")
    cache_retry_s: float = _opt(10.0, "after a Redis failure, leave Redis alone this long")
    log_level: str = _opt("info", f"log level: {', '.join(LOG_LEVELS)}")
    request_shape: str = _opt(
        "",
        "requests served, NxMIN-MAX tokens: an entry's INT8 or FP32 is picked for it (empty: "
        "as installed)",
    )
    fidelity_sample: float = _opt(
        0.0,
        "share of requests (0..1) rescored in FP32 while idle, to watch INT8; 0 = off",
    )

    def engine(self) -> EngineConfig:
        """The engine's part of the settings."""
        own = {f.name for f in fields(EngineConfig)} - {"served_names"}
        return EngineConfig(
            served_names=tuple(self.served_names()), **{k: getattr(self, k) for k in own}
        )

    def served_names(self) -> list[str]:
        """served_model_name split into names, in order, each once."""
        names = (n.strip() for n in self.served_model_name.split(","))
        return list(dict.fromkeys(n for n in names if n))

    def bearer_token(self) -> str:
        """The token from `token` or `token_file` ('' = no check); one that no client could
        send in a header (empty, whitespace, control or non-ASCII characters) is an error."""
        if self.token:
            return check_token(self.token, "token")
        if self.token_file:
            try:
                text = Path(self.token_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SettingsError(f"token_file: cannot read {self.token_file}: {exc}") from exc
            return check_token(text.strip(), f"token_file {self.token_file}")
        return ""


def check_token(token: str, origin: str) -> str:
    """The token, if every client can send it as `Authorization: Bearer <token>` (visible
    ASCII, no whitespace: gRPC metadata and HTTP headers both carry that); else one line."""
    if not token.strip():
        raise SettingsError(
            f"{origin} is empty: a token protects nothing; set one, or leave token and "
            "token_file unset to serve TCP without authentication"
        )
    for i, char in enumerate(token):
        if not "!" <= char <= "~":
            raise SettingsError(
                f"{origin} holds {char!r} at character {i}: a token must be visible ASCII "
                "(no spaces, line breaks, control or non-ASCII characters) so that clients "
                "can send it in an Authorization header"
            )
    return token


def _types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in fields(Settings)}


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _coerce(name: str, value: Any, kind: type, origin: str) -> Any:
    """Parse a value from a flag, a variable or the file into the field's type."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError(value)
            return int(str(value).strip().replace("_", ""), 0)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)  # a TOML list of names (served_model_name)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(value)
        return str(value)
    except ValueError:
        raise SettingsError(f"{origin}: {name} must be {kind.__name__}, got {value!r}") from None


def _check(s: Settings) -> Settings:
    positive = ("max_queue_pairs", "max_queue_tokens", "max_documents")
    positive += ("max_document_chars", "max_message_bytes", "read_timeout_s")
    positive += ("header_timeout_s", "idle_timeout_s", "max_connections")
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name} must be > 0, got {getattr(s, name)}")
    non_negative = ("threads", "max_batch_tokens", "max_batch_pairs", "batch_wait_ms")
    non_negative += ("drain_timeout_s", "drain_quiet_s", "cache_bytes", "cache_ttl_s")
    non_negative += ("cache_retry_s",)
    for name in non_negative:
        if getattr(s, name) < 0:
            raise SettingsError(f"{name} must be >= 0, got {getattr(s, name)}")
    if not 0.0 <= s.fidelity_sample <= 1.0:
        raise SettingsError(f"fidelity_sample must be within 0..1, got {s.fidelity_sample}")
    if s.cache_timeout_ms <= 0:
        raise SettingsError(f"cache_timeout_ms must be > 0, got {s.cache_timeout_ms}")
    if s.cache_url and s.cache_url.split("://")[0] not in ("redis", "rediss", "unix"):
        raise SettingsError("cache_url must start with redis://, rediss:// or unix://")
    if s.max_connection_age_s < 0:
        raise SettingsError(f"max_connection_age_s must be >= 0, got {s.max_connection_age_s}")
    if s.request_shape:
        from edgerank.models.serving import RequestShape

        try:
            RequestShape.parse(s.request_shape)
        except InvalidInput as exc:
            raise SettingsError(str(exc)) from None
    if s.backend not in BACKENDS:
        raise SettingsError(f"backend must be one of {', '.join(BACKENDS)}, got {s.backend!r}")
    if s.log_level not in LOG_LEVELS:
        raise SettingsError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if not (s.listen or s.socket or s.http or s.http_socket):
        raise SettingsError(
            "nothing to listen on: set listen (TCP) and/or socket (Unix), or http / http_socket"
        )
    if s.listen:
        _address(s.listen, "listen")
    if s.http:
        http_address(s.http)
    _distinct(s)
    if s.backend != "auto" and not s.model:
        raise SettingsError(
            f"backend {s.backend} needs a model: set model (--model NAME or a model directory), "
            "or leave backend at auto to let edgerank choose both"
        )
    if bool(s.tls_cert) != bool(s.tls_key):
        raise SettingsError("TLS needs both tls_cert and tls_key")
    if s.token and s.token_file:
        raise SettingsError("set token or token_file, not both")
    return s


def _distinct(s: Settings) -> None:
    """Two listeners on one address would fail at start-up with "in use", blamed on another
    daemon: name the two settings instead."""
    if s.listen and s.http:
        grpc_host, grpc_port = _address(s.listen, "listen")
        http_host, http_port = http_address(s.http)
        wildcard = {"", "0.0.0.0", "::"}
        overlap = grpc_host == http_host or {grpc_host, http_host} & wildcard
        if grpc_port and grpc_port == http_port and overlap:
            raise SettingsError(
                f"listen ({s.listen}) and http ({s.http}) name the same address: gRPC and "
                "HTTP need a port each"
            )
    if s.socket and s.http_socket:
        if socket_path(s.socket).resolve() == socket_path(s.http_socket).resolve():
            raise SettingsError(
                f"socket and http_socket name the same path ({s.socket}): gRPC and HTTP "
                "need a socket each"
            )


def _address(setting: str, what: str, default_host: str | None = None) -> tuple[str, int]:
    try:
        return split_host_port(setting, what, default_host=default_host)
    except InvalidInput as exc:
        raise SettingsError(str(exc)) from None


def http_address(setting: str) -> tuple[str, int]:
    """(host, port) of the `http` setting; no host means loopback, never every interface."""
    return _address(setting, "http", default_host="127.0.0.1")


def read_file(path: Path) -> dict[str, Any]:
    """The TOML file's keys, validated against the schema (unknown keys are errors)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    types = _types()
    out = {}
    for key, value in data.items():
        if key not in types:
            close = difflib.get_close_matches(key, types, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(f"{path}: unknown setting {key!r}{hint}")
        out[key] = _coerce(key, value, types[key], str(path))
    return out


def load(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config: str | Path | None = None,
) -> Settings:
    """Merge defaults < file < environment < flags. Flags set to None count as unset."""
    flags = dict(flags or {})
    env = os.environ if env is None else env
    config = flags.pop("config", None) or config or env.get(CONFIG_ENV) or None
    types = _types()
    merged: dict[str, Any] = {}
    if config is not None:
        merged.update(read_file(Path(config)))
    elif DEFAULT_CONFIG.is_file():
        merged.update(read_file(DEFAULT_CONFIG))
    for name, kind in types.items():
        if (raw := env.get(env_name(name))) is not None:
            merged[name] = _coerce(name, raw, kind, env_name(name))
    for name, value in flags.items():
        if name not in types:
            raise SettingsError(f"unknown setting {name!r}")
        if value is not None:
            merged[name] = _coerce(name, value, types[name], f"--{name.replace('_', '-')}")
    if flags.get("token") == "":  # --token "" (the file's and environment's "" = unset)
        check_token("", "--token")
    return _check(replace(Settings(), **merged))


def click_options(func: Callable) -> Callable:
    """Decorate a click command with one --option per field (plus --config).

    Every option defaults to None so that load() can tell "not given" from a value and let
    the environment and the file fill the gap (a boolean is a flag, as in `score`, and None
    until given). Each option's variable and file key follow one rule, said once (--config).
    """
    import click

    ctypes = {int: click.INT, float: click.FLOAT, str: click.STRING}
    types = _types()
    for f in reversed(fields(Settings)):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if f.repr and f.default not in ("", 0, 0.0, False):
            help_text += f" [{f.default}]"
        if types[f.name] is bool:
            option = click.option(flag, f.name, is_flag=True, default=None, help=help_text)
        else:
            metavar = {int: "N", float: "X"}.get(types[f.name], "TEXT")
            option = click.option(
                flag, f.name, type=ctypes[types[f.name]], default=None, metavar=metavar,
                help=help_text,
            )  # fmt: skip
        func = option(func)
    return click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False),
        default=None,
        help=f"TOML settings file [{DEFAULT_CONFIG} if present; {CONFIG_ENV}]. Every option "
        f"below is also a variable ({ENV_PREFIX}<NAME>: --max-queue-pairs is "
        f"{env_name('max_queue_pairs')}) and a key of this file (max_queue_pairs); flags win "
        "over variables, variables over the file.",
    )(func)
