"""Calibration: the per-machine cache, its effect on choose(), and a real measuring run."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest
from click.testing import CliRunner

from edgerank.catalog.load import load_catalog
from edgerank.hardware.facts import Gpu, Hardware
from edgerank.install.store import ModelStore
from edgerank.planning import measured as meas
from edgerank.planning.candidates import Wishes
from edgerank.planning.choice import choose
from edgerank.planning.explain import explain
from edgerank.planning.measured import Measured
from edgerank.quality import calibrate as cal
from edgerank.quality import shapes
from edgerank.store import calibration as stored
from edgerank.store.calibration import CalibrationCache
from tests.support.hardware import avx2_machine, pretend_avx2

CATALOG = load_catalog()
MODEL = "ms-marco-minilm-l6"
BACKENDS = frozenset({"onnx", "biencoder", "torch"})
BOTH = {MODEL: ["onnx", "torch"]}


def hw(**changes) -> Hardware:
    return avx2_machine(**changes)


def measured(backend, precision, speeds, fidelity=None, reference=None, entry="") -> Measured:
    return Measured(MODEL, backend, precision, "cpu", speeds, fidelity, reference, entry=entry)


ONNX_FAST = measured("onnx", "int8", {1: 300.0, 2: 520.0}, {"spearman_mean": 0.998}, "torch fp32")
TORCH_SLOW = measured("torch", "fp32", {1: 90.0, 2: 160.0}, None, "itself")


def verdict(choice, backend):
    return next(
        v.reason
        for v in choice.reasons
        if v.candidate.model == MODEL and v.candidate.backend == backend
    )


def decide(calibration=None, installed=BOTH):
    return choose(CATALOG, hw(), Wishes(), BACKENDS, installed, calibration=calibration)


# ----------------------------------------------------------------------------- machine


def test_machine_key_ignores_free_memory_but_not_what_sets_speed():
    key = stored.machine_key(hw())
    assert stored.machine_key(hw(ram_available_mib=123, disk_free_mib=5)) == key
    gpu = Gpu(0, "L4", 23034, 20000, "8.9")
    with_gpu = stored.machine_key(hw(gpus=(gpu,)))
    assert stored.machine_key(hw(gpus=(dataclasses.replace(gpu, vram_free_mib=10),))) == with_gpu
    assert with_gpu != key
    assert stored.machine_key(hw(isa=frozenset({"avx2", "amx_bf16"}))) != key
    assert stored.machine_key(hw(physical_cores=4, logical_cpus=8, usable_cpus=8.0)) != key
    assert stored.machine_key(hw(usable_cpus=1.0)) != key


def test_measured_best_threads_and_fidelity_floor():
    m = measured("onnx", "int8", {1: 100.0, 2: 180.0, 4: 180.0})
    assert (m.best_threads, m.best_pairs_per_s) == (2, 180.0)  # a tie goes to fewer threads
    assert m.fidelity_ok  # unmeasured fidelity does not count against it
    poor = dataclasses.replace(m, fidelity={"spearman_mean": meas.FIDELITY_FLOOR - 0.01})
    assert not poor.fidelity_ok
    assert Measured.from_dict(json.loads(json.dumps(m.to_dict()))) == m


SHAPES = {"8192x0": 100.0, "4096x0": 120.0, "2048x0": 95.0, "8192x8": 150.0, "8192x64": 101.0}


def test_measured_shapes_roundtrip_and_old_rows_load_without_them(tmp_path):
    m = dataclasses.replace(ONNX_FAST, shapes=SHAPES)
    assert Measured.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    old = ONNX_FAST.to_dict()
    del old["shapes"]  # a row written before batch shapes were measured
    assert Measured.from_dict(old) == ONNX_FAST and ONNX_FAST.shapes == {}
    path = tmp_path / stored.FILE
    CalibrationCache(path).put(hw(), MODEL, [m, TORCH_SLOW])
    data = json.loads(path.read_text())
    rows = data["machines"][stored.machine_key(hw())]["models"][MODEL]
    del rows[1]["shapes"]
    rows[0]["shapes"] = {"8192": 1.0}  # not a shape: that row is skipped, the rest kept
    path.write_text(json.dumps(data))
    assert CalibrationCache(path).get(hw(), MODEL) == [TORCH_SLOW]


def test_fastest_shape_keeps_to_the_limit_and_prefers_the_default_within_the_slack():
    m = dataclasses.replace(ONNX_FAST, shapes=SHAPES)
    assert m.fastest_shape(8192) == (8192, 8)
    assert m.fastest_shape(4096) == (4096, None)  # the capped 8192 shapes do not fit
    assert m.fastest_shape(3000) == (2048, None)  # the only one within 3000 tokens
    assert m.fastest_shape(1024) is None and ONNX_FAST.fastest_shape(8192) is None
    slack = 100.0 * (1 + meas.SHAPE_SLACK)
    near = dataclasses.replace(m, shapes={"8192x0": 100.0, "8192x8": slack - 0.01})
    assert near.fastest_shape(8192) == (8192, None)  # noise does not flip the choice
    beyond = dataclasses.replace(m, shapes={"8192x0": 100.0, "8192x8": slack + 0.01})
    assert beyond.fastest_shape(8192) == (8192, 8)
    assert (meas.shape_key(8192, None), meas.parse_shape("8192x16")) == ("8192x0", (8192, 16))


# ------------------------------------------------------------------------------- cache


def test_cache_roundtrip_per_machine_and_model(tmp_path):
    path = tmp_path / "home" / stored.FILE
    CalibrationCache(path).put(hw(), MODEL, [ONNX_FAST, TORCH_SLOW])
    other = dataclasses.replace(ONNX_FAST, model="ms-marco-minilm-l4")
    CalibrationCache(path).put(hw(), "ms-marco-minilm-l4", [other])
    fresh = CalibrationCache(path)
    assert fresh.get(hw(), MODEL) == [ONNX_FAST, TORCH_SLOW]
    assert fresh.get(hw(), "ms-marco-minilm-l4") == [other]
    assert fresh.get(hw(isa=frozenset({"avx2", "avx512f"}))) == []  # another machine
    CalibrationCache(path).put(hw(), MODEL, [TORCH_SLOW])  # a new run replaces the model's
    assert CalibrationCache(path).get(hw(), MODEL) == [TORCH_SLOW]
    data = json.loads(path.read_text())
    assert data["machines"][stored.machine_key(hw())]["facts"]["isa"] == ["avx2"]


@pytest.mark.parametrize("text", ["not json{", '{"schema": 99, "machines": {}}', "[1, 2]"])
def test_broken_or_foreign_cache_reads_as_empty_and_is_rewritten(tmp_path, text):
    path = tmp_path / stored.FILE
    path.write_text(text)
    assert CalibrationCache(path).get(hw()) == []
    CalibrationCache(path).put(hw(), MODEL, [ONNX_FAST])
    assert CalibrationCache(path).get(hw()) == [ONNX_FAST]


def test_lookup_drops_figures_of_a_replaced_entry(tmp_path, tiny_bert_hf, tiny_xlmr_hf):
    store = ModelStore(tmp_path / "home")
    store.import_torch(MODEL, tiny_bert_hf)
    entry = stored.entry_fingerprint(store, MODEL, "torch")
    CalibrationCache.for_store(store).put(
        hw(), MODEL, [dataclasses.replace(TORCH_SLOW, entry=entry)]
    )
    assert set(stored.lookup(store, hw())) == {(MODEL, "torch", "fp32", "cpu")}
    store.import_torch(MODEL, tiny_xlmr_hf)  # another checkpoint under the same name
    assert stored.lookup(store, hw()) == {}


# ------------------------------------------------------------------------------ choice


def test_measured_speed_decides_the_backend_and_the_threads():
    assert decide().backend == "onnx"  # catalog order without figures
    torch_fast = dataclasses.replace(TORCH_SLOW, pairs_per_s={1: 700.0, 2: 650.0})
    choice = decide({m.key: m for m in (ONNX_FAST, torch_fast)})
    assert (choice.backend, choice.precision, choice.threads) == ("torch", "fp32", 1)
    assert [m.backend for m in choice.measured] == ["torch", "onnx"]
    choice = decide({m.key: m for m in (ONNX_FAST, TORCH_SLOW)})
    assert (choice.backend, choice.threads) == ("onnx", 2)
    assert "torch/fp32 measured faster (700 vs 520 pairs/s)" in verdict(
        decide({m.key: m for m in (ONNX_FAST, torch_fast)}), "onnx"
    )
    only_torch = decide({torch_fast.key: torch_fast})  # measured before unmeasured
    assert only_torch.backend == "torch"
    assert "torch/fp32 comes first for this model" in verdict(only_torch, "onnx")


def test_poor_fidelity_loses_to_a_slower_faithful_backend():
    unfaithful = dataclasses.replace(ONNX_FAST, fidelity={"spearman_mean": 0.93})
    choice = decide({m.key: m for m in (unfaithful, TORCH_SLOW)})
    assert choice.backend == "torch"
    why = verdict(choice, "onnx")
    assert "fidelity measured poorly" in why and "0.9300" in why


def test_explain_shows_the_measurements():
    choice = decide({m.key: m for m in (ONNX_FAST, TORCH_SLOW)})
    text = explain(choice)
    assert "measured on this machine" in text
    assert "onnx/int8 on cpu: pairs/s 300 at 1, 520 at 2 threads; spearman 0.9980" in text
    assert "torch/fp32 on cpu: pairs/s 90 at 1, 160 at 2 threads; the fp32 reference" in text
    assert "measured here: onnx/int8" in choice.reasons[0].reason


def test_figures_of_other_models_change_nothing():
    other = dataclasses.replace(TORCH_SLOW, model="ms-marco-minilm-l4", pairs_per_s={1: 1e6})
    choice = decide({other.key: other})
    assert (choice.backend, choice.measured) == ("onnx", ())


# ---------------------------------------------------------------------- measuring runs


@pytest.fixture
def both_store(tmp_path, tiny_bert_hf, tiny_onnx_dir):
    """The tiny BERT installed under a catalog name as INT8 ONNX and as a torch checkpoint."""
    store = ModelStore(tmp_path / "home")
    shutil.copytree(tiny_onnx_dir, store.path(MODEL, "onnx"))
    store.import_torch(MODEL, tiny_bert_hf)
    return store


def test_calibrate_measures_every_installed_backend_and_caches_it(both_store):
    notes = []
    out = cal.calibrate(both_store, hw(), MODEL, seconds=0.2, threads=(1,), progress=notes.append)
    by_backend = {m.backend: m for m in out}
    assert set(by_backend) == {"onnx", "torch"}
    onnx, torch = by_backend["onnx"], by_backend["torch"]
    assert (onnx.precision, torch.precision) == ("int8", "fp32")
    assert all(m.pairs_per_s[1] > 0 and set(m.pairs_per_s) == {1} for m in out)
    assert torch.reference == "itself" and torch.fidelity is None
    assert onnx.reference == "torch fp32"
    assert -1.0 <= onnx.fidelity["spearman_mean"] <= 1.0
    assert onnx.fidelity["groups"] == cal.FIDELITY_GROUPS
    assert any("fidelity of onnx/int8/cpu" in n for n in notes)
    grid = {meas.shape_key(*s) for s in shapes.grid()}
    for m in out:  # every shape of the grid, at the one thread count measured
        assert set(m.shapes) == grid and all(v > 0 for v in m.shapes.values())
        assert f"timing batch shapes of {m.backend}/{m.precision}/cpu at 1 thread(s)" in notes
    assert stored.lookup(both_store, hw()) == {m.key: m for m in out}  # shapes cached too
    # random tiny weights spread scores by ~0.004, so INT8 may well rank unlike fp32 here
    fastest = max((m for m in out if m.fidelity_ok), key=lambda m: m.best_pairs_per_s)
    choice = decide(stored.lookup(both_store, hw()))
    assert (choice.backend, choice.threads) == (fastest.backend, 1)
    tokens, pairs = fastest.fastest_shape(8192)
    assert (choice.batch_token_budget, choice.batch_max_pairs) == (tokens, pairs)
    assert choice.batch_measured


def test_onnx_alone_reuses_its_import_fidelity(tmp_path, tiny_onnx_dir):
    store = ModelStore(tmp_path / "home")
    shutil.copytree(tiny_onnx_dir, store.path(MODEL, "onnx"))
    (m,) = cal.calibrate(store, hw(), MODEL, seconds=0.1, threads=(1,))
    assert m.reference == "onnx fp32 at import"
    want = store.manifest(MODEL, "onnx").fidelity["spearman_mean"]
    assert m.fidelity["spearman_mean"] == pytest.approx(want)


def test_calibrate_times_only_shapes_the_memory_allows(tmp_path, tiny_onnx_dir):
    store = ModelStore(tmp_path / "home")
    shutil.copytree(tiny_onnx_dir, store.path(MODEL, "onnx"))
    tight = hw(ram_available_mib=400)  # ms-marco-minilm-l6 INT8: 4096 tokens fit, not 8192
    (m,) = cal.calibrate(store, tight, MODEL, seconds=0.1, threads=(1,))
    assert set(m.shapes) == {meas.shape_key(*s) for s in shapes.grid(4096)}
    assert decide(stored.lookup(store, tight), installed={MODEL: ["onnx"]}).batch_measured


def test_probe_calibrate_then_explain_uses_the_cache(both_store, monkeypatch):
    from edgerank.cli.main import main

    monkeypatch.setenv("EDGERANK_HOME", str(both_store.root))
    pretend_avx2(monkeypatch)  # torch at FP32 (AVX512-BF16/AMX CPUs would add BF16)
    runner = CliRunner()
    res = runner.invoke(main, ["probe", "--calibrate", "--seconds", "0.1", "--explain"])
    assert res.exit_code == 0, res.output
    assert f"would run: {MODEL}" in res.output
    assert "measured on this machine" in res.output
    assert "onnx/int8 on cpu: pairs/s" in res.output and "torch/fp32 on cpu: pairs/s" in res.output
    assert re.search(r"threads \d, batch \d+ tokens, .*: measured", res.output), res.output
    assert (both_store.root / stored.FILE).is_file()
    again = runner.invoke(main, ["probe", "--json"])  # no --calibrate: the cache is read
    assert again.exit_code == 0, again.output
    data = json.loads(again.output)
    assert {m["backend"] for m in data["calibration"]} == {"onnx", "torch"}
    assert data["choice"]["backend"] == data["calibration"][0]["backend"]
    best = Measured.from_dict(data["calibration"][0])
    assert data["choice"]["batch_shape"] == "measured"
    want = best.fastest_shape(8192)  # what 20 GB of free RAM allows
    assert want == (data["choice"]["batch_token_budget"], data["choice"]["batch_max_pairs"])
