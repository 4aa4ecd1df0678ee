from __future__ import annotations

import dataclasses
import shutil

import pytest

from edgerank.backends.onnx import OnnxBackend
from edgerank.backends.registry import open_entry
from edgerank.catalog.load import load_catalog
from edgerank.catalog.spec import GgufSource, OnnxSource
from edgerank.engine.rank import score_documents
from edgerank.errors import BackendUnavailable, InvalidInput, ModelCorrupt, ModelNotFound
from edgerank.install.store import ModelStore
from edgerank.models.manifest import Manifest
from edgerank.store.layout import home
from edgerank.testing.tiny_models import torch_scores
from tests.support.fake_hub import COMMIT, FakeHub
from tests.support.install import any_int8

PAIRS = [("cat river", "cat dog river ocean"), ("cat river", "bread cheese apple"),
         ("music", "piano guitar song music"), ("music", "doctor nurse")]  # fmt: skip


def test_home_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGERANK_HOME", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:{tmp_path}/other")
    assert home() == tmp_path / "state"
    monkeypatch.setenv("EDGERANK_HOME", str(tmp_path / "eh"))
    assert home() == tmp_path / "eh"
    monkeypatch.delenv("EDGERANK_HOME")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert home() == tmp_path / "xdg" / "edgerank"


def test_imported_model_matches_torch_and_records_its_provenance(tiny_store, tiny_bert_hf):
    d = tiny_store.path("tiny-bert", "onnx")
    m = Manifest.read(d)
    assert m.precision == "int8" and m.recipe["name"]
    assert m.source["origin"].startswith("local:")
    assert set(m.fidelity) >= {"spearman_mean", "top1_kept", "batch_gap", "floor", "probe"}
    assert tiny_store.installed() == {"tiny-bert": ["onnx"]}
    be = open_entry(tiny_store.entry("tiny-bert"))
    ours = []
    for q, p in PAIRS:
        ours.append(float(score_documents(be, q, [p]).raw[0]))
    ref = torch_scores(tiny_bert_hf, PAIRS, max_length=be.info().max_length)
    assert ours == pytest.approx(ref, abs=0.05)  # int8 on random weights: close, not equal


def test_import_of_an_onnx_dir_needs_no_export(tmp_path, tiny_bert_hf, monkeypatch):
    from edgerank.convert import onnx_export

    src = tmp_path / "onnx-src"
    onnx_export.export_onnx(tiny_bert_hf, src)
    monkeypatch.setattr(onnx_export, "export_onnx", _must_not_run)
    target = ModelStore(tmp_path / "home").import_onnx("from-onnx", src, policy=any_int8())
    assert (target / "model.int8.onnx").is_file()


def _must_not_run(*args, **kwargs):
    raise AssertionError("export must not run when an FP32 ONNX file is given")


def test_import_refuses_non_checkpoints(tmp_path):
    store = ModelStore(tmp_path / "home")
    with pytest.raises(InvalidInput, match="not a directory"):
        store.import_onnx("x", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="lacks tokenizer.json"):
        store.import_onnx("x", tmp_path / "empty")
    assert store.installed() == {}


def test_open_detects_corruption(tmp_path, tiny_onnx_dir):
    store = ModelStore(tmp_path / "home")
    d = store.path("copy")
    shutil.copytree(tiny_onnx_dir, d)
    open_entry(store.entry("copy")).close()
    with open(d / "model.int8.onnx", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ModelCorrupt, match="partial download or corrupt"):
        open_entry(store.entry("copy"))
    with pytest.raises(ModelNotFound, match="edgerank pull other"):
        open_entry(store.entry("other"))


# -- pull, against a loopback fake of the hub --------------------------------------------------


@pytest.fixture
def hub_repo(tmp_path, tiny_bert_hf):
    """org/tiny: an HF checkpoint plus onnx/model.onnx (fp32) and onnx/model_qint8.onnx."""
    from edgerank.convert import int8_files, onnx_export

    repo = tmp_path / "hub" / "org" / "tiny"
    shutil.copytree(tiny_bert_hf, repo)
    fp32 = onnx_export.export_onnx(tiny_bert_hf, tmp_path / "export")
    (repo / "onnx").mkdir()
    shutil.copy2(fp32, repo / "onnx" / "model.onnx")
    # what publishers ship: onnxruntime's dynamic INT8 of the plain export
    int8_files.build(fp32, repo / "onnx" / "model_qint8.onnx", {}, "dynamic")
    return tmp_path / "hub"


@pytest.fixture
def spec():
    base = load_catalog().get("ms-marco-minilm-l6")
    return dataclasses.replace(
        base,
        name="tiny-pulled",
        hub_id="org/tiny",
        max_length=64,
        onnx=OnnxSource(repo="org/tiny", int8_file="onnx/model_qint8.onnx",
                        fp32_file="onnx/model.onnx"),
        gguf=GgufSource(repo="org/tiny-gguf"),
    )  # fmt: skip


@pytest.fixture
def hub(hub_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with FakeHub(hub_repo) as fake:
        monkeypatch.setenv("EDGERANK_HUB_ENDPOINT", fake.url)
        yield fake


def _scores(d):
    be = OnnxBackend.from_dir(d)
    try:
        return score_documents(be, "cat river", ["cat dog river", "bread"]).raw.tolist()
    finally:
        be.close()


def test_pull_quantizes_the_hubs_fp32_onnx(hub, spec, tmp_path):
    d = ModelStore(tmp_path / "home").pull(spec, policy=any_int8())
    m = Manifest.read(d)
    assert m.source["revision"] == COMMIT and m.source["repo"] == "org/tiny"
    assert m.model_file == "model.int8.onnx" and m.fidelity["groups"] > 0
    assert not any("/resolve/" in r and r.endswith(".safetensors") for r in hub.requests)
    assert len(_scores(d)) == 2


def test_pull_prebuilt_int8_keeps_the_hubs_file(hub, spec, tmp_path):
    d = ModelStore(tmp_path / "home").pull(spec, prebuilt_int8=True)
    m = Manifest.read(d)
    assert m.model_file == "onnx/model_qint8.onnx" and m.recipe["name"] == "hub-prebuilt"
    # the hub also has the FP32 file: the publisher's INT8 is measured against it
    assert m.fidelity["reference"] == "onnx fp32 (the publisher's)"
    assert m.fidelity["groups"] >= 100 and "meets_floor" in m.fidelity
    assert len(_scores(d)) == 2


def test_pull_exports_a_checkpoint_when_the_hub_has_no_onnx(hub, spec, tmp_path):
    spec = dataclasses.replace(spec, onnx=OnnxSource(repo="org/tiny"))
    d = ModelStore(tmp_path / "home").pull(spec, policy=any_int8())
    assert Manifest.read(d).source["revision"] == COMMIT
    assert any(r.endswith("model.safetensors") for r in hub.requests)
    assert len(_scores(d)) == 2


def test_pull_refuses_what_it_cannot_serve(tmp_path):
    store = ModelStore(tmp_path / "home")
    catalog = load_catalog()
    with pytest.raises(InvalidInput, match="embedded"):
        store.pull(catalog.get("all-minilm-l6-v2"))
    with pytest.raises(BackendUnavailable, match="no ONNX build"):
        store.pull(catalog.get("qwen3-reranker-0.6b"))


def test_interrupted_pull_leaves_nothing_installed(hub, spec, tmp_path, monkeypatch):
    from edgerank.convert import int8_files

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(int8_files, "build", boom)
    store = ModelStore(tmp_path / "home")
    with pytest.raises(KeyboardInterrupt):
        store.pull(spec, policy=any_int8())
    assert store.installed() == {}
    assert not store.path("tiny-pulled").exists()


def test_pull_prebuilt_without_fp32_is_fidelity_unmeasured(hub, spec, tmp_path):
    spec = dataclasses.replace(spec, onnx=dataclasses.replace(spec.onnx, fp32_file=None))
    d = ModelStore(tmp_path / "home").pull(spec, prebuilt_int8=True)
    m = Manifest.read(d)
    assert m.fidelity["measured"] is False
    assert m.fidelity_note() == "tiny-pulled: the publisher's INT8 file, fidelity unmeasured"


def test_pull_without_prebuilt_never_takes_the_publishers_int8(hub, spec, tmp_path):
    d = ModelStore(tmp_path / "home").pull(spec, policy=any_int8())
    assert Manifest.read(d).recipe["name"] != "hub-prebuilt"
    assert not any(r.endswith("model_qint8.onnx") for r in hub.requests)


def test_pull_keeps_the_fp32_reference_when_asked(hub, spec, tmp_path):
    d = ModelStore(tmp_path / "home").pull(spec, policy=any_int8(), keep_reference=True)
    m = Manifest.read(d)
    assert m.recipe["reference_file"] == "model.fp32.onnx" and "model.fp32.onnx" in m.files
    from edgerank.backends.registry import open_reference

    assert open_reference(d).info().precision == "fp32"
