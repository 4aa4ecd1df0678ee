from __future__ import annotations

import json
import os

import pytest

from edgerank.errors import ModelCorrupt
from edgerank.models.manifest import MANIFEST, STAMP, Manifest


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"weights" * 100)
    (tmp_path / "tokenizer.json").write_text("{}")
    m = Manifest(
        name="m",
        backend="onnx",
        precision="int8",
        model_file="model.onnx",
        max_length=16,
        files={"model.onnx": {}, "tokenizer.json": {}},
    )
    m.write(tmp_path)
    return tmp_path


def test_roundtrip_and_verify(model_dir):
    m = Manifest.read(model_dir)
    assert m.files["model.onnx"]["size"] == 700
    assert len(m.files["model.onnx"]["sha256"]) == 64
    m.verify(model_dir)


def test_missing_file(model_dir):
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelCorrupt, match="tokenizer.json is missing"):
        Manifest.read(model_dir).verify(model_dir)


def test_truncated_file(model_dir):
    (model_dir / "model.onnx").write_bytes(b"weights")
    with pytest.raises(ModelCorrupt, match="partial download or corrupt"):
        Manifest.read(model_dir).verify(model_dir)


def test_same_size_altered_file_is_caught_by_sha256(model_dir):
    p = model_dir / "model.onnx"
    st = p.stat()
    p.write_bytes(b"WEIGHTS" * 100)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(ModelCorrupt, match="sha256"):
        Manifest.read(model_dir).verify(model_dir)


def test_stamp_skips_rehash_only_when_unchanged(model_dir, monkeypatch):
    import edgerank.models.manifest as mod

    calls = []
    real = mod.sha256_file
    monkeypatch.setattr(mod, "sha256_file", lambda p: calls.append(p) or real(p))
    Manifest.read(model_dir).verify(model_dir)
    assert calls == []  # stamped at write time
    (model_dir / STAMP).unlink()
    Manifest.read(model_dir).verify(model_dir)
    assert len(calls) == 2


def test_unreadable_manifest(tmp_path):
    with pytest.raises(ModelCorrupt, match="no manifest.json"):
        Manifest.read(tmp_path)
    (tmp_path / MANIFEST).write_text("{broken")
    with pytest.raises(ModelCorrupt, match="unreadable"):
        Manifest.read(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"name": "x", "unexpected": 1}))
    with pytest.raises(ModelCorrupt, match="unreadable"):
        Manifest.read(tmp_path)


@pytest.mark.parametrize(
    ("field", "bad", "what"),
    [
        ("files", "oops", '"files" must be an object'),
        ("files", {"model.onnx": "oops"}, "\"files\"['model.onnx'] must be an object"),
        ("max_length", "512", '"max_length" must be an integer'),
        ("name", ["x"], '"name" must be a string'),
    ],
)
def test_a_manifest_of_wrong_types_is_one_line(model_dir, field, bad, what):
    data = json.loads((model_dir / MANIFEST).read_text())
    data[field] = bad
    (model_dir / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ModelCorrupt, match="unreadable") as err:
        Manifest.read(model_dir).verify(model_dir)
    assert what in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "measured, here, warned",
    [("vnni", "avx2", True), ("amx", "avx512", True), ("vnni", "vnni", False),
     ("avx2", "avx2", False), ("avx2", "vnni", False), (None, "avx2", False)],
)  # fmt: skip
def test_fidelity_measured_on_a_non_saturating_kernel_is_flagged_on_avx2(measured, here, warned):
    """VNNI/AMX accumulate in int32; AVX2's u8 x s8 path can saturate, so a fidelity
    measured on the former is not proved on the latter, and the note says so."""
    fid = {"meets_floor": True, **({"int8_kernel": measured} if measured else {})}
    m = Manifest("m", "onnx", "int8", "model.int8.onnx", 512, fidelity=fid)
    note = m.fidelity_note(here)
    assert (note is not None) == warned, note
    if warned:
        assert measured in note and here in note and "re-import" in note
    fp32 = Manifest("m", "onnx", "fp32", "model.onnx", 512, fidelity=fid)
    assert fp32.fidelity_note(here) is None
    safe = {"saturation_safe": True}  # weights bounded at import: no kernel can saturate
    bounded = Manifest("m", "onnx", "int8", "model.int8.onnx", 512, fidelity=fid, recipe=safe)
    assert bounded.fidelity_note(here) is None
