"""The manifest that makes a model directory trustworthy: files, sha256, source, recipe.

Loading verifies it. Hashing a 600 MB model on every start would cost seconds, so a
successful full check leaves a stamp of (size, mtime) per file; later loads re-hash only
files whose stamp changed, and always check presence and size.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgerank.errors import ModelCorrupt

MANIFEST = "manifest.json"


def weights_file(graph: str) -> str:
    """The file an ONNX graph's external weights are written to, beside it: one name for the
    install that writes it (install/onnx, convert/int8) and the views that size it."""
    return graph + ".data"


STAMP = ".verified.json"
SCHEMA = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Manifest:
    name: str
    backend: str  # "onnx" | "gguf" | "torch" | "biencoder"
    precision: str
    model_file: str  # path of the main weights file, relative to the directory
    max_length: int
    normalise: str = "sigmoid"
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # rel -> {sha256, size}
    source: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    schema: int = SCHEMA
    #: an ONNX entry holding an INT8 option: its files, resident memory, speed profile and
    #: the verdict at the request shape of the install (models/serving.ServingPlan)
    serving: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, model_dir: Path) -> Manifest:
        path = model_dir / MANIFEST
        if not path.is_file():
            raise ModelCorrupt(f"{model_dir} has no {MANIFEST}: not an edgerank model directory")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise TypeError(f"a JSON object expected, got {type(data).__name__}")
            manifest = cls(**data)
            manifest._check_types()
            return manifest
        except (ValueError, TypeError, RecursionError) as exc:
            raise ModelCorrupt(f"{path} is unreadable ({exc}); re-run `edgerank pull`") from exc

    def _check_types(self) -> None:
        """Every field of the JSON type the code reads it as (TypeError naming the first not)."""
        for name in ("name", "backend", "precision", "model_file", "normalise", "created"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f'"{name}" must be a string')
        for name in ("max_length", "schema"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f'"{name}" must be an integer')
        for name in ("files", "source", "recipe", "fidelity", "serving"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f'"{name}" must be an object')
        for rel, meta in self.files.items():
            if not isinstance(meta, dict):
                raise TypeError(f'"files"[{rel!r}] must be an object {{"sha256", "size"}}')

    def write(self, model_dir: Path) -> None:
        """Hash every listed file and write the manifest (and a fresh stamp)."""
        for rel in list(self.files) or [self.model_file]:
            p = model_dir / rel
            self.files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        self.created = self.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (model_dir / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")
        _write_stamp(model_dir, self)

    def identity(self) -> str:
        """sha256 of what fixes this entry's scores: its files' hashes and its recipe.

        Name and date are left out (a rename keeps the scores); a re-import with other
        weights or another quantization recipe gets another identity, so the score cache
        (engine/cache.py) never answers for it with the old model's scores.
        """
        facts = {
            "backend": self.backend,
            "precision": self.precision,
            "model_file": self.model_file,
            "max_length": self.max_length,
            "normalise": self.normalise,
            "files": {rel: meta.get("sha256") for rel, meta in self.files.items()},
            "recipe": self.recipe,
        }
        text = json.dumps(facts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def fidelity_note(self, int8_kernel: str | None = None) -> str | None:
        """One line for score/serve/models/probe when an INT8 entry's fidelity is not
        proved: installed below the floor (--allow-below-floor), a publisher's file that
        was never measured (--prebuilt-int8 without an FP32 original), or measured with a
        non-saturating int8 kernel and now on a CPU (``int8_kernel``, hardware.facts) whose
        kernel can saturate, unless its weights were bounded so that none can
        (recipe ``saturation_safe``: convert/int8_files.build)."""
        from edgerank.hardware.facts import SATURATING_INT8

        fid = self.fidelity or {}
        if fid.get("meets_floor", True) is False:
            return f"{self.name} was installed BELOW the fidelity floor: {floor_line(fid)}"
        if self.recipe.get("name") == "hub-prebuilt" and fid.get("measured") is False:
            return f"{self.name}: the publisher's INT8 file, fidelity unmeasured"
        measured = fid.get("int8_kernel")
        if (
            self.precision == "int8" and measured and int8_kernel in SATURATING_INT8
            and measured not in SATURATING_INT8 and not self.recipe.get("saturation_safe")
        ):  # fmt: skip
            return (
                f"{self.name}: fidelity measured with the {measured} int8 kernel; this CPU's "
                f"{int8_kernel} kernel can saturate: re-import here (or with --portable-int8)"
            )
        return None

    def verify(self, model_dir: Path) -> None:
        """Raise ModelCorrupt naming the first missing, truncated or altered file."""
        stamp = _read_stamp(model_dir)
        fresh: dict[str, list[int]] = {}
        for rel, meta in self.files.items():
            p = model_dir / rel
            if not p.is_file():
                raise ModelCorrupt(
                    f"{p} is missing: the model is incomplete; re-run `edgerank pull`"
                )
            st = p.stat()
            if st.st_size != meta.get("size"):
                raise ModelCorrupt(
                    f"{p} has {st.st_size} bytes, manifest says {meta.get('size')}: "
                    "partial download or corrupt file; re-run `edgerank pull`"
                )
            key = [st.st_size, st.st_mtime_ns]
            if stamp.get(rel) != key and sha256_file(p) != meta.get("sha256"):
                raise ModelCorrupt(f"{p} fails its sha256 check: corrupt; re-run `edgerank pull`")
            fresh[rel] = key
        if fresh != stamp:
            _save_stamp(model_dir, fresh)


def floor_line(fid: dict[str, Any]) -> str:
    """Measured figures against the floor, e.g. for a refusal or a below-floor note."""
    floor = fid.get("floor", {})
    line = (
        f"Spearman {fid.get('spearman_mean', 0):.4f} (floor {floor.get('spearman_mean')}), "
        f"top-1 kept {fid.get('top1_kept', 0):.1%} (floor {floor.get('top1_kept', 0):.0%})"
    )
    if "rescored_share" in fid:  # the figures are the cascade's (engine/cascade.py)
        line += f", with {fid['rescored_share']:.1%} of pairs rescored in FP32"
    return line


def _read_stamp(model_dir: Path) -> dict[str, list[int]]:
    try:
        return json.loads((model_dir / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _save_stamp(model_dir: Path, stamp: dict[str, list[int]]) -> None:
    try:
        (model_dir / STAMP).write_text(json.dumps(stamp))
    except OSError:
        pass  # a read-only store still works; it just re-hashes next time


def _write_stamp(model_dir: Path, manifest: Manifest) -> None:
    stamp = {}
    for rel in manifest.files:
        st = (model_dir / rel).stat()
        stamp[rel] = [st.st_size, st.st_mtime_ns]
    _save_stamp(model_dir, stamp)
