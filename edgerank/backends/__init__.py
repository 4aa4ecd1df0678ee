"""One module per runtime; each imports its runtime inside itself."""

from __future__ import annotations

from importlib.util import find_spec


def available_backends() -> frozenset[str]:
    """Runtimes importable here, found without importing them (torch alone costs seconds)."""
    found = {"biencoder"}
    for backend, module in (("onnx", "onnxruntime"), ("gguf", "llama_cpp"), ("torch", "torch")):
        if find_spec(module) is not None:
            found.add(backend)
    return frozenset(found)
