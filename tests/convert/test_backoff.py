"""The accuracy-aware INT8 install: back-off by measured sensitivity, the floor, calibration.

Tiny random BERT checkpoints (tests/tiny_models.py) and the shipped natural-text sets.
Timing never decides anything here: every policy sets min_speedup, so the outcome does not
depend on machine load.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgerank.convert import backoff as ib
from edgerank.errors import BelowFidelityFloor, InvalidInput
from edgerank.models.manifest import Manifest
from edgerank.quality import sets
from edgerank.store.entries import ModelStore

#: installs whatever the loop finds, whatever the machine's load
ANY = ib.Policy(min_speedup=0.0, allow_below_floor=True)
TARGET = "/bert/encoder/layer.0/output/dense/MatMul"


@pytest.fixture(scope="module")
def fp32_dir(tiny_bert_hf, tmp_path_factory):
    from edgerank.convert.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("tiny-fp32")
    export_onnx(tiny_bert_hf, d)
    return d


@pytest.fixture(scope="module")
def outlier_dir(fp32_dir, tmp_path_factory):
    """The tiny model with one MatMul made hard to quantize, same function: three input rows
    of its weight scaled 1000x and its input scaled 1/1000 in those channels (a Mul before
    it), so per-channel int8 weight scales crush every other row of that layer only."""
    import onnx
    from onnx import helper, numpy_helper

    d = tmp_path_factory.mktemp("tiny-outlier")
    model = onnx.load(str(fp32_dir / "model.onnx"))
    nodes = list(model.graph.node)
    node = next(n for n in nodes if n.name == TARGET)
    init = next(t for t in model.graph.initializer if t.name == node.input[1])
    w = numpy_helper.to_array(init).copy()
    w[:3] *= 1000.0
    init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
    scale = np.ones(w.shape[0], dtype=np.float32)
    scale[:3] = 1.0 / 1000.0
    model.graph.initializer.append(numpy_helper.from_array(scale, "er_test_scale"))
    scaled = node.input[0] + "_er_scaled"
    mul = helper.make_node("Mul", [node.input[0], "er_test_scale"], [scaled], name="er_mul")
    node.input[0] = scaled
    nodes.insert(nodes.index(node), mul)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(d / "model.onnx"))
    for f in ("tokenizer.json", "config.json"):
        (d / f).write_bytes((fp32_dir / f).read_bytes())
    return d


def _probe(n: int = 40):
    return sets.shipped(sets.PROBE)[0][:n]


def test_shipped_sets_are_natural_disjoint_and_large_enough():
    cal, cal_info = sets.shipped(sets.CALIBRATION)
    probe, probe_info = sets.shipped(sets.PROBE)
    assert probe_info["groups"] >= 100 and all(len(d) >= 8 for _, d in probe)
    assert not {d for _, ds in cal for d in ds} & {d for _, ds in probe for d in ds}
    assert not {q for q, _ in cal} & {q for q, _ in probe}
    text = " ".join(d for _, ds in probe for d in ds)
    assert {"the", "and", "is"} <= set(text.split())  # prose, not word lists
    assert cal_info["sha256"] != probe_info["sha256"]


def test_measured_sensitivity_finds_the_outlier_matmul(outlier_dir, tmp_path):
    """The switch pass (each MatMul alone in INT8, the rest FP32) ranks the outlier-scaled
    MatMul first, by a wide margin: the order the back-off keeps MatMuls in FP32."""
    cal = sets.shipped(sets.CALIBRATION)[0]
    tok = outlier_dir / "tokenizer.json"
    fused, prepared = ib.prepare_fp32(outlier_dir / "model.onnx", tmp_path / "pre")
    base = ib.Base("token", fused, prepared, sets.pairs_of(cal, 1))
    path = base.build([], tmp_path / "k0.onnx")
    names = ib.quantized_matmuls(fused, path)
    assert TARGET in names and len(names) > 4
    sens = ib.sensitivities(fused, path, names, tok, sets.pairs_of(cal, 1)[::4][:32], 1)
    ranked = sorted(sens, key=sens.get, reverse=True)
    assert ranked[0] == TARGET, sens
    assert sens[TARGET] > 3 * sens[ranked[1]], sens


def test_backoff_stops_at_the_first_point_above_the_floor(fp32_dir, tmp_path):
    """Keeping MatMuls FP32 in sensitivity order until the floor holds: with a floor set
    just above what all-INT8 measures, the loop goes past 0 kept and records each point."""
    probe, cal = _probe(140), sets.shipped(sets.CALIBRATION)[0]
    tok = fp32_dir / "tokenizer.json"
    first = ib.quantize_accurate(
        fp32_dir / "model.onnx", tmp_path / "w0", tok, probe=probe, calibration=cal,
        policy=ib.Policy(floor={"spearman_mean": 0.0}, min_speedup=0.0), threads=1, max_length=128,
    )  # fmt: skip
    assert [p["fp32_matmuls"] for p in first["frontier"]] == [0]
    everything = ib.quantize_accurate(
        fp32_dir / "model.onnx", tmp_path / "w1", tok, probe=probe, calibration=cal,
        policy=ib.Policy(floor={"spearman_mean": 1.01}, min_speedup=0.0), threads=1, max_length=128,
    )  # fmt: skip
    counts = [p["fp32_matmuls"] for p in everything["frontier"]]
    assert counts[:4] == [0, 1, 2, 3] and counts == sorted(counts)
    assert not everything["meets_floor"]
    order = sorted(everything["recipe"]["sensitivity"].items(), key=lambda kv: -kv[1])
    best = max(everything["frontier"], key=lambda p: (p["spearman_mean"], p["top1_kept"]))
    assert everything["recipe"]["fp32_matmuls"] == [n for n, _ in order[: best["fp32_matmuls"]]]


def test_below_floor_is_refused_unless_allowed(fp32_dir, tmp_path):
    store = ModelStore(tmp_path / "home")
    impossible = {"spearman_mean": 1.01, "top1_kept": 0.97}
    with pytest.raises(BelowFidelityFloor, match="allow-below-floor"):
        store.import_onnx("t", fp32_dir, policy=ib.Policy(floor=impossible, min_speedup=0.0))
    assert store.installed() == {}
    d = store.import_onnx(
        "t", fp32_dir,
        policy=ib.Policy(floor=impossible, min_speedup=0.0, allow_below_floor=True),
    )  # fmt: skip
    m = Manifest.read(d)
    assert m.precision == "int8" and m.fidelity["meets_floor"] is False
    assert m.fidelity["below_floor_allowed"] is True
    assert m.fidelity["floor"] == impossible
    assert "BELOW the fidelity floor" in m.fidelity_note()
    from edgerank.backends.onnx import OnnxBackend

    be = OnnxBackend.from_dir(d)
    assert "BELOW" in be.info().details["fidelity_note"]


def test_cli_refuses_below_floor_in_one_line_and_says_so_after(fp32_dir, tmp_path, monkeypatch):
    from edgerank.cli.main import main

    monkeypatch.setenv("EDGERANK_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ib, "FLOOR", {"spearman_mean": 1.01, "top1_kept": 0.97})
    monkeypatch.setattr(ib, "MIN_SPEEDUP", 0.0)
    runner = CliRunner()
    refused = runner.invoke(main, ["import", str(fp32_dir), "--name", "t"])
    assert refused.exit_code == 1, refused.output
    assert "fidelity floor" in refused.output and "Traceback" not in refused.output
    done = runner.invoke(main, ["import", str(fp32_dir), "--name", "t", "--allow-below-floor"])
    assert done.exit_code == 0, done.output
    models = runner.invoke(main, ["models"])
    assert [ln for ln in models.output.splitlines() if "BELOW the fidelity floor" in ln]
    scored = runner.invoke(main, ["score", "--model", "t", "--threads", "1", "cat", "a cat"])
    assert scored.exit_code == 0 and "BELOW the fidelity floor" in scored.output


def test_int8_that_does_not_pay_installs_fp32(fp32_dir, tmp_path):
    store = ModelStore(tmp_path / "home")
    d = store.import_onnx("t", fp32_dir, policy=ib.Policy(min_speedup=1000.0))
    m = Manifest.read(d)
    assert m.precision == "fp32" and m.model_file == "model.fp32.onnx"
    assert "int8_rejected" in m.recipe and m.fidelity["meets_floor"] is True
    assert m.fidelity_note() is None


def test_calibration_file_round_trips_into_the_manifest(fp32_dir, tmp_path):
    cal = tmp_path / "mine.jsonl"
    rows = [{"query": f"question {i} about rivers", "documents": ["A river flows.", "Bread."]}
            for i in range(6)]  # fmt: skip
    cal.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    store = ModelStore(tmp_path / "home")
    d = store.import_onnx("t", fp32_dir, calibration=cal, policy=ANY)
    used = Manifest.read(d).recipe["calibration"]
    assert used["sha256"] == hashlib.sha256(cal.read_bytes()).hexdigest()
    assert used["groups"] == 6 and used["pairs"] == 12 and used["origin"] == str(cal.resolve())
    assert Manifest.read(d).fidelity["probe"]["name"] == sets.PROBE


@pytest.mark.parametrize(
    "line, why",
    [("not json", "not JSON"), ('{"documents": ["a"]}', "query"), ('{"query": "q"}', "documents"),
     ('{"query": "q", "documents": "a"}', "documents")],
)  # fmt: skip
def test_bad_calibration_files_are_one_line_errors(tmp_path, line, why):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n")
    with pytest.raises(InvalidInput, match=why):
        sets.from_file(bad)
    with pytest.raises(InvalidInput, match="no query groups"):
        sets.parse([], "empty")
