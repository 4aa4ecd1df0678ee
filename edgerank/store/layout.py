"""The model store's layout: <home>/models/<name>/<backend>/ with a manifest.json.

A model is installed only once its manifest is written and its directory renamed into place,
so an interrupted pull never looks installed (the install pipelines live beside this file).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgerank.errors import InvalidInput, ModelNotFound
from edgerank.models.manifest import MANIFEST, Manifest

#: the files a cross-encoder directory needs beside its weights
TOKENIZER_FILES = ("tokenizer.json", "config.json")
#: what a gguf entry keeps beside its GGUF files (edgerank tokenizes; llama.cpp never does)
GGUF_TOKENIZER_FILES = (
    "tokenizer.json",
    "config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
#: what a torch entry copies from a checkpoint: weights, configs, tokenizer, modelling code
TORCH_PATTERNS = ("*.safetensors", "*.json", "*.py", "*.txt", "*.model", "pytorch_model*.bin")


def home() -> Path:
    """$EDGERANK_HOME, else systemd's $STATE_DIRECTORY, else the XDG data dir."""
    if env := os.environ.get("EDGERANK_HOME"):
        return Path(env)
    if env := os.environ.get("STATE_DIRECTORY"):
        return Path(env.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "edgerank"


class StoreLayout:
    """Where entries live and which are complete; the install pipelines add to it."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else home()

    def path(self, name: str, backend: str = "onnx") -> Path:
        return self.root / "models" / name / backend

    def installed(self) -> dict[str, list[str]]:
        """name -> backends with a manifest (complete installs only)."""
        out: dict[str, list[str]] = {}
        models = self.root / "models"
        if not models.is_dir():
            return out
        for manifest in sorted(models.glob(f"*/*/{MANIFEST}")):
            out.setdefault(manifest.parent.parent.name, []).append(manifest.parent.name)
        return out

    def entry(self, name: str, backend: str = "onnx") -> Path:
        """The directory of an installed entry; a missing one is one clear ModelNotFound."""
        d = self.path(name, backend)
        if not d.exists():
            raise ModelNotFound(
                f"model {name!r} ({backend}) is not installed in {self.root}: "
                f"run `edgerank pull {name}`"
            )
        return d

    def manifest(self, name: str, backend: str = "onnx") -> Manifest:
        return Manifest.read(self.entry(name, backend))

    @contextlib.contextmanager
    def staged(self, name: str, backend: str) -> Iterator[Path]:
        """A staging directory, published as <name>/<backend> when the block completes and
        removed whatever happens: an interrupted install never looks installed."""
        staging = self._staging(name)
        try:
            yield staging
            publish(staging, self.path(name, backend))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _staging(self, name: str) -> Path:
        """A fresh directory beside the entries, so publishing is a rename, never a copy."""
        return Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self._ensure_models_dir()))

    def _ensure_models_dir(self) -> Path:
        d = self.root / "models"
        d.mkdir(parents=True, exist_ok=True)
        return d


def checked_source(source_dir: Path | str) -> Path:
    """A directory a user asks to install: it must hold a tokenizer and a config."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise InvalidInput(f"{source_dir} is not a directory")
    missing = [f for f in TOKENIZER_FILES if not (source_dir / f).is_file()]
    if missing:
        raise InvalidInput(f"{source_dir} lacks {', '.join(missing)}: not a reranker checkpoint")
    return source_dir


def publish(staging: Path, target: Path) -> None:
    """Move a complete entry into place: a rename on the same filesystem, never a copy."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)


def link_or_copy(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
