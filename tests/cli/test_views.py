"""After an install, the views agree with what runs: `probe` names the entry `score` and
`serve` open, `models` lists every entry with what it is, and `import` ends with a summary
read from the manifest it wrote."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from click.testing import CliRunner

from edgerank.cli.entries import describe
from edgerank.cli.main import main
from edgerank.cli.summary import summary
from edgerank.models.manifest import Manifest
from tests.support.hardware import pretend_avx2


@pytest.fixture
def home(tmp_path, monkeypatch, tiny_onnx_dir):
    """A store holding one custom import (the tiny INT8 cross-encoder) and nothing else."""
    home = tmp_path / "home"
    shutil.copytree(tiny_onnx_dir, home / "models" / "mine" / "onnx")
    manifest = Manifest.read(home / "models" / "mine" / "onnx")
    manifest.name = "mine"
    manifest.write(home / "models" / "mine" / "onnx")
    monkeypatch.setenv("EDGERANK_HOME", str(home))
    pretend_avx2(monkeypatch)
    return home


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_probe_says_the_import_serves_as_score_does(home):
    probe = run("probe", "--explain")
    assert probe.exit_code == 0, probe.output
    assert "would run: mine on onnx int8" in probe.stdout
    assert "because mine is a custom import" in probe.stdout
    assert "mine (onnx, custom): INT8" in probe.stdout
    # the catalog's fallback is not presented as the choice, nor its warning
    assert "chosen: all-minilm-l6-v2" not in probe.stdout
    assert "no reranker can run here" not in probe.stdout
    scored = run("score", "cat river", "cat dog river", "bread", "--json")
    assert json.loads(scored.stdout)["model"] == "mine (onnx int8)"
    assert "embedded bi-encoder" not in scored.stderr
    plan = json.loads(run("probe", "--json").stdout)["plan"]
    assert (plan["model"], plan["source"], plan["entry"]["precision"]) == ("mine", "custom", "int8")


def test_models_lists_every_installed_entry_with_what_it_is(home):
    out = run("models")
    assert out.exit_code == 0, out.output
    listing = out.stdout.split("installed in", 1)[1]
    assert "mine (onnx, custom): INT8 (" in listing
    assert "all-minilm-l6-v2 (biencoder, embedded)" in listing
    assert re.search(r"mine .*; \d+\.\d MiB on disk", listing)
    assert "vs onnx fp32 on " in listing and "Spearman" in listing
    rows = json.loads(run("models", "--json").stdout)
    custom = next(r for r in rows if r["name"] == "mine")
    assert custom["catalog"] is False and custom["installed"] == ["onnx"]
    (entry,) = custom["entries"]
    assert entry["precision"] == "int8" and entry["disk_bytes"] > 0
    fallback = next(r for r in rows if r["name"] == "all-minilm-l6-v2")
    assert fallback["quality"] == {}  # not "en=0": it has no rerank figure
    assert "en=0" not in out.stdout


def _manifest(tmp_path, **fields):
    d = tmp_path / "entry"
    d.mkdir()
    # MiB per file: each graph with its weights in an external-data file, as installed
    sizes = {"model.int8.onnx": 1, "model.int8.onnx.data": 2, "model.fp32.onnx": 1,
             "model.fp32.onnx.data": 8, "tokenizer.json": 9}  # fmt: skip
    for f, mib in sizes.items():
        (d / f).write_bytes(b"x" * (mib << 20))
    m = Manifest(name="mine", backend="onnx", model_file="model.int8.onnx", max_length=512,
                 files={f: {} for f in sizes}, **fields)  # fmt: skip
    m.write(d)
    return Manifest.read(d), d


def test_the_import_summary_of_an_int8_install_with_its_cascade(tmp_path):
    fid = {"reference": "onnx fp32 (the same graph, fused)", "int8_kernel": "vnni",
           "groups": 140, "spearman_mean": 0.99132, "top1_kept": 1.0,
           "speed_vs_onnx_fp32": 1.744, "rescored_share": 0.1795,
           "int8_alone": {"spearman_mean": 0.9886, "top1_kept": 0.95, "speed_vs_onnx_fp32": 2.538},
           "floor": {"spearman_mean": 0.99, "top1_kept": 0.97}, "meets_floor": True}  # fmt: skip
    recipe = {"matmuls": 32, "matmul_kinds": {"a": "block", "b": "block"},
              "base": {"token": "...", "block": "...", "fp32": "..."},
              "cascade": {"margin": 0.83}, "reference_file": "model.fp32.onnx"}  # fmt: skip
    m, d = _manifest(tmp_path, precision="int8", recipe=recipe, fidelity=fid)
    text = "\n".join(summary(describe(m, d, False), "from ./ckpt", 272.4, int(1.9 * (1 << 30))))
    assert text.splitlines()[0] == f"installed mine (onnx) from ./ckpt, in {d}"
    assert "what:     INT8 (32 MatMuls: 30 token, 2 block) + FP32 rescoring" in text
    assert "why:      the fastest INT8 point meeting the floor (Spearman >= 0.99" in text
    assert "Spearman 0.991, its top-1 kept 100.0% (18% of pairs rescored in FP32" in text
    assert "INT8 alone 0.989, 95.0%" in text
    assert "speed:    1.74x the FP32 graph's speed on the probe (vnni int8 kernel)" in text
    assert "2.54x without rescoring" in text
    assert (
        "size:     21.0 MiB on disk; serving loads 12.0 MiB (the model file and its FP32 "
        "reference, 9.0 MiB mapped)" in text
    )
    assert (
        "serving loads 12.0 MiB (the FP32 reference's 9.0 mapped)"
        in describe(m, d, False).lines()[0]
    )
    assert "took:     4 min 32 s, peak memory 1.90 GiB" in text
    assert "{" not in text  # no JSON blob


def test_the_import_summary_says_why_fp32_was_installed(tmp_path):
    recipe = {"int8_rejected": "slower than 1.1x ONNX FP32 before the floor held",
              "frontier": [{"speed_vs_onnx_fp32": 1.3, "spearman_mean": 0.98, "top1_kept": 0.9,
                            "cascade": {"speed_vs_onnx_fp32": 1.05, "spearman_mean": 0.995,
                                        "top1_kept": 1.0}}]}  # fmt: skip
    m, d = _manifest(tmp_path, precision="fp32", recipe=recipe, fidelity={"reference": "itself"})
    text = "\n".join(summary(describe(m, d, True), "from the hub", 33.0, 1 << 30))
    assert "what:     the FP32 graph (not INT8)" in text
    assert (
        "why:      INT8 was not installed: slower than 1.1x ONNX FP32 before the floor held" in text
    )
    assert "(fastest INT8 measured: 1.05x, Spearman 0.995, top-1 kept 100%)" in text
    assert "fidelity: it is the reference (exact)" in text
    assert "took:     33.0 s" in text


def test_import_ends_with_the_summary_or_json(tmp_path, monkeypatch, tiny_bert_hf):
    pytest.importorskip("onnx")
    from edgerank.convert import backoff
    from edgerank.convert.onnx_export import export_onnx

    monkeypatch.setenv("EDGERANK_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(backoff, "MIN_SPEEDUP", 0.0)  # the entry, not this box's verdict
    src = tmp_path / "fp32"
    export_onnx(tiny_bert_hf, src)
    out = CliRunner().invoke(main, ["import", str(src), "--name", "t", "--allow-below-floor"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"installed t (onnx) from {src}, in ")
    assert [ln.split(":")[0].strip() for ln in lines[1:4]] == ["what", "why", "fidelity"]
    assert "took:" in out.stdout and "peak memory" in out.stdout
    again = CliRunner().invoke(main, ["import", str(src), "--name", "t", "--allow-below-floor",
                                      "--json"])  # fmt: skip
    entry = json.loads(again.stdout)
    assert entry["name"] == "t" and entry["precision"] == "int8" and entry["seconds"] > 0
