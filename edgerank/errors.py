"""Domain errors. No transport imports here: server/status.py maps these to gRPC/HTTP codes.

Each error carries a message a person can act on; the CLI prints it as one line.
"""

from __future__ import annotations


class EdgerankError(Exception):
    """Base of every error edgerank raises on purpose."""


class InvalidInput(EdgerankError):
    """The request itself is wrong (empty query, bad top_n, unknown model name...)."""


class TooLarge(InvalidInput):
    """The request exceeds a configured limit (documents, characters, message size)."""


class EmptyInput(InvalidInput):
    """Nothing to score: no documents (or texts, or pairs) in the request."""


class ReadTimeout(InvalidInput):
    """The client did not send its whole request within the read timeout."""


class Overloaded(EdgerankError):
    """Admission control refused the work: the queue of pairs or tokens is full."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(EdgerankError):
    """The service is loading or draining; try again later or elsewhere."""


class ModelNotFound(InvalidInput):
    """A model name that is not in the catalog or not in the store."""


class ModelCorrupt(EdgerankError):
    """A model directory that fails its manifest check (missing file, bad sha256)."""


class BackendUnavailable(EdgerankError):
    """A backend whose runtime is not installed (names the pip extra) or cannot start."""


class BelowFidelityFloor(EdgerankError):
    """A quantized model that ranks unlike its FP32 original on the probe: not installed
    unless the user opts in (--allow-below-floor)."""


class TooLittleMemory(EdgerankError):
    """An install this box cannot hold, refused before it starts (it names the route that
    can: quantize on a bigger box, carry the archive)."""


class BackendFailure(EdgerankError):
    """The runtime failed while scoring: a bug or a broken model, not the caller's fault."""


class CatalogError(EdgerankError):
    """models.toml is missing, unreadable or has an invalid entry (one line, names the field)."""


class SettingsError(EdgerankError):
    """A setting that cannot be parsed or is out of range; names where it came from."""


class HubUnreachable(EdgerankError):
    """No network, or the hub/mirror did not answer."""


class Expired(EdgerankError):
    """The job's deadline passed before all its items ran; the rest were dropped."""


class Cancelled(EdgerankError):
    """The caller gave up on the job; its queued items were dropped."""


#: pip extra -> the modules it brings that edgerank imports (found, never imported, here)
EXTRA_MODULES = {
    "quantize": ("onnx", "onnx_ir"),
    "convert": ("torch", "transformers"),
    "gguf": ("llama_cpp",),
    "cuda": ("torch", "transformers"),
    "redis": ("redis",),
}
#: extras that bring others: one name in a pip command is enough
_BRINGS = {"convert": ("quantize",)}


def extras_here() -> frozenset[str]:
    """The extras installed here, found without importing them (torch alone costs seconds)."""
    from importlib.util import find_spec

    return frozenset(
        extra for extra, mods in EXTRA_MODULES.items() if all(find_spec(m) for m in mods)
    )


def pip_extras(extras) -> str:
    """`pip install 'edgerank[a,b]'` for the fewest extras that bring all of ``extras``."""
    wanted = set(extras)
    for big, small in _BRINGS.items():
        if big in wanted:
            wanted -= set(small)
    return f"pip install 'edgerank[{','.join(sorted(wanted))}]'"


def require_extras(what: str, extras, also: str = "") -> None:
    """One refusal naming every extra ``what`` needs that is missing, before any work."""
    missing = sorted(set(extras) - extras_here())
    if missing:
        names = " and ".join(f"`{m}`" for m in missing)
        raise BackendUnavailable(
            f"{what} needs the {names} extra{'s' if len(missing) > 1 else ''}: "
            f"{pip_extras(missing)}{also}"
        )


def missing_extra(module: str, extra: str, also: str = "") -> BackendUnavailable:
    """The one-line error for an optional dependency that is not installed."""
    return BackendUnavailable(
        f"{module} is not installed: install the extra with `pip install 'edgerank[{extra}]'`"
        + also
    )
