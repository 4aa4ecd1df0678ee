"""ModelStore: the store's layout with every install pipeline (ONNX/torch and GGUF).

Opening an entry is the backend registry's job (backends/registry.py), not the store's.
"""

from __future__ import annotations

from edgerank.install.gguf import GgufInstalls
from edgerank.install.onnx import OnnxInstalls


class ModelStore(OnnxInstalls, GgufInstalls):
    """A model store rooted at ``root`` (default: home())."""
