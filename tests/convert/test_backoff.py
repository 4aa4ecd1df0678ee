"""The accuracy-aware INT8 install: back-off by measured sensitivity, the floor, calibration.

Tiny random BERT checkpoints (tests/tiny_models.py) and the shipped natural-text sets.
Timing never decides anything here: every policy sets min_speedup, so the outcome does not
depend on machine load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from edgerank.convert import backoff as ib
from edgerank.convert import int8_files
from edgerank.errors import BelowFidelityFloor, InvalidInput
from edgerank.hardware.facts import SATURATING_INT8
from edgerank.hardware.probe import int8_kernel_here
from edgerank.install.store import ModelStore
from edgerank.models.manifest import Manifest
from edgerank.quality import sets

#: installs whatever the loop finds, whatever the machine's load
ANY = ib.Policy(min_speedup=0.0, allow_below_floor=True)
TARGET = "/bert/encoder/layer.0/output/dense/MatMul"
MINILM_TARGET = "/bert/encoder/layer.2/output/dense/MatMul"


@pytest.fixture(scope="module")
def fp32_dir(tiny_bert_hf, tmp_path_factory):
    from edgerank.convert.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("tiny-fp32")
    export_onnx(tiny_bert_hf, d)
    return d


@pytest.fixture(scope="module")
def outlier_dir(fp32_dir, tmp_path_factory):
    return _with_outlier(fp32_dir, tmp_path_factory.mktemp("tiny-outlier"), TARGET)


@pytest.fixture(scope="module")
def minilm_outlier_dir(minilm_ce_ckpt, tmp_path_factory):
    """The real-weight MiniLM-L6 cross-encoder (a random tiny model ranks by noise, so
    no floor can tell one MatMul's damage there) with one MatMul made hard to quantize."""
    from edgerank.convert.onnx_export import export_onnx

    fp32 = tmp_path_factory.mktemp("minilm-fp32")
    export_onnx(minilm_ce_ckpt, fp32)
    return _with_outlier(fp32, tmp_path_factory.mktemp("minilm-outlier"), MINILM_TARGET)


def _with_outlier(src, d, target: str):
    """The model with one MatMul made hard to quantize, same function: three input rows
    of its weight scaled 1000x and its input scaled 1/1000 in those channels (a Mul before
    it), so per-channel int8 weight scales crush every other row of that layer only."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src / "model.onnx"))
    nodes = list(model.graph.node)
    node = next(n for n in nodes if n.name == target)
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
        (d / f).write_bytes((src / f).read_bytes())
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


@pytest.mark.parametrize("kind", ["dynamic", "token"])
def test_measured_sensitivity_finds_the_outlier_matmul(outlier_dir, tmp_path, kind):
    """The switch pass (each MatMul alone quantized, the rest FP32) ranks the outlier-scaled
    MatMul first, by a wide margin: the order the loop moves MatMuls up in."""
    cal = sets.shipped(sets.CALIBRATION)[0]
    tok = outlier_dir / "tokenizer.json"
    (tmp_path / "pre").mkdir()
    prepared, _rows = int8_files.prepare_fp32(outlier_dir / "model.onnx", tmp_path / "pre")
    # built as the loop builds it here: on a CPU whose u8 x s8 kernel saturates (AVX2), an
    # unbounded file measures the saturation of the widest MatMul, not the outlier's scales
    bounded = int8_kernel_here() in SATURATING_INT8
    path = int8_files.build(prepared, tmp_path / "all.onnx", {}, kind, bounded=bounded)
    names = int8_files.matmul_names(prepared)
    assert TARGET in names and len(names) > 4
    sens = ib.sensitivities(prepared, path, names, tok, sets.pairs_of(cal, 1)[::4][:32], 1)
    ranked = sorted(sens, key=sens.get, reverse=True)
    assert ranked[0] == TARGET, sens
    assert sens[TARGET] > 3 * sens[ranked[1]], sens


def test_backoff_keeps_exactly_the_outlier_layer_fp32(minilm_outlier_dir, tmp_path, monkeypatch):
    """With one MatMul made deliberately hard to quantize, the loop (per-token INT8, then
    FP32 for the worst) keeps that MatMul, and only it, in FP32 once the floor lies
    between all-INT8 and one-kept: measured sensitivity, not a guess by name."""
    monkeypatch.setattr(ib, "SCHEDULE", (1,))
    d = minilm_outlier_dir
    kw = dict(probe=_probe(100), calibration=sets.shipped(sets.CALIBRATION)[0], threads=2,
              max_length=128, base="token")  # fmt: skip
    never = ib.Policy(floor={"spearman_mean": 1.01}, min_speedup=0.0, cascade=False)
    seen = ib.quantize_accurate(d / "model.onnx", tmp_path / "w0", d / "tokenizer.json",
                                policy=never, **kw)  # fmt: skip
    points = seen.frontier
    assert [p.moved["fp32"] for p in points] == [0, 1, seen.recipe["matmuls"]]
    assert next(iter(seen.recipe["sensitivity"]["fp32"])) == MINILM_TARGET
    gain = points[1].alone.spearman_mean - points[0].alone.spearman_mean
    assert gain > 0.01, points[:2]  # keeping that one MatMul FP32 is what fixes the model
    between = {"spearman_mean": points[0].alone.spearman_mean + gain / 2}
    got = ib.quantize_accurate(
        d / "model.onnx", tmp_path / "w1", d / "tokenizer.json",
        policy=ib.Policy(floor=between, min_speedup=0.0, cascade=False), **kw,
    )  # fmt: skip
    assert got.meets_floor and got.precision == "int8"
    assert got.recipe["fp32_matmuls"] == [MINILM_TARGET]
    assert [p.moved["fp32"] for p in got.frontier] == [0, 1]


def test_backoff_stops_at_the_first_point_above_the_floor(fp32_dir, tmp_path):
    """Moving MatMuls up the ladder in sensitivity order until the floor holds: with a
    floor set above anything INT8 measures, the loop climbs every rung (token, block, fp32)
    and records each point; with a floor of zero it stops at the first."""
    probe, cal = _probe(140), sets.shipped(sets.CALIBRATION)[0]
    tok = fp32_dir / "tokenizer.json"
    first = ib.quantize_accurate(
        fp32_dir / "model.onnx", tmp_path / "w0", tok, probe=probe, calibration=cal,
        policy=ib.Policy(floor={"spearman_mean": 0.0}, min_speedup=0.0, cascade=False), threads=1,
        max_length=128,
    )  # fmt: skip
    assert [(p.moved["block"], p.moved["fp32"]) for p in first.frontier] == [(0, 0)]
    everything = ib.quantize_accurate(
        fp32_dir / "model.onnx", tmp_path / "w1", tok, probe=probe, calibration=cal,
        policy=ib.Policy(floor={"spearman_mean": 1.01}, min_speedup=0.0, cascade=False), threads=1,
        max_length=128,
    )  # fmt: skip
    points = [(p.moved["block"], p.moved["fp32"]) for p in everything.frontier]
    n = everything.recipe["matmuls"]
    assert points[:3] == [(0, 0), (2, 0), (4, 0)] and (n, 0) in points
    assert points[-1] == (0, n)  # every MatMul moved to the top rung
    assert not everything.meets_floor
    best = max(everything.frontier, key=lambda p: (p.judged.spearman_mean, p.judged.top1_kept))
    kinds = everything.recipe["matmul_kinds"]
    assert sum(k == "block" for k in kinds.values()) == best.moved["block"]
    assert sum(k == "fp32" for k in kinds.values()) == best.moved["fp32"]


def test_a_point_within_noise_of_the_floor_is_decided_on_more_evidence(fp32_dir, tmp_path):
    """The floor set at the first point's own probe figure: no verdict from the probe alone
    (it is within one standard error), so the point is judged on the probe and probe-more
    pooled (280 groups), and the pooled figure against the floor decides, every time."""
    kw = dict(calibration=sets.shipped(sets.CALIBRATION)[0], threads=1, max_length=128)
    tok = fp32_dir / "tokenizer.json"
    seen = ib.quantize_accurate(
        fp32_dir / "model.onnx", tmp_path / "w0", tok,
        policy=ib.Policy(floor={"spearman_mean": 0.0}, min_speedup=0.0, cascade=False), **kw,
    )  # fmt: skip
    first = seen.frontier[0].alone
    assert first.evidence == "probe" and first.groups == 140
    at = {"spearman_mean": first.spearman_mean}
    again = ib.quantize_accurate(
        fp32_dir / "model.onnx", tmp_path / "w1", tok,
        policy=ib.Policy(floor=at, min_speedup=0.0, cascade=False), **kw,
    )  # fmt: skip
    p = again.frontier[0]
    assert p.alone.evidence == "probe + probe-more" and p.alone.groups == 280
    assert p.meets_floor is (p.alone.spearman_mean >= first.spearman_mean)


def test_the_cascade_is_measured_per_point_recorded_and_opened(fp32_dir, tmp_path):
    """With the cascade (the default) every point carries its margin, figures and speed as
    served; the entry keeps the FP32 graph and records the margin, and the loader opens
    both. Without it (--no-cascade) the entry is the INT8 file alone."""
    from edgerank.startup.load import load

    store = ModelStore(tmp_path / "home")
    d = store.import_onnx("t", fp32_dir, policy=ANY)
    m = Manifest.read(d)
    c = m.recipe["cascade"]
    assert c["margin"] == pytest.approx(2 * c["calibration_error_max"], abs=2e-5)
    assert c["calibration_groups"] == len(sets.shipped(sets.CALIBRATION)[0])
    assert m.recipe["reference_file"] == "model.fp32.onnx" and (d / "model.fp32.onnx").is_file()
    for p in m.recipe["frontier"]:
        pc = p["cascade"]
        assert 0.0 <= pc["rescored_share"] <= 1.0 and 0.0 <= pc["rescored_share_at_shape"] <= 1.0
        want = 1 / (1 / p["speed_vs_onnx_fp32"] + pc["rescored_share_at_shape"])
        assert pc["speed_vs_onnx_fp32"] == pytest.approx(want, rel=0.01)
        assert p["verdict"]["shape"] == "32x128-256"
    moved = Counter(m.recipe["matmul_kinds"].values())  # the installed point's (margins tie)
    served = next(p for p in m.recipe["frontier"]
                  if all(p.get(f"{k}_matmuls", 0) == n for k, n in moved.items()))  # fmt: skip
    assert served["cascade"]["margin"] == c["margin"]
    assert m.fidelity["spearman_mean"] == served["cascade"]["spearman_mean"]
    assert m.fidelity["int8_alone"]["spearman_mean"] == served["spearman_mean"]
    loaded = load(str(d), threads=1)
    assert loaded.cascade is not None and loaded.cascade.margin == c["margin"]
    loaded.close()
    plain = store.import_onnx(
        "p", fp32_dir, policy=ib.Policy(min_speedup=0.0, allow_below_floor=True, cascade=False)
    )
    pm = Manifest.read(plain)
    assert "cascade" not in pm.recipe and "reference_file" not in pm.recipe
    assert "cascade" not in pm.recipe["frontier"][0] and "int8_alone" not in pm.fidelity
    assert not (plain / "model.fp32.onnx").exists()
    alone = load(str(plain), threads=1)
    assert alone.cascade is None
    alone.close()


def test_a_daemon_configured_for_another_shape_rejudges_from_the_installed_files(
    fp32_dir, tmp_path
):
    """The entry keeps both graphs and the profile its install measured; the loader judges
    again at the configured request shape (no quantizing, no timing) and opens the file
    that pays there, with its own identity, and the cascade only with INT8."""
    from edgerank.models.serving import ServingPlan
    from edgerank.startup.load import load

    first = ib.Policy(floor={"spearman_mean": 0.0}, min_speedup=0.0)  # the first point
    d = ModelStore(tmp_path / "home").import_onnx("t", fp32_dir, policy=first)
    m = Manifest.read(d)
    plan = ServingPlan.from_dict(m.serving)
    assert plan.verdict.serves == "int8" and str(plan.verdict.shape) == "32x128-256"
    assert m.model_file == "model.int8.onnx" and {"model.fp32.onnx", "model.fp32.onnx.data"} <= set(
        m.files
    )
    want = [n for n in (32, 64, 128, 256, 512) if n <= m.max_length]  # rows the model holds
    assert [t.tokens for t in plan.profile.timings] == want
    assert m.recipe["request_shape"] == "32x128-256" and m.recipe["reasons"]
    # as if the install had measured INT8 slower than FP32 everywhere but at its own shape
    m.serving["cutoff"] = 1e9
    m.write(d)
    here = load(str(d), threads=1)
    assert here.backend.info().precision == "int8" and here.cascade is not None
    there = load(str(d), threads=1, request_shape="100x64")
    info = there.backend.info()
    assert info.precision == "fp32" and there.cascade is None
    assert "100x64" in info.details["serving"] and info.identity != here.backend.info().identity
    for loaded in (here, there):
        loaded.close()


def test_cli_no_cascade_and_score_through_the_cascade(fp32_dir, tmp_path, monkeypatch):
    from edgerank.cli.main import main

    monkeypatch.setenv("EDGERANK_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ib, "FLOOR", {"spearman_mean": 0.0})
    monkeypatch.setattr(ib, "MIN_SPEEDUP", 0.0)
    runner = CliRunner()
    for name, flags in (("with", []), ("without", ["--no-cascade"])):
        done = runner.invoke(main, ["import", str(fp32_dir), "--name", name, *flags])
        assert done.exit_code == 0, done.output
        m = Manifest.read(tmp_path / "home" / "models" / name / "onnx")
        assert ("cascade" in m.recipe) is (not flags)
        scored = runner.invoke(main, ["score", "--model", name, "--threads", "1", "--json",
                                      "cat", "a cat", "a dog", "the sea"])  # fmt: skip
        assert scored.exit_code == 0, scored.output
        assert len(json.loads(scored.stdout)["results"]) == 3
    wrong = runner.invoke(main, ["import", str(fp32_dir), "--name", "g", "--backend", "gguf",
                                 "--no-cascade"])  # fmt: skip
    assert wrong.exit_code != 0 and "--no-cascade" in wrong.output


def _largest_pair(path) -> int:
    """The largest |wq[2i] + wq[2i+1]| over the file's token-kind int8 weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    largest = 0
    for node in model.graph.node:
        if node.op_type == "MatMulIntegerToFloat":
            wq = numpy_helper.to_array(inits[node.input[1]])
            largest = max(largest, int(int8_files.pair_sums(wq).max()))
    return largest


@pytest.mark.parametrize(
    "portable, kernel, bounded",
    [(True, "vnni", True), (None, "avx2", True), (None, "avx512", True), (None, "vnni", False)],
)  # fmt: skip
def test_portable_or_saturating_cpu_bounds_the_weights(
    fp32_dir, tmp_path, monkeypatch, portable, kernel, bounded
):
    """--portable-int8, or an import on a CPU whose u8 x s8 kernel saturates, builds token
    weights whose neighbouring pairs stay within int8_files.PAIR_BOUND; the recipe says so."""
    monkeypatch.setattr("edgerank.hardware.probe.int8_kernel_here", lambda: kernel)
    got = ib.quantize_accurate(
        fp32_dir / "model.onnx", tmp_path / "w", fp32_dir / "tokenizer.json",
        probe=_probe(20), calibration=sets.shipped(sets.CALIBRATION)[0],
        policy=ib.Policy(floor={"spearman_mean": 0.0}, min_speedup=0.0, portable=portable),
        threads=1, max_length=128,
    )  # fmt: skip
    assert got.recipe["saturation_safe"] is bounded
    assert (_largest_pair(got.file) <= int8_files.PAIR_BOUND) is bounded


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


def test_cli_portable_int8_lands_in_the_manifest(fp32_dir, tmp_path, monkeypatch):
    from edgerank.cli.main import main

    monkeypatch.setenv("EDGERANK_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("edgerank.hardware.probe.int8_kernel_here", lambda: "vnni")
    monkeypatch.setattr(ib, "FLOOR", {"spearman_mean": 0.0})
    monkeypatch.setattr(ib, "MIN_SPEEDUP", 0.0)
    runner = CliRunner()
    for name, flags, safe in (("plain", [], False), ("portable", ["--portable-int8"], True)):
        done = runner.invoke(main, ["import", str(fp32_dir), "--name", name, *flags])
        assert done.exit_code == 0, done.output
        m = Manifest.read(tmp_path / "home" / "models" / name / "onnx")
        assert m.recipe["saturation_safe"] is safe
        assert (_largest_pair(tmp_path / "home" / "models" / name / "onnx" / m.model_file)
                <= int8_files.PAIR_BOUND) is safe  # fmt: skip
    wrong = runner.invoke(main, ["import", str(fp32_dir), "--name", "g", "--backend", "gguf",
                                 "--portable-int8"])  # fmt: skip
    assert wrong.exit_code != 0 and "--portable-int8" in wrong.output


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


def test_cli_request_shape_lands_in_the_manifest_and_a_bad_one_is_one_line(
    fp32_dir, tmp_path, monkeypatch
):
    from edgerank.cli.main import main

    monkeypatch.setenv("EDGERANK_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ib, "FLOOR", {"spearman_mean": 0.0})
    monkeypatch.setattr(ib, "MIN_SPEEDUP", 0.0)
    runner = CliRunner()
    done = runner.invoke(main, ["import", str(fp32_dir), "--name", "t", "--request-shape",
                                "100x64-128"])  # fmt: skip
    assert done.exit_code == 0, done.output
    m = Manifest.read(tmp_path / "home" / "models" / "t" / "onnx")
    assert m.recipe["request_shape"] == "100x64-128"
    assert m.serving["verdict"]["shape"] == "100x64-128"
    listed = runner.invoke(main, ["models"])
    entry = listed.output.split("t (onnx, custom): ", 1)[1]
    assert "+ FP32 rescoring of the leader's near-ties" in entry.splitlines()[0]
    assert "why: " in entry and "100x64-128" in entry.split("why: ", 1)[1].splitlines()[0]
    bad = runner.invoke(main, ["import", str(fp32_dir), "--name", "u", "--request-shape", "lots"])
    assert bad.exit_code == 1 and "request shape 'lots'" in bad.output
    assert "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1
    wrong = runner.invoke(main, ["import", str(fp32_dir), "--name", "g", "--backend", "gguf",
                                 "--request-shape", "32x128"])  # fmt: skip
    assert wrong.exit_code != 0 and "--request-shape" in wrong.output


def test_an_import_the_box_cannot_hold_is_refused_before_it_starts(fp32_dir, tmp_path, monkeypatch):
    """One line, naming the archive route, and nothing staged or installed: the check runs
    on the FP32 graph's size before any quantizing."""
    from edgerank.cli.main import main
    from edgerank.hardware import probe as hw_probe
    from edgerank.planning.memory import import_need_mib

    real = hw_probe.probe()
    size = (fp32_dir / "model.onnx").stat().st_size / 2**20
    tight = dataclasses.replace(real, ram_available_mib=import_need_mib(size) - 1,
                                cgroup_limit_mib=None)  # fmt: skip
    monkeypatch.setattr(hw_probe, "probe", lambda *a, **k: tight)
    monkeypatch.setenv("EDGERANK_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(main, ["import", str(fp32_dir), "--name", "t"])
    assert out.exit_code == 1, out.output
    line = out.output.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "edgerank export t t.tar" in line and "edgerank import t.tar" in line
    assert ModelStore(tmp_path / "home").installed() == {}
    roomy = dataclasses.replace(tight, ram_available_mib=import_need_mib(size))
    monkeypatch.setattr(hw_probe, "probe", lambda *a, **k: roomy)
    monkeypatch.setattr(ib, "FLOOR", {"spearman_mean": 0.0})
    monkeypatch.setattr(ib, "MIN_SPEEDUP", 0.0)
    assert CliRunner().invoke(main, ["import", str(fp32_dir), "--name", "t"]).exit_code == 0
