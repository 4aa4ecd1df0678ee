"""Read a GGUF file's header: metadata and tensor names, without llama.cpp.

Enough to decide, before loading anything, what a GGUF is and whether edgerank can serve it
faithfully (backends/gguf.py `check_servable`), and to record it in a manifest. Written from
the published format (magic, version, counts, typed key/values, tensor infos); long arrays
such as the vocabulary are skipped, only their length is kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from edgerank.errors import ModelCorrupt

MAGIC = b"GGUF"
#: metadata written by edgerank's converter (convert/gguf.py)
KEY_FIXES = "edgerank.fixes"
KEY_SEGMENT_B_OFFSET = "edgerank.segment_b_offset"
KEY_VOCAB = "edgerank.vocab"
#: llama_pooling_type values
POOLING_RANK = 4

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
#: arrays longer than this keep only their length (vocabularies, merges, scores)
_KEEP_ARRAY = 64


@dataclass
class GgufHeader:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    #: tensor name -> (shape, ggml type id)
    tensors: dict[str, tuple[tuple[int, ...], int]] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value; ``{arch}`` in the key is the file's architecture."""
        return self.metadata.get(key.format(arch=self.arch), default)

    @property
    def pooling(self) -> int | None:
        value = self.get("{arch}.pooling_type")
        return int(value) if value is not None else None

    @property
    def token_types(self) -> int:
        return int(self.get("tokenizer.ggml.token_type_count", 1) or 1)

    @property
    def fixes(self) -> tuple[str, ...]:
        value = self.get(KEY_FIXES) or ""
        return tuple(f for f in str(value).split(",") if f)

    @property
    def labels(self) -> tuple[str, ...]:
        value = self.get("{arch}.classifier.output_labels")
        return tuple(value) if isinstance(value, list) else ()


class _Reader:
    def __init__(self, f: BinaryIO, path: Path):
        self.f, self.path = f, path

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelCorrupt(f"{self.path} is truncated: not a complete GGUF file")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 24:
            raise ModelCorrupt(f"{self.path}: implausible string length {n}")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.unpack("<I"), self.unpack("<Q")
            if n <= _KEEP_ARRAY:
                return [self.value(etype) for _ in range(n)]
            if etype in _SCALARS:
                self.f.seek(n * struct.calcsize(_SCALARS[etype]), 1)
            else:
                for _ in range(n):
                    self.value(etype)
            return ArrayInfo(etype, n)
        raise ModelCorrupt(f"{self.path}: unknown GGUF value type {vtype}")


@dataclass(frozen=True)
class ArrayInfo:
    """A long array skipped while reading: its element type and length."""

    etype: int
    length: int


def read_header(path: Path | str) -> GgufHeader:
    """Metadata and tensor infos of a GGUF file (ModelCorrupt if it is not one)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            r = _Reader(f, path)
            if r.read(4) != MAGIC:
                raise ModelCorrupt(f"{path} is not a GGUF file (bad magic)")
            version = r.unpack("<I")
            if version < 2:
                raise ModelCorrupt(f"{path} is GGUF version {version}; edgerank reads v2+")
            n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
            header = GgufHeader(path, version)
            for _ in range(n_kv):
                key = r.string()
                header.metadata[key] = r.value(r.unpack("<I"))
            for _ in range(n_tensors):
                name = r.string()
                dims = tuple(r.unpack("<Q") for _ in range(r.unpack("<I")))
                ggml_type = r.unpack("<I")
                r.unpack("<Q")  # data offset
                header.tensors[name] = (dims, ggml_type)
    except OSError as exc:
        raise ModelCorrupt(f"cannot read {path}: {exc.strerror or exc}") from exc
    return header
