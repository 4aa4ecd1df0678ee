"""`edgerank export` / `edgerank import FILE`: a model quantized on one box, served on another.

The serving side is checked the way a serving-only install sees the world: onnx and onnx-ir
made unimportable in a real subprocess (the `quantize` extra absent).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerank.cli.main import main
from edgerank.models.manifest import MANIFEST

QUERY = "where do cats sleep"
DOCS = ["Cats sleep for up to sixteen hours a day.", "The stock market fell on Monday."]
#: a serving-only install: the quantize extra's modules cannot be imported
NO_QUANTIZE = (
    "import sys; sys.modules['onnx'] = None; sys.modules['onnx_ir'] = None; "
    "from edgerank.cli.main import main; main()"
)


def cli(home: Path, *args: str):
    env = {"EDGERANK_HOME": str(home)}
    return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


def serving_only(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGERANK_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-c", NO_QUANTIZE, *args], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def one_error_line(stderr: str, fragment: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgerank: error: "), stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def archive(tiny_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-bert.tar"
    r = cli(tiny_store.root, "export", "tiny-bert", str(out))
    assert r.exit_code == 0, r.output
    return out


def test_export_holds_the_manifest_and_exactly_its_files(archive, tiny_store) -> None:
    src = tiny_store.path("tiny-bert", "onnx")
    listed = json.loads((src / MANIFEST).read_text())["files"]
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
    assert names == sorted(f"tiny-bert/onnx/{f}" for f in [MANIFEST, *listed])


def test_import_installs_unchanged_and_serves_without_the_quantize_extra(
    archive, tiny_store, tmp_path
) -> None:
    home = tmp_path / "edge"
    r = serving_only(home, "import", str(archive))
    assert r.returncode == 0, r.stderr
    src, dst = tiny_store.path("tiny-bert", "onnx"), home / "models" / "tiny-bert" / "onnx"
    for f in [MANIFEST, *json.loads((src / MANIFEST).read_text())["files"]]:
        assert (dst / f).read_bytes() == (src / f).read_bytes(), f

    def ranked(h: Path, run) -> list[tuple[int, float]]:
        out = run(h, "score", "-m", "tiny-bert", "--json", QUERY, *DOCS)
        text = out.stdout  # score's summary line goes to stderr
        return [(x["index"], round(x["raw_score"], 5)) for x in json.loads(text)["results"]]

    assert ranked(home, serving_only) == ranked(tiny_store.root, cli)


def test_a_tampered_archive_is_refused_with_one_line(archive, tmp_path) -> None:
    bad = tmp_path / "bad.tar"
    with tarfile.open(archive) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith(".onnx"):
                data = data[:-1] + bytes([data[-1] ^ 0x01])  # one bit, same size
            dst.addfile(m, io.BytesIO(data))
    home = tmp_path / "edge"
    r = serving_only(home, "import", str(bad))
    assert r.returncode == 1
    one_error_line(r.stderr, "fails its sha256 check")
    assert not (home / "models" / "tiny-bert").exists()
    assert list((home / "models").iterdir()) == []  # no staging left behind


@pytest.mark.parametrize(
    ("member", "fragment"),
    [
        ("tiny-bert/onnx/extra.bin", "extra.bin is not in the manifest"),
        ("tiny-bert/onnx/../../escape.txt", "unexpected member"),
        ("/etc/passwd", "unexpected member"),
    ],
)
def test_an_archive_with_foreign_members_is_refused(archive, tmp_path, member, fragment) -> None:
    bad = tmp_path / "bad.tar"
    with tarfile.open(archive) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        info = tarfile.TarInfo(member)
        info.size = 3
        dst.addfile(info, io.BytesIO(b"hi\n"))
    home = tmp_path / "edge"
    r = cli(home, "import", str(bad))
    assert r.exit_code == 1
    one_error_line(r.stderr, fragment)
    assert not (home / "models" / "tiny-bert").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_a_truncated_archive_is_refused(archive, tmp_path) -> None:
    bad = tmp_path / "cut.tar"
    bad.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    r = cli(tmp_path / "edge", "import", str(bad))
    assert r.exit_code == 1
    one_error_line(r.stderr, str(bad))


@pytest.mark.parametrize("kind", ["empty", "garbage", "cut gzip", "cut tar.gz header"])
def test_a_file_that_is_no_archive_is_one_line(archive, tiny_store, tmp_path, kind) -> None:
    """Before: tarfile's error, one line per decompressor it tried (5 lines)."""
    gz = tmp_path / "whole.tar.gz"
    assert cli(tiny_store.root, "export", "tiny-bert", str(gz)).exit_code == 0
    content = {
        "empty": b"",
        "garbage": os.urandom(4096),
        "cut gzip": gz.read_bytes()[: gz.stat().st_size // 2],
        "cut tar.gz header": gz.read_bytes()[:20],
    }[kind]
    bad = tmp_path / ("bad.tar.gz" if "gzip" in kind or "gz" in kind else "bad.tar")
    bad.write_bytes(content)
    r = cli(tmp_path / "edge", "import", str(bad))
    assert r.exit_code == 1
    one_error_line(r.stderr, str(bad))
    assert not (tmp_path / "edge" / "models" / "tiny-bert").exists()


def test_gzip_archives_round_trip(tiny_store, tmp_path) -> None:
    out = tmp_path / "tiny.tar.gz"
    assert cli(tiny_store.root, "export", "tiny-bert", str(out)).exit_code == 0
    with open(out, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    r = cli(tmp_path / "edge", "import", str(out))
    assert r.exit_code == 0, r.output


def test_export_of_a_model_not_installed_says_so(tmp_path) -> None:
    r = cli(tmp_path / "home", "export", "nope", str(tmp_path / "x.tar"))
    assert r.exit_code == 1
    one_error_line(r.stderr, "'nope'")
    assert not (tmp_path / "x.tar").exists()


def test_quantizing_without_the_extra_names_it_in_one_line(tiny_bert_hf, tmp_path) -> None:
    r = serving_only(tmp_path / "edge", "import", str(tiny_bert_hf), "--name", "t")
    assert r.returncode == 1
    one_error_line(r.stderr, "pip install 'edgerank[quantize]'")
