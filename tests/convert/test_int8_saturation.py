"""The ``bounded`` INT8 file on a saturating kernel: AVX2's u8 x s8 path adds neighbouring
products into int16 (vpmaddubsw). The kernel itself runs under qemu-x86_64 -cpu Haswell,
which has AVX2 and no VNNI, so this holds on any x86 host, the VNNI ones included."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgerank.convert import int8_files  # noqa: E402
from edgerank.testing.onnx_graphs import one_matmul  # noqa: E402

K, N = 64, 8
QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
#: CI installs qemu-user-static and sets this: there, a missing qemu is a failure
REQUIRED = os.environ.get("EDGERANK_AVX2_EMULATION") == "1"


def _quantized(w: np.ndarray, bounded: bool) -> np.ndarray:
    scale = int8_files.weight_scales(w, bounded)
    return np.clip(np.round(w / scale), -127, 127)


def test_bounded_scales_keep_every_pair_under_the_bound():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((97, 40)) * 0.05).astype(np.float32)  # odd K: a lone last row
    w[10:12, 3] = 0.4  # a same-sign neighbouring pair, the case vpmaddubsw cannot hold
    w[20, 5], w[21, 5] = 0.4, -0.4  # opposite signs: 255 x 127 fits, no bound needed
    w[96, 7] = 0.5
    pairs = int8_files.pair_sums
    assert pairs(_quantized(w, bounded=False)).max() > int8_files.PAIR_BOUND  # the control
    assert pairs(_quantized(w, bounded=True)).max() <= int8_files.PAIR_BOUND
    loose, tight = int8_files.weight_scales(w, False), int8_files.weight_scales(w, True)
    assert tight[3] > loose[3]
    # columns whose pairs were already in bound keep full resolution
    assert tight[5] == pytest.approx(loose[5]) and tight[7] == pytest.approx(loose[7])


_RUN = """
import json, sys
import numpy as np, onnxruntime as ort
x = np.array(json.loads(sys.stdin.read()), dtype=np.float32)
for path in sys.argv[1:]:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    print(json.dumps(sess.run(None, {"x": x})[0].tolist()))
"""


def _on_haswell(x: np.ndarray, *paths) -> list[np.ndarray]:
    """Each file's output for ``x``, run under qemu-x86_64 -cpu Haswell (AVX2, no VNNI)."""
    if QEMU is None:
        if REQUIRED:
            pytest.fail("qemu-x86_64-static is missing (apt-get install qemu-user-static)")
        pytest.skip("qemu-x86_64-static not installed: no AVX2-only CPU to run on")
    run = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, "-c", _RUN, *map(str, paths)],
        input=json.dumps(x.tolist()), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return [np.array(json.loads(line)) for line in run.stdout.splitlines()]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="qemu-x86_64 emulates x86 hosts' CPUs")
def test_bounded_file_is_exact_on_an_avx2_kernel(tmp_path):
    """Same-sign weights and activations near the top of the u8 range: the unbounded file
    saturates on the emulated Haswell (the control: the kernel really is vpmaddubsw's),
    the bounded one stays within its rounding of the FP32 product."""
    rng = np.random.default_rng(3)
    w = rng.uniform(0.5, 1.0, (K, N)).astype(np.float32)
    one_matmul(tmp_path / "fp32.onnx", w)
    files = {
        bounded: str(int8_files.build(tmp_path / "fp32.onnx", tmp_path / f"{bounded}.onnx",
                                      {}, "token", bounded=bounded))
        for bounded in (False, True)
    }  # fmt: skip
    x = rng.uniform(0.9, 1.0, (1, 4, K)).astype(np.float32)
    x[..., 0] = -1.0  # the row's minimum: every other entry quantizes near 255
    loose, tight = _on_haswell(x, files[False], files[True])
    want = x.astype(np.float64) @ w
    rel = lambda got: float(np.abs(got - want).max() / np.abs(want).max())  # noqa: E731
    assert rel(loose) > 0.1  # saturated: pair sums clipped at 32767
    assert rel(tight) < 0.02


@pytest.mark.skipif(platform.machine() != "x86_64", reason="qemu-x86_64 emulates x86 hosts' CPUs")
def test_the_zero_point_columns_do_not_saturate_on_an_avx2_kernel(tmp_path):
    """Rows below zero quantize with zero point 255, and weights of one sign make large
    column sums: the offset rows that carry -z x col_sums through the GEMM (two of them
    side by side in each int16 pair) must still fit, or the bounded file is wrong on AVX2
    wherever a row sits below zero."""
    rng = np.random.default_rng(5)
    w = rng.uniform(0.2, 1.0, (K, N)).astype(np.float32)
    one_matmul(tmp_path / "fp32.onnx", w)
    path = int8_files.build(tmp_path / "fp32.onnx", tmp_path / "b.onnx", {}, "token", bounded=True)
    x = rng.uniform(-1.0, -0.1, (1, 4, K)).astype(np.float32)  # z = 255 on every row
    (got,) = _on_haswell(x, path)
    want = x.astype(np.float64) @ w
    assert float(np.abs(got - want).max() / np.abs(want).max()) < 0.02
