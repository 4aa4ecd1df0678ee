"""GGUF conversion: fetching llama.cpp's converter with pip, the BERT fixes, and `pull` /
`import --backend gguf` end to end against the fake hub.

The pip path runs the real `pip download` against a local fake sdist (PIP_NO_INDEX +
PIP_FIND_LINKS), so no network is used; the staging tests need torch (the `convert`
extra); conversions need llama-cpp-python (the `gguf` extra) and skip without it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
import textwrap

import numpy as np
import pytest

from edgerank.backends.registry import open_entry
from edgerank.catalog.load import load_catalog
from edgerank.catalog.spec import GgufSource
from edgerank.convert import gguf as convert_gguf
from edgerank.errors import BackendUnavailable, InvalidInput, ModelCorrupt
from edgerank.models.checkpoint import read_config
from tests.support.fake_hub import COMMIT, FakeHub

VERSION = "9.9.9"
TOP = f"llama_cpp_python-{VERSION}"
BACKEND = """
import os

def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name = "llama_cpp_python-{v}.dist-info"
    os.makedirs(os.path.join(metadata_directory, name))
    with open(os.path.join(metadata_directory, name, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: llama-cpp-python\\nVersion: {v}\\n")
    return name

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("a fake sdist builds nothing")
""".replace("{v}", VERSION)


def _add(tar: tarfile.TarFile, name: str, text: str = "", **attrs) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A find-links directory holding a fake llama-cpp-python sdist, and pip pointed at it."""
    links = tmp_path / "links"
    links.mkdir()
    with tarfile.open(links / f"{TOP}.tar.gz", "w:gz") as tar:
        _add(tar, f"{TOP}/PKG-INFO", f"Metadata-Version: 2.1\nName: llama-cpp-python\n"
                                     f"Version: {VERSION}\n")  # fmt: skip
        _add(tar, f"{TOP}/pyproject.toml", textwrap.dedent(f"""
            [build-system]
            requires = []
            build-backend = "fake_backend"
            backend-path = ["."]
            [project]
            name = "llama-cpp-python"
            version = "{VERSION}"
        """))  # fmt: skip
        _add(tar, f"{TOP}/fake_backend.py", BACKEND)
        vendor = f"{TOP}/vendor/llama.cpp"
        _add(tar, f"{vendor}/convert_hf_to_gguf.py", "print('fake converter')\n")
        _add(tar, f"{vendor}/conversion/__init__.py", "")
        _add(tar, f"{vendor}/gguf-py/gguf/__init__.py", "")
        _add(tar, f"{vendor}/LICENSE", "MIT\n")
        _add(tar, f"{vendor}/src/llama.cpp", "// not needed by the converter\n")
    monkeypatch.delenv(convert_gguf.ENV_SRC, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def test_converter_is_fetched_with_pip_extracted_and_cached(fake_index, tmp_path):
    home = tmp_path / "home"
    got = convert_gguf.converter_dir(home, version=VERSION)
    assert got == home / "tools" / f"llama-cpp-python-{VERSION}"
    assert (got / "convert_hf_to_gguf.py").read_text() == "print('fake converter')\n"
    assert (got / "conversion" / "__init__.py").is_file()
    assert (got / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert not (got / "src").exists()  # only the converter's parts
    assert sorted(p.name for p in (home / "tools").iterdir()) == [got.name]  # no leftovers
    shutil.rmtree(fake_index)  # cached: pip is not asked again
    assert convert_gguf.converter_dir(home, version=VERSION) == got


def test_extraction_keeps_only_plain_files_inside_the_target(tmp_path):
    sdist = tmp_path / "x.tar.gz"
    vendor = f"{TOP}/vendor/llama.cpp"
    with tarfile.open(sdist, "w:gz") as tar:
        _add(tar, f"{vendor}/convert_hf_to_gguf.py", "")
        _add(tar, f"{vendor}/conversion/__init__.py", "")
        _add(tar, f"{vendor}/conversion/../../../../escape.py", "bad = True\n")
        _add(tar, f"{vendor}/conversion/link.py", type=tarfile.SYMTYPE, linkname="/etc/passwd")
    convert_gguf._extract_converter(sdist, tmp_path / "out")
    assert (tmp_path / "out" / "conversion" / "__init__.py").is_file()
    assert not (tmp_path / "out" / "conversion" / "link.py").exists()
    assert not list(tmp_path.rglob("escape.py"))


def test_pip_failure_is_one_clear_line(fake_index, tmp_path):
    with pytest.raises(BackendUnavailable, match=r"pip could not download .*==0\.0\.1") as exc:
        convert_gguf.converter_dir(tmp_path / "home", version="0.0.1")
    assert "\n" not in str(exc.value)
    assert convert_gguf.ENV_SRC in str(exc.value)


def test_env_points_at_an_extracted_tree(tmp_path, monkeypatch):
    monkeypatch.setenv(convert_gguf.ENV_SRC, str(tmp_path))
    with pytest.raises(InvalidInput, match="no convert_hf_to_gguf.py"):
        convert_gguf.converter_dir(tmp_path / "home")
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    (tmp_path / "conversion").mkdir()
    assert convert_gguf.converter_dir(tmp_path / "home") == tmp_path


# ------------------------------------------------------------------------ BERT fixes


def test_bert_fixes_fold_the_pooler_and_segment_b_exactly(tiny_bert_hf, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    meta = convert_gguf.stage_bert_fixes(tiny_bert_hf, tmp_path / "staged")
    before = load_file(str(tiny_bert_hf / "model.safetensors"))
    after = load_file(str(tmp_path / "staged" / "model.safetensors"))
    words = before["bert.embeddings.word_embeddings.weight"]
    types = before["bert.embeddings.token_type_embeddings.weight"]
    vocab = words.shape[0]
    assert meta == {"edgerank.fixes": "pooler,segment-b", "edgerank.segment_b_offset": vocab}
    folded = after["bert.embeddings.word_embeddings.weight"]
    assert folded.shape[0] == 2 * vocab
    # what llama.cpp computes for a segment-B token (its id + V, type row 0 added) is BERT's
    ids = torch.arange(vocab)
    assert torch.allclose(folded[ids + vocab] + types[0], words[ids] + types[1], atol=1e-6)
    assert torch.equal(folded[:vocab], words)
    assert torch.equal(after["classifier.dense.weight"], before["bert.pooler.dense.weight"])
    assert torch.equal(after["classifier.out_proj.weight"], before["classifier.weight"])
    assert not any(k.startswith("bert.pooler") for k in after)
    cfg = json.loads((tmp_path / "staged" / "config.json").read_text())
    assert cfg["vocab_size"] == 2 * vocab
    assert (tmp_path / "staged" / "tokenizer.json").is_file()


def test_only_bert_sequence_classifiers_get_the_fixes(tiny_bert_hf, tiny_xlmr_hf):
    assert convert_gguf.needs_bert_fixes(read_config(tiny_bert_hf))
    assert not convert_gguf.needs_bert_fixes(read_config(tiny_xlmr_hf))


def test_layerwise_checkpoint_is_routed_to_torch(tmp_path):
    d = tmp_path / "lw"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({"architectures": ["LayerWiseMiniCPMForCausalLM"], "auto_map": {}})
    )
    with pytest.raises(BackendUnavailable, match="torch backend"):
        convert_gguf.convert(d, tmp_path / "x.gguf", tools=tmp_path)


# ------------------------------------------------------------------ pull / import end to end


@pytest.fixture
def gguf_hub(gguf_models, tmp_path, monkeypatch):
    """org/tiny-gguf: a published q8_0 GGUF; org/tiny: the checkpoint (tokenizer + weights);
    org/raw-bert-gguf: a BERT GGUF converted without edgerank's fixes."""
    root = tmp_path / "hub"
    shutil.copytree(gguf_models.hf("qwen3"), root / "org" / "tiny")
    (root / "org" / "tiny-gguf").mkdir(parents=True)
    shutil.copy2(gguf_models.gguf("qwen3", "q8_0"), root / "org" / "tiny-gguf" / "t.Q8_0.gguf")
    shutil.copytree(gguf_models.hf("bert"), root / "org" / "bert")
    (root / "org" / "raw-bert-gguf").mkdir(parents=True)
    shutil.copy2(gguf_models.gguf("bert", fixes=False), root / "org" / "raw-bert-gguf" / "b.gguf")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv(convert_gguf.ENV_SRC, str(gguf_models.tools))
    with FakeHub(root) as fake:
        monkeypatch.setenv("EDGERANK_HUB_ENDPOINT", fake.url)
        yield fake


def qwen_spec(**gguf):
    base = load_catalog().get("qwen3-reranker-0.6b")
    return dataclasses.replace(
        base, name="tiny-qwen", hub_id="org/tiny", max_length=400, gguf=GgufSource(**gguf)
    )


def test_pull_downloads_the_published_gguf_and_the_models_tokenizer(gguf_hub, tmp_path):
    from edgerank.backends.base import ScoreOptions
    from edgerank.install.store import ModelStore
    from edgerank.models.manifest import Manifest

    store = ModelStore(tmp_path / "home")
    spec = qwen_spec(repo="org/tiny-gguf", files={"q8_0": "t.Q8_0.gguf"})
    path = store.pull(spec, backend="gguf")
    m = Manifest.read(path)
    assert (m.precision, m.model_file, m.fidelity) == ("q8_0", "t.Q8_0.gguf", {"measured": False})
    assert m.source["repo"] == "org/tiny-gguf" and m.source["revision"] == COMMIT
    assert m.source["tokenizer"]["repo"] == "org/tiny"
    assert not any(r.endswith(".safetensors") for r in gguf_hub.requests)
    be = open_entry(store.entry("tiny-qwen", "gguf"), threads=1)
    assert len(be.score(be.encode("cats", ["a cat", "a bank"], ScoreOptions()))) == 2


def test_pull_refuses_a_published_bert_gguf_without_the_fixes(gguf_hub, tmp_path):
    from edgerank.install.store import ModelStore

    base = load_catalog().get("ms-marco-minilm-l6")
    spec = dataclasses.replace(
        base, name="raw-bert", hub_id="org/bert", max_length=128,
        gguf=GgufSource(repo="org/raw-bert-gguf", files={"q8_0": "b.gguf"}),
    )  # fmt: skip
    store = ModelStore(tmp_path / "home")
    with pytest.raises(ModelCorrupt, match="llama.cpp ignores"):
        store.pull(spec, backend="gguf")
    assert store.installed() == {}


def test_pull_converts_the_checkpoint_when_nothing_is_published(gguf_hub, tmp_path):
    """The whole local path: hub snapshot -> llama.cpp's converter (f32 base for a
    cross-encoder, BERT fixes) -> f16 / q8_0 / q4_k_m -> fidelity per quant -> manifest."""
    from edgerank.backends.base import ScoreOptions
    from edgerank.backends.torch import TorchBackend
    from edgerank.install.store import ModelStore
    from edgerank.models.manifest import Manifest

    base = load_catalog().get("ms-marco-minilm-l6")
    spec = dataclasses.replace(
        base, name="tiny-bert", hub_id="org/bert", max_length=128,
        gguf=GgufSource(repo="org/bert"),
    )  # fmt: skip
    store = ModelStore(tmp_path / "home")
    path = store.pull(spec, backend="gguf")
    m = Manifest.read(path)
    assert set(m.recipe["files"]) == {"f16", "q8_0", "q4_k_m"}
    assert m.recipe["converter"].startswith("llama-cpp-python==")
    assert m.recipe["keep"] == convert_gguf.CROSS_ENCODER_KEEP
    assert m.fidelity["reference"] == "gguf f16"
    assert m.fidelity["q8_0"]["spearman_mean"] > 0.8
    assert m.fidelity["q8_0"]["batch_gap"] < 1e-3
    assert m.source["revision"] == COMMIT
    be = open_entry(store.entry("tiny-bert", "gguf"), threads=1, precision="f16")
    assert be.info().details["fixes"] == ["pooler", "segment-b"]
    ref = TorchBackend(gguf_hub.root / "org" / "bert", max_length=128)
    items = ref.encode("cat river", ["cat dog river ocean", "bread", "piano music"],
                       ScoreOptions())  # fmt: skip
    assert np.max(np.abs(be.score(items) - ref.score(items))) < 0.05
