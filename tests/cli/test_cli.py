from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgerank.cli.main import main
from edgerank.models.manifest import Manifest
from tests.support.hardware import pretend_avx2

DOCS = ["Cats sleep for up to sixteen hours a day.", "The stock market fell on Monday."]


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERANK_HOME", str(tmp_path / "home"))

    def invoke(*args, input=None):
        return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)

    return invoke


def _one_error_line(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgerank: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "stdin", "fragment"),
    [
        (["score"], None, "no query"),
        (["score", "   ", "doc"], None, "no query"),
        (["score", "cats"], "", "no documents"),
        (["score", "cats", "--docs", "/nonexistent/docs.txt"], None, "cannot read documents"),
        (["score", "cats", "a", "--docs", "x.txt"], None, "not both"),
        (["score", "cats", "a", "--top-n", "-1"], None, "--top-n must be >= 0"),
        (["score", "cats", "a", "--model", "bge-reranker-v2-mmm"], None, "bge-reranker-v2-m3"),
        (["score", "cats", "a", "--model", "ms-marco-minilm-l6"], None, "edgerank pull"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(run, args, stdin, fragment):
    _one_error_line(run(*args, input=stdin), fragment)


def test_documents_that_are_not_utf8_are_one_line_and_a_usage_exit(tmp_path):
    """From a pipe, in the C locale's UTF-8 mode (stdin surrogateescape) and a file alike."""
    env = {"EDGERANK_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    bad = tmp_path / "docs.txt"
    bad.write_bytes(b"fine\na\xff\n")
    for args, stdin in (([], b"a\xff\n"), (["--docs", str(bad)], b"")):
        done = subprocess.run(
            [sys.executable, "-X", "utf8", "-m", "edgerank", "score", "q", *args],
            input=stdin, capture_output=True, env=env, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "not UTF-8" in lines[0], lines


def test_a_query_that_is_not_utf8_shows_its_bytes(tmp_path):
    """Before: b'??' (the bytes replaced), not what was sent."""
    env = {"EDGERANK_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    done = subprocess.run(
        [sys.executable, "-X", "utf8", "-m", "edgerank", "score", b"ca\xfft", "doc"],
        capture_output=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.decode().strip().splitlines()
    assert "the query is not UTF-8 text (byte 2: b'\\xff')" in line, line


def test_corrupt_model_dir_is_one_line(run, tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"not an onnx graph")
    (d / "tokenizer.json").write_text("{}")
    Manifest(
        name="broken", backend="onnx", precision="int8", model_file="model.onnx",
        max_length=16, files={"model.onnx": {}, "tokenizer.json": {}},
    ).write(d)  # fmt: skip
    _one_error_line(run("score", "q", "doc", "--model", str(d)), "")
    (d / "model.onnx").write_bytes(b"x")  # now also truncated
    _one_error_line(run("score", "q", "doc", "--model", str(d)), "partial download or corrupt")


def test_fallback_ranks_and_says_so(run):
    result = run("score", "how long do cats sleep", *DOCS, "--json")
    assert result.exit_code == 0, result.output
    assert "embedded bi-encoder" in result.stderr and "edgerank pull" in result.stderr
    out = json.loads(result.stdout)
    assert [r["index"] for r in out["results"]] == [0, 1]
    for r in out["results"]:
        assert 0.0 <= r["relevance_score"] <= 1.0 and -1.0 <= r["raw_score"] <= 1.0


def test_documents_from_file_stdin_and_jsonl(run, tmp_path):
    plain = tmp_path / "docs.txt"
    plain.write_text("\n".join(DOCS) + "\n\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d}) for d in DOCS))
    outs = [
        run("score", "cats sleeping", "--docs", str(plain), "--json"),
        run("score", "cats sleeping", "--docs", str(jsonl), "--json"),
        run("score", "cats sleeping", "--json", input="\n".join(DOCS)),
    ]
    parsed = [json.loads(o.stdout)["results"] for o in outs]
    assert parsed[0] == parsed[1] == parsed[2]
    assert [r["document"] for r in parsed[0]] == [DOCS[0], DOCS[1]]


def test_table_output_and_top_n(run):
    result = run("score", "cats", *DOCS, "--top-n", "1")
    assert result.exit_code == 0
    rows = [line for line in result.stdout.splitlines() if not line.startswith(("#", "rank"))]
    assert len(rows) == 1 and "Cats sleep" in rows[0]


def test_score_on_an_onnx_model_dir(run, tiny_onnx_dir):
    from edgerank.backends.onnx import OnnxBackend
    from edgerank.engine.rank import score_documents

    docs = ["cat dog river", "ocean ship harbour island", "bread cheese"]
    result = run("score", "cat river", *docs, "--model", str(tiny_onnx_dir), "--json")
    assert result.exit_code == 0, result.output
    got = {r["index"]: r["raw_score"] for r in json.loads(result.stdout)["results"]}
    direct = score_documents(OnnxBackend.from_dir(tiny_onnx_dir), "cat river", docs).raw
    assert [got[i] for i in range(3)] == pytest.approx(direct.tolist(), abs=1e-6)


def test_score_batches_a_catalog_model_by_the_planners_shape(
    run, tmp_path, tiny_onnx_dir, monkeypatch
):
    from edgerank.engine import rank
    from tests.support.calibration import MODEL, calibrated, store_with
    from tests.support.hardware import avx2_machine

    pretend_avx2(monkeypatch)
    store = store_with(tmp_path / "home", tiny_onnx_dir)  # the run fixture's EDGERANK_HOME
    calibrated(store, avx2_machine(), {"8192x0": 100.0, "8192x2": 200.0})
    seen, real = [], rank.score_documents

    def spy(backend, query, documents, options, token_budget=8192, max_batch=None, **kw):
        seen.append((token_budget, max_batch))
        return real(backend, query, documents, options, token_budget, max_batch, **kw)

    monkeypatch.setattr(rank, "score_documents", spy)
    result = run("score", "cat river", *DOCS, "--model", MODEL, "--json")
    assert result.exit_code == 0, result.output
    assert seen == [(8192, 2)]  # the measured cap, at the budget the memory allows


def test_onnx_path_never_imports_torch(tiny_onnx_dir, tmp_path):
    env = {"EDGERANK_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edgerank", "score", "q", "a", "b",
         "--model", str(tiny_onnx_dir)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "onnxruntime" in imported  # the check sees real imports
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
    assert "transformers" not in imported


def test_score_through_a_running_daemon(tiny_onnx_dir, tmp_path):
    """`score --server` against a real `edgerank serve` subprocess on a Unix socket."""
    import os
    import time

    sock = tmp_path / "er.sock"
    env = {**os.environ, "EDGERANK_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerank", "serve", "--model", str(tiny_onnx_dir), "--listen",
         "", "--socket", str(sock), "--threads", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        docs = ["cat dog river", "ocean ship", "bread"]
        while True:
            result = CliRunner().invoke(
                main, ["score", "cat", *docs, "--server", f"unix:{sock}", "--json"]
            )
            if result.exit_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert result.exit_code == 0, result.output
        remote = {r["index"]: r["raw_score"] for r in json.loads(result.stdout)["results"]}
        local = CliRunner().invoke(
            main, ["score", "cat", *docs, "--model", str(tiny_onnx_dir), "--json"]
        )
        assert local.exit_code == 0
        here = {r["index"]: r["raw_score"] for r in json.loads(local.stdout)["results"]}
        assert remote == pytest.approx(here, abs=1e-6)
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_score_runs_a_checkpoints_own_code_only_with_the_flag(run, tmp_path):
    """The layerwise MiniCPM reranker ships its modelling code: refused unless allowed."""
    pytest.importorskip("torch")
    import dataclasses

    from edgerank.catalog.load import load_catalog
    from edgerank.install.store import ModelStore
    from edgerank.testing import tiny_llms

    spec = load_catalog().get("bge-reranker-v2-minicpm-layerwise")
    spec = dataclasses.replace(spec, max_length=256, cutoff_layer=4)  # the tiny one has 6
    ckpt = tiny_llms.build_tiny_layerwise(tmp_path / "layerwise")
    ModelStore(tmp_path / "home").import_torch("layerwise", ckpt, spec=spec)
    args = ("score", "cats", "cats sleep", "dogs bark", "--model", "layerwise")
    _one_error_line(run(*args), "--allow-remote-code")
    allowed = run(*args, "--allow-remote-code")
    assert allowed.exit_code == 0, allowed.output
    assert "cats sleep" in allowed.stdout and "dogs bark" in allowed.stdout


def test_import_a_checkpoint_as_a_torch_entry(run, tiny_bert_hf, monkeypatch):
    pytest.importorskip("torch")
    pretend_avx2(monkeypatch)  # FP32 placement, whatever this CPU has
    result = run("import", str(tiny_bert_hf), "--name", "my-ce", "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert "installed my-ce" in result.stdout
    scored = run("score", "cats", "cats sleep", "dogs bark", "--model", "my-ce", "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["model"].endswith("(torch fp32)")


def test_bench_reports_the_backend_and_this_cpus_gemm_peaks(run, tiny_onnx_dir):
    args = ("--model", str(tiny_onnx_dir), "--threads", "1", "--rounds", "1")
    result = run("bench", *args, "--pairs", "2", "--tokens", "16", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {r["runtime"] for r in out["throughput"]} == {"edgerank:onnx/int8"}
    (gemm,) = out["gemm"]
    assert gemm["threads"] == 1 and gemm["int8_gops"] > 0 and gemm["fp32_gflops"] > 0
    table = run("bench", *args, "--pairs", "2", "--tokens", "16")
    assert "GEMM through onnxruntime (ISA:" in table.stdout and "int8_x_fp32" in table.stdout


def test_server_takes_a_grpc_address_not_an_http_url(run):
    _one_error_line(run("score", "q", "doc", "--server", "http://127.0.0.1:8080"), "gRPC address")


def test_every_score_option_says_what_it_does(run):
    help_text = run("score", "--help").stdout
    blocks = re.split(r"\n  (?=-)", help_text.split("Options:", 1)[1])
    for option in ("--backend", "--truncation", "--direction"):
        block = next(b for b in blocks if b.startswith(option))
        words = block.split(None, 2)[2]  # past the option and its metavar
        assert len(words.split()) >= 5, block


def test_serve_help_is_short_and_its_booleans_are_flags(run):
    help_text = run("serve", "--help").stdout
    assert len(help_text.splitlines()) < 80 and "[ " not in help_text
    assert "--allow-remote-code  " in help_text and "BOOLEAN" not in help_text
    assert "EDGERANK_MAX_QUEUE_PAIRS" in help_text  # the variables' rule, said once
    assert "--http" in help_text


def test_a_cpu_torch_candidate_names_the_cpu_wheel_not_cuda():
    from edgerank.planning.candidates import extra_hint

    assert "edgerank[convert]" in extra_hint("torch", "cpu")
    assert "edgerank[cuda]" in extra_hint("torch", "cuda:0")


def test_import_names_every_extra_it_needs_in_one_refusal(run, tiny_bert_hf, monkeypatch):
    from edgerank import errors

    monkeypatch.setattr(errors, "extras_here", lambda: frozenset())  # a base install
    result = run("import", str(tiny_bert_hf), "--name", "x")
    _one_error_line(result, "pip install 'edgerank[convert]'")
    assert "`convert` and `quantize` extras" in result.stderr
    pulled = run("pull", "ms-marco-minilm-l6")
    _one_error_line(pulled, "pip install 'edgerank[quantize]'")
    assert "edgerank pull ms-marco-minilm-l6 --prebuilt-int8" in pulled.stderr
