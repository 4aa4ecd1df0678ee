"""The newcomer's path, on a fresh venv with the base install (`pip install .`, no extras):
every command `score`, `serve` and `probe` suggest, and every line of the README's "Using
it", either works or refuses in one line naming the extra it needs. Downloads come from a
loopback stand-in for the hub (tests/support/fake_hub.py) serving tiny models built here,
under the catalog's repository and file names.

Slow by nature (a venv from pip's cache, about a minute, then a few dozen CLI runs), and
part of the default run: it is what a user meets first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from edgerank.catalog.load import load_catalog
from edgerank.catalog.spec import ModelSpec
from edgerank.models.manifest import Manifest
from tests.support.fake_hub import FakeHub

REPO = Path(__file__).resolve().parent.parent
DOCS = ["Cats sleep up to sixteen hours a day.", "The stock market fell on Monday."]
#: a refusal that names the extra to install
EXTRA = re.compile(r"pip install 'edgerank\[[a-z,]+\]'")
#: commands a line of output suggests: `edgerank ...`, or `pip install ... && edgerank ...`
SUGGESTED = re.compile(r"`((?:pip install '[^']+' && )?edgerank [^`]+)`")

pytestmark = pytest.mark.slow


def _tracked_tree(dest: Path) -> Path:
    """The checkout as a fresh clone has it (no venv, no build outputs), to `pip install`."""
    skip = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info",
                                  ".pytest_cache", ".ruff_cache", "dist")  # fmt: skip
    shutil.copytree(REPO, dest, ignore=skip, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("newcomer")
    src = _tracked_tree(root / "src")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)],
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    extras = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.util as u; print([m for m in ('onnx', 'torch', 'llama_cpp') "
         "if u.find_spec(m)])"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert extras.stdout.strip() == "[]", "the base install must bring no extra"
    return venv


class Hub:
    """The fake hub, with each catalog model's repository built on demand from the tiny
    BERT: its FP32 export and every INT8 file the catalog names, onnxruntime's dynamic INT8
    as publishers ship it."""

    def __init__(self, root: Path, tiny_hf: Path):
        self.root, self.tiny_hf = root, tiny_hf
        self._fp32: Path | None = None

    def add(self, spec: ModelSpec) -> None:
        from edgerank.convert import int8_files, onnx_export

        src = spec.onnx
        repo = self.root / src.repo
        if repo.exists():
            return
        if self._fp32 is None:
            self._fp32 = onnx_export.export_onnx(self.tiny_hf, self.root.parent / "tiny-fp32")
        for f in ("config.json", "tokenizer.json"):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.tiny_hf / f, repo / f)
        if src.fp32_file:
            (repo / src.fp32_file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self._fp32, repo / src.fp32_file)
        for f in {src.int8_file, *src.int8_isa.values()} - {None}:
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            int8_files.build(self._fp32, repo / f, {}, "dynamic")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The fake hub; its tiny BERT has the 512 positions of the catalog's BERT rerankers."""
    pytest.importorskip("onnx")  # builds the hub's files here (the venv under test has none)
    from edgerank.testing.tiny_models import build_tiny_bert

    base = tmp_path_factory.mktemp("hub")
    tiny = build_tiny_bert(base / "tiny-bert-512", max_positions=512)
    (base / "repos").mkdir()
    with FakeHub(base / "repos") as fake:
        yield fake, Hub(base / "repos", tiny)


class Box:
    """The newcomer's shell: the fresh venv first on PATH, a store of its own, the hub."""

    def __init__(self, venv: Path, home: Path, cwd: Path, hub_url: str):
        self.cwd = cwd
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("EDGERANK_", "HF_"))},
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "EDGERANK_HOME": str(home),
            "EDGERANK_HUB_ENDPOINT": hub_url,
            "HF_HOME": str(home.parent / "hf"),
            "VIRTUAL_ENV": str(venv),
        }
        self.env.pop("PYTHONPATH", None)

    def sh(self, line: str, home: Path | None = None) -> subprocess.CompletedProcess:
        env = self.env if home is None else {**self.env, "EDGERANK_HOME": str(home)}
        return subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env,
                              cwd=self.cwd, timeout=900)  # fmt: skip

    def start(self, line: str) -> Daemon:
        return Daemon(subprocess.Popen(["bash", "-c", f"exec {line}"], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, env=self.env,
                                       cwd=self.cwd))  # fmt: skip


class Daemon:
    """A background `edgerank serve` whose log is read as it comes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        """The log so far, once a line matches ``pattern`` (a daemon that exits fails)."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, "".join(self.lines)):
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.2)
        return "".join(self.lines)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=120) == 0, "".join(self.lines)
        self._reader.join(timeout=30)


def works_or_names_the_extra(done: subprocess.CompletedProcess, line: str) -> bool:
    """True when it worked; False when it refused in one line naming the extra; else fail."""
    if done.returncode == 0:
        return True
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, f"{line}: exit {done.returncode}\n{done.stderr[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("edgerank: error: "), (line, done.stderr)
    assert EXTRA.search(lines[0]), f"{line}: refused without naming an extra: {lines[0]}"
    return False


def _models_in(command: str) -> list[ModelSpec]:
    catalog = load_catalog()
    return [catalog.get(w) for w in shlex.split(command) if w in catalog]


def try_suggested(box: Box, hub: Hub, text: str, scratch: Path) -> set[str]:
    """Run every command ``text`` suggests (into a scratch store); the ones run."""
    ran = set()
    for command in dict.fromkeys(SUGGESTED.findall(text)):
        pip, _, edgerank = command.rpartition(" && ")
        for spec in _models_in(edgerank):
            if spec.onnx is not None:
                hub.add(spec)
        done = box.sh(edgerank, home=scratch)
        worked = works_or_names_the_extra(done, command)
        if pip:  # the suggestion installs an extra first: without it, refused naming it
            assert not worked and pip.split("[")[1] in done.stderr, (command, done.stderr)
        ran.add(command)
    return ran


def using_it_lines() -> list[str]:
    """The README's "Using it" block, one command a line, comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip()]


def _ports(log: str) -> tuple[int, int]:
    grpc = re.search(r"tcp port (\d+)", log)
    http = re.search(r"http://127\.0\.0\.1:(\d+)", log)
    assert grpc and http, log
    return int(grpc.group(1)), int(http.group(1))


def test_the_newcomer_path_on_the_base_install(venv, hub, tmp_path, tiny_store):
    fake, repos = hub
    cwd = tmp_path / "work"
    cwd.mkdir()
    box = Box(venv, tmp_path / "home", cwd, fake.url)
    scratch = tmp_path / "scratch-home"
    suggested: set[str] = set()

    # the README's set-up: ranks offline with the fallback, and says what to pull
    first = box.sh(f"edgerank score 'how long do cats sleep' {shlex.join(DOCS)}")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[2].endswith(DOCS[0])
    note = next(ln for ln in first.stderr.splitlines() if "note:" in ln)
    assert "embedded bi-encoder" in note and "--prebuilt-int8`" in note
    suggested |= try_suggested(box, repos, first.stderr, scratch)

    for args in ("probe", "probe --explain"):
        probe = box.sh(f"edgerank {args}")
        assert probe.returncode == 0, probe.stderr
        suggested |= try_suggested(box, repos, probe.stdout, scratch)

    serve = box.start("edgerank serve --listen 127.0.0.1:0 --http 127.0.0.1:0")
    try:
        log = serve.wait_for(r"serving all-minilm-l6-v2")
    finally:
        serve.stop()
    suggested |= try_suggested(box, repos, log, scratch)
    assert any("--prebuilt-int8" in c for c in suggested) and len(suggested) > 3

    # the README's "Using it", line by line, with its files made here
    (cwd / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS) + "\n")
    (cwd / "docs.txt").write_text("\n".join(DOCS) + "\n")
    entry = cwd / "dev" / "models" / "my-reranker" / "onnx"  # made on "a bigger box"
    shutil.copytree(tiny_store.path("tiny-bert", "onnx"), entry)
    renamed = Manifest.read(entry)
    renamed.name = "my-reranker"
    renamed.write(entry)
    from edgerank.install import archive
    from edgerank.install.store import ModelStore

    archive.export(ModelStore(cwd / "dev"), "my-reranker", "onnx", cwd / "my-reranker.tar")
    shutil.copytree(repos.tiny_hf, cwd / "my-checkpoint")
    for spec in _models_in(" ".join(using_it_lines())):
        repos.add(spec)
    daemon = None
    refused = []
    try:
        for line in using_it_lines():
            if line.startswith("edgerank serve"):  # on free ports: the defaults may be taken
                line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:0", line)
                daemon = box.start(line + " --listen 127.0.0.1:0" * ("--listen" not in line))
                grpc_port, http_port = _ports(daemon.wait_for(r"serving "))
                health = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=30)
                assert health.status == 200
                continue
            if "--server" in line:
                assert daemon is not None, "the README runs the daemon before asking it"
                line = line.replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}")
            if not works_or_names_the_extra(box.sh(line), line):
                refused.append(line)
    finally:
        if daemon is not None:
            daemon.stop()
    assert refused == ["edgerank import ./my-checkpoint --name mine"]

    # the views agree with what runs
    models = box.sh("edgerank models")
    assert "ms-marco-minilm-l6 (onnx, catalog): the publisher's INT8 file" in models.stdout
    assert "my-reranker (onnx, custom): INT8" in models.stdout
    would = re.search(r"would run: (\S+) on (\S+) (\S+)", box.sh("edgerank probe").stdout)
    scored = box.sh(f"edgerank score cats {shlex.join(DOCS)}")
    assert scored.stdout.startswith(f"# {would.group(1)} ({would.group(2)} {would.group(3)})")
