"""A model store whose catalog model has calibration figures, batch shapes included, without
timing anything: tests of what the planner does with measurements must not depend on speed."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgerank.hardware.facts import Hardware
from edgerank.install.store import ModelStore
from edgerank.planning.measured import Measured
from edgerank.store.calibration import CalibrationCache, entry_fingerprint

#: a catalog model small enough for any test machine (23 MiB INT8, hidden 384)
MODEL = "ms-marco-minilm-l6"


def store_with(home: Path, onnx_dir: Path, name: str = MODEL) -> ModelStore:
    """A store holding ``onnx_dir`` (the tiny INT8 model) as the ONNX entry of ``name``."""
    store = ModelStore(home)
    shutil.copytree(onnx_dir, store.path(name, "onnx"))
    return store


def calibrated(
    store: ModelStore, hw: Hardware, shapes: dict[str, float], name: str = MODEL
) -> Measured:
    """Cache a measurement of the store's ONNX entry on ``hw``: 1 thread, these shapes."""
    m = Measured(
        name,
        "onnx",
        store.manifest(name, "onnx").precision,
        "cpu",
        {1: 100.0},
        entry=entry_fingerprint(store, name, "onnx"),
        shapes=shapes,
    )
    CalibrationCache.for_store(store).put(hw, name, [m])
    return m
