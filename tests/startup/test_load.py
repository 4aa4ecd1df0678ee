"""The batch shape a loaded model runs with: the planner's for a catalog model, chosen by name or
not (memory, and calibration when measured), a default for a model the planner cannot know."""

from __future__ import annotations

import pytest

from edgerank.hardware import probe
from edgerank.startup import load as loader
from tests.support.calibration import MODEL, calibrated, store_with
from tests.support.hardware import avx2_machine

#: a cap of 8 pairs at the full budget measured fastest; 4096 tokens is the best below it
FIGURES = {"8192x0": 100.0, "8192x8": 150.0, "4096x0": 110.0, "2048x0": 90.0}
#: ms-marco-minilm-l6 INT8 needs 23 + 300 + 150 MiB at 8192 tokens, 23 + 150 + 150 at 4096
TIGHT_MIB = 400


def machine(monkeypatch, **changes):
    hw = avx2_machine(**changes)
    monkeypatch.setattr(probe, "probe", lambda *a, **kw: hw)
    return hw


def shape(model, store) -> tuple[int, int | None]:
    loaded = loader.load(model, threads=1, store=store)
    loaded.backend.close()
    return loaded.token_budget, loaded.max_pairs


@pytest.mark.parametrize("model", [None, MODEL])
def test_a_catalog_model_runs_the_measured_shape_within_its_memory(
    tmp_path, tiny_onnx_dir, monkeypatch, model
):
    store = store_with(tmp_path / "home", tiny_onnx_dir)
    calibrated(store, machine(monkeypatch), FIGURES)
    assert shape(model, store) == (8192, 8)
    machine(monkeypatch, ram_available_mib=TIGHT_MIB)  # same machine key, less free memory
    assert shape(model, store) == (4096, None)


def test_unmeasured_the_memory_budget_runs_uncapped(tmp_path, tiny_onnx_dir, monkeypatch):
    store = store_with(tmp_path / "home", tiny_onnx_dir)
    machine(monkeypatch, ram_available_mib=TIGHT_MIB)
    assert shape(MODEL, store) == (4096, None)  # named: the planner's memory budget too
    assert shape(None, store) == (4096, None)


def test_a_model_directory_keeps_the_default_shape(tiny_onnx_dir, monkeypatch, tmp_path):
    machine(monkeypatch, ram_available_mib=TIGHT_MIB)
    store = store_with(tmp_path / "home", tiny_onnx_dir)
    assert shape(str(tiny_onnx_dir), store) == (8192, None)
