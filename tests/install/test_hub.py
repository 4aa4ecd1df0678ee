from __future__ import annotations

import socket

import pytest

from edgerank.errors import HubUnreachable, ModelNotFound
from edgerank.install import hub
from tests.support.fake_hub import COMMIT, FakeHub


@pytest.fixture
def fake_repo(tmp_path):
    repo = tmp_path / "hub" / "org" / "reranker"
    (repo / "onnx").mkdir(parents=True)
    (repo / "config.json").write_text('{"model_type": "bert"}')
    (repo / "tokenizer.json").write_text("{}")
    (repo / "onnx" / "model.onnx").write_bytes(bytes(range(256)) * 40)
    (repo / "model.safetensors").write_bytes(b"\0" * 64)
    return tmp_path / "hub"


@pytest.fixture
def served(fake_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with FakeHub(fake_repo) as fake:
        monkeypatch.setenv("EDGERANK_HUB_ENDPOINT", fake.url)
        yield fake


def test_fetch_downloads_files_and_records_commit(served, fake_repo, tmp_path):
    dest = tmp_path / "out"
    facts = hub.fetch("org/reranker", ["onnx/model.onnx", "config.json"], dest)
    assert facts["revision"] == COMMIT and facts["repo"] == "org/reranker"
    assert (dest / "onnx" / "model.onnx").read_bytes() == (
        fake_repo / "org" / "reranker" / "onnx" / "model.onnx"
    ).read_bytes()
    assert any(r.startswith("GET /org/reranker/resolve/") for r in served.requests)


def test_fetch_checkpoint_takes_weights_config_tokenizer(served, tmp_path):
    facts = hub.fetch_checkpoint("org/reranker", tmp_path / "ckpt")
    got = {p.name for p in (tmp_path / "ckpt").iterdir() if not p.name.startswith(".")}
    assert got == {"config.json", "tokenizer.json", "model.safetensors"}  # no onnx/ dir
    assert facts["revision"] == COMMIT


def test_missing_repo_and_file_are_model_errors(served, tmp_path):
    with pytest.raises(ModelNotFound, match="repository 'org/nope' not found"):
        hub.fetch("org/nope", ["config.json"], tmp_path / "a")
    with pytest.raises(ModelNotFound, match="'nope.json' not found"):
        hub.fetch("org/reranker", ["nope.json"], tmp_path / "b")


def test_unreachable_hub_is_one_clear_error(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("EDGERANK_HUB_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnreachable, match="offline"):
        hub.fetch("org/reranker", ["config.json"], tmp_path / "c")
