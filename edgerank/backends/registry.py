"""The one way to open an entry directory: its manifest names the runtime, and that runtime's
module is imported only then (torch costs seconds to import; llama.cpp may not be installed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgerank.backends.base import Backend
from edgerank.errors import BackendUnavailable
from edgerank.models.manifest import Manifest
from edgerank.models.serving import RequestShape, served


def open_entry(
    model_dir: Path | str,
    manifest: Manifest | None = None,
    *,
    threads: int = 1,
    verify: bool = True,
    request_shape: RequestShape | None = None,
    **options: Any,
) -> Backend:
    """Open an entry directory. ``options`` go to the runtime: torch device, precision,
    cpu_precision, allow_remote_code (backends/torch.py); gguf precision (the quant) and
    its knobs (backends/gguf.py). An ONNX entry with INT8 and FP32 options opens the one
    that pays at ``request_shape`` (models/serving.served; None: the install's shape)."""
    model_dir = Path(model_dir)
    manifest = manifest or Manifest.read(model_dir)
    if manifest.backend not in ("onnx", "torch", "gguf"):
        raise BackendUnavailable(f"backend {manifest.backend!r} is not available in this build")
    if verify:  # every file against its sha256, before any runtime reads it
        manifest.verify(model_dir)
    if manifest.backend == "onnx":
        from edgerank.backends.onnx import OnnxBackend

        manifest, verdict = served(manifest, request_shape)
        return OnnxBackend(model_dir, manifest, threads, verdict=verdict)
    if manifest.backend == "torch":
        from edgerank.backends.torch import open_entry as opener
    else:
        from edgerank.backends.gguf import open_entry as opener
    return opener(model_dir, manifest, threads=threads, **options)


def open_reference(
    model_dir: Path | str, *, threads: int = 1, manifest: Manifest | None = None
) -> Backend:
    """The FP32 graph an INT8 ONNX entry keeps beside it (recipe["reference_file"]), opened
    like the entry itself: the fidelity watch and the cascade score with it. ``manifest``:
    the entry's, when the caller has read it already."""
    model_dir = Path(model_dir)
    manifest = manifest or Manifest.read(model_dir)
    ref = manifest.recipe.get("reference_file") if manifest.backend == "onnx" else None
    if not ref:
        raise BackendUnavailable(
            f"{manifest.name} ({manifest.backend} {manifest.precision}) keeps no FP32 "
            "reference to watch its fidelity against: re-import it (`edgerank import` or "
            "`edgerank pull`), or set fidelity_sample = 0"
        )
    manifest.verify(model_dir)
    from edgerank.backends.onnx import OnnxBackend

    # unpacked: a reference saved with external data keeps its weights in mapped pages
    return OnnxBackend.from_file(model_dir / ref, manifest.max_length, threads=threads,
                                 prepack=False)  # fmt: skip
