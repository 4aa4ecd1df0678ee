"""Downloads from the Hugging Face hub (or a mirror: EDGERANK_HUB_ENDPOINT / HF_ENDPOINT).

huggingface_hub gives resumable downloads, progress bars and its shared cache; edgerank
then copies what it needs into its own store, so the store never points into a cache that
`huggingface-cli delete-cache` could empty.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from edgerank.errors import BackendUnavailable, HubUnreachable, ModelNotFound


def endpoint() -> str | None:
    return os.environ.get("EDGERANK_HUB_ENDPOINT") or None


def _cache_dir() -> str | None:
    """huggingface_hub reads HF_HOME once at import; read it per call so settings apply."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return cache
    if hf_home := os.environ.get("HF_HOME"):
        return str(Path(hf_home) / "hub")
    return None


def check_reachable(timeout_s: float = 5.0) -> None:
    """Fail in seconds when offline: huggingface_hub retries a refused connection for ~25 s."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise HubUnreachable("HF_HUB_OFFLINE=1 is set: no downloads")
    url = urlparse(endpoint() or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise HubUnreachable(
            f"cannot reach {url.hostname}:{port} ({exc.strerror or exc}); offline? "
            "set EDGERANK_HUB_ENDPOINT for a mirror, or `edgerank import` an `edgerank export` "
            "archive made on a box that reaches it"
        ) from None


def fetch(
    repo: str, files: Iterable[str], dest: Path, revision: str | None = None
) -> dict[str, object]:
    """Download `files` of `repo` into dest (keeping relative paths); return source facts."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - base dependency
        raise BackendUnavailable("huggingface_hub is not installed") from exc

    check_reachable()
    dest.mkdir(parents=True, exist_ok=True)
    commit = None
    for name in files:
        try:
            cached = hf_hub_download(
                repo,
                name,
                revision=revision,
                endpoint=endpoint(),
                etag_timeout=20,
                cache_dir=_cache_dir(),
            )
        except RepositoryNotFoundError as exc:
            raise ModelNotFound(f"hub repository {repo!r} not found") from exc
        except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: first
            raise HubUnreachable(
                f"cannot reach the hub for {repo}/{name} (offline?); "
                "set EDGERANK_HUB_ENDPOINT for a mirror"
            ) from exc
        except EntryNotFoundError as exc:
            raise ModelNotFound(f"{name!r} not found in hub repository {repo!r}") from exc
        except OSError as exc:
            raise HubUnreachable(f"download of {repo}/{name} failed: {exc}") from exc
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(Path(cached), target)
        # the snapshot path is .../snapshots/<commit>/<name>
        commit = commit or Path(cached).parents[len(Path(name).parts) - 1].name
    return {"origin": "hub", "repo": repo, "revision": commit, "endpoint": endpoint() or "default"}


def fetch_checkpoint(repo: str, dest: Path, revision: str | None = None) -> dict[str, object]:
    """A whole Hugging Face checkpoint (config, tokenizer, safetensors) for local export."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - base dependency
        raise BackendUnavailable("huggingface_hub is not installed") from exc
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    check_reachable()
    patterns = ["*.json", "*.safetensors", "*.model", "vocab.txt", "merges.txt"]
    try:
        from huggingface_hub import HfApi

        commit = HfApi(endpoint=endpoint()).model_info(repo, revision=revision).sha
        path = snapshot_download(
            repo,
            revision=commit,
            allow_patterns=patterns,
            endpoint=endpoint(),
            local_dir=dest,
            cache_dir=_cache_dir(),
        )
    except RepositoryNotFoundError as exc:
        raise ModelNotFound(f"hub repository {repo!r} not found") from exc
    except (LocalEntryNotFoundError, OSError) as exc:
        raise HubUnreachable(
            f"cannot download {repo} (offline?); set EDGERANK_HUB_ENDPOINT for a mirror"
        ) from exc
    return {
        "origin": "hub",
        "repo": repo,
        "revision": commit,
        "endpoint": endpoint() or "default",
        "path": str(path),
    }


def link_or_copy(src: Path, dst: Path) -> None:
    import shutil

    src = src.resolve()
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)  # same filesystem: no second copy of a 600 MB file
    except OSError:
        shutil.copy2(src, dst)
