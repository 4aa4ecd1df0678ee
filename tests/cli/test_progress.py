"""Progress is drawn on a terminal only: a pseudo-terminal gets the bar (carriage returns,
counts, rate), a pipe and --json get none; every run ends with its one-line summary."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys

import pytest

DOCS = [f"passage {i} about cats and rivers and the sea" for i in range(40)]


def _run(args, home, *, tty: bool) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m edgerank ARGS`, stderr on a pty if ``tty``."""
    env = {**os.environ, "EDGERANK_HOME": str(home), "TERM": "xterm", "COLUMNS": "100"}
    if not tty:
        done = subprocess.run([sys.executable, "-m", "edgerank", *args], capture_output=True,
                              text=True, env=env, timeout=600)  # fmt: skip
        return done.returncode, done.stdout, done.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "edgerank", *args], stdout=subprocess.PIPE,
                            stderr=follower, stdin=subprocess.DEVNULL, env=env)  # fmt: skip
    os.close(follower)
    err = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the pty's other end closed (Linux: EIO)
                break
            if not chunk:
                break
            err += chunk
        elif proc.poll() is not None:
            break
    out = proc.stdout.read().decode()
    code = proc.wait(timeout=600)
    os.close(leader)
    return code, out, err.decode(errors="replace")


def _summary(stderr: str) -> re.Match:
    found = re.search(
        r"edgerank: scored 40 documents, [\d,]+ tokens in \d+\.\d\d s \([\d,.]+ pairs/s\)", stderr
    )
    assert found, stderr
    return found


def test_score_draws_a_bar_on_a_terminal(tmp_path, tiny_onnx_dir):
    code, out, err = _run(["score", "cats", *DOCS, "--model", str(tiny_onnx_dir)], tmp_path,
                          tty=True)  # fmt: skip
    assert code == 0, err
    assert re.search(r"\redgerank: scoring \[#+\.*\] \d+/40 inputs [\d,.]+/s \d+\.\d s", err), err
    _summary(err)
    assert "\r" not in out and "rank  index" in out  # the table stays clean


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_no_bar_through_a_pipe_or_with_json(tmp_path, tiny_onnx_dir, extra):
    code, out, err = _run(["score", "cats", *DOCS, "--model", str(tiny_onnx_dir), *extra],
                          tmp_path, tty=False)  # fmt: skip
    assert code == 0, err
    assert "\r" not in err and "[#" not in err
    _summary(err)


def test_json_on_a_terminal_draws_nothing(tmp_path, tiny_onnx_dir):
    code, out, err = _run(["score", "cats", *DOCS, "--model", str(tiny_onnx_dir), "--json"],
                          tmp_path, tty=True)  # fmt: skip
    assert code == 0, err
    assert "\r" not in err.replace("\r\n", "\n")  # a pty turns \n into \r\n
    _summary(err)


def test_import_shows_its_stage_and_time_on_a_terminal_only(tmp_path, tiny_bert_hf):
    pytest.importorskip("onnx")
    from edgerank.convert.onnx_export import export_onnx

    src = tmp_path / "fp32"
    export_onnx(tiny_bert_hf, src)
    args = ["import", str(src), "--name", "t", "--allow-below-floor"]
    code, out, err = _run(args, tmp_path / "a", tty=True)
    assert code == 0, err
    assert re.search(r"\redgerank: import \d+:\d\d \.\.\. quantizing", err), err
    assert out.startswith("installed t (onnx)")
    code, out, err = _run(args, tmp_path / "b", tty=False)
    assert code == 0, err
    assert "\r" not in err and "edgerank: quantizing to INT8" in err  # the plain lines stay
