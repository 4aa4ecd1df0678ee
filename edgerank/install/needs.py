"""What each install route needs, checked before any download or conversion starts, so that
one refusal names every missing extra (a user should not learn them one failure at a time).

The pipelines themselves still check what they import (convert/int8.require_quantize,
convert/onnx_export): this is the first word, not the only guard.
"""

from __future__ import annotations

from pathlib import Path

from edgerank.catalog.spec import ModelSpec
from edgerank.errors import require_extras

#: what a refusal adds where a model can come to this box without the extra
ARCHIVE = "; or make it where they are and `edgerank import` its `edgerank export` archive here"


def for_import(path: Path, backend: str) -> tuple[str, tuple[str, ...]]:
    """(what is about to happen, the extras it takes) for `edgerank import PATH`."""
    from edgerank.install.onnx import _find_fp32_onnx

    if path.is_file():  # an `edgerank export` archive: files installed unchanged
        return "importing an archive", ()
    if backend == "torch":  # copied as is; serving it takes the cuda extra
        return "importing a torch checkpoint", ()
    if backend == "gguf":
        if any(path.glob("*.gguf")):
            return "installing GGUF files (checked with llama.cpp)", ("gguf",)
        return "converting a checkpoint to GGUF (llama.cpp's converter runs on torch)", (
            "convert",
            "gguf",
        )
    if _find_fp32_onnx(path) is not None:
        return "quantizing an FP32 ONNX graph", ("quantize",)
    return "importing a checkpoint (exported to ONNX with torch, then quantized)", (
        "convert",
        "quantize",
    )


def for_pull(spec: ModelSpec, backend: str, prebuilt: bool) -> tuple[str, tuple[str, ...]]:
    """(what is about to happen, the extras it takes) for `edgerank pull NAME`."""
    if backend == "gguf":
        if spec.gguf is not None and spec.gguf.files:
            return f"pulling {spec.name}'s GGUF files", ("gguf",)
        return f"pulling {spec.name} and converting it to GGUF", ("convert", "gguf")
    src = spec.onnx
    if src is None or prebuilt:
        return f"pulling {spec.name}", ()  # pull itself says what is wrong with it
    if src.fp32_file:
        return f"pulling {spec.name} and quantizing it here", ("quantize",)
    return f"pulling {spec.name}'s checkpoint, exporting and quantizing it here", (
        "convert",
        "quantize",
    )


def check_import(path: Path, backend: str) -> None:
    what, extras = for_import(path, backend)
    require_extras(what, extras, also=ARCHIVE)


def check_pull(spec: ModelSpec, backend: str, prebuilt: bool) -> None:
    what, extras = for_pull(spec, backend, prebuilt)
    also = ARCHIVE
    if backend == "onnx" and spec.onnx is not None and spec.onnx.int8_file and not prebuilt:
        also = (
            f"; or `edgerank pull {spec.name} --prebuilt-int8` takes the publisher's INT8 "
            "file (measured here, not quantized)"
        )
    require_extras(what, extras, also=also)
