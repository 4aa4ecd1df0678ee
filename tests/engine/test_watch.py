"""The fidelity watch: samples the configured share, rescoring only while idle, warns once
under the floor; in a daemon its gauges appear in /metrics and fall when the served INT8
file is swapped for one that ranks unlike the FP32 reference."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time

import httpx
import numpy as np
import pytest

from edgerank.backends.base import BackendInfo, Encoded, ScoreOptions
from edgerank.backends.onnx import OnnxBackend
from edgerank.backends.registry import open_reference
from edgerank.engine.watch import FidelityWatch
from edgerank.errors import BackendUnavailable
from edgerank.models.manifest import Manifest
from edgerank.testing import tiny_models
from tests.server.test_http import HttpServerThread, http_settings
from tests.support.install import any_int8


class ByLength:
    """Scores a passage by its length (or minus it): a reference and its opposite."""

    def __init__(self, sign: float = 1.0):
        self.sign = sign

    def encode(self, query, passages, options):
        return [Encoded(i, np.arange(len(p) + 1)) for i, p in enumerate(passages)]

    def score(self, batch):
        return np.array([self.sign * it.n_tokens for it in batch], dtype=np.float32)

    def info(self):
        return BackendInfo("onnx", "fake", "fp32", "cpu", 512, 1)

    def close(self):
        pass


PASSAGES = ["a", "bbbb", "cc", "dddddd", "eee"]
GOOD = np.array([len(p) for p in PASSAGES], dtype=np.float32)


async def _until(pred, what: str, limit_s: float = 30.0) -> None:
    """Wait for a condition the test caused; the limit only stops a broken run."""
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < limit_s, f"never happened: {what}"
        await asyncio.sleep(0.01)


def test_offer_keeps_the_configured_share():
    async def main():
        none = FidelityWatch(ByLength(), 0.0, idle=lambda: True, seed=1)
        every = FidelityWatch(ByLength(), 1.0, idle=lambda: True, seed=1)
        some = FidelityWatch(ByLength(), 0.25, idle=lambda: True, seed=1, pending=1000)
        for w in (none, every, some):
            for _ in range(400):
                w.offer("q", PASSAGES, ScoreOptions(), GOOD)
            w.offer("q", PASSAGES[:1], ScoreOptions(), GOOD[:1])  # one passage: no ranking
        assert len(none._pending) == 0
        assert len(every._pending) == every._pending.maxlen and every.dropped == 400 - 32
        assert 60 < len(some._pending) < 140  # 25% of 400, seeded

    asyncio.run(main())


def test_rescoring_waits_until_the_service_is_idle():
    async def main():
        idle = False
        w = FidelityWatch(ByLength(), 1.0, idle=lambda: idle, poll_s=0.001)
        task = asyncio.create_task(w.run())
        w.offer("q", PASSAGES, ScoreOptions(), GOOD)
        for _ in range(50):
            await asyncio.sleep(0.002)
        assert w.samples == 0 and len(w._pending) == 1  # busy: nothing rescored
        idle = True
        await _until(lambda: w.samples == 1, "the sample was rescored once idle")
        assert w.spearman == pytest.approx(1.0) and w.top1 == 1.0
        task.cancel()
        w.close()

    asyncio.run(main())


def test_one_warning_under_the_floor_then_again_only_after_recovery(caplog):
    async def main():
        w = FidelityWatch(ByLength(), 1.0, idle=lambda: True, window=4, min_samples=4)
        task = asyncio.create_task(w.run())

        async def feed(served, n):
            start = w.samples
            for _ in range(n):
                w.offer("q", PASSAGES, ScoreOptions(), served)
                await _until(lambda s=w.samples: s > start - 1 and not w._pending, "drained")
            await _until(lambda: w.samples == start + n, f"{n} samples")

        await feed(GOOD, 4)
        assert not w.below_floor()
        await feed(-GOOD, 2)  # half the window ranks backwards
        assert w.below_floor() and w.spearman == pytest.approx(0.0)
        await feed(-GOOD, 2)
        await feed(GOOD, 4)  # recovered
        assert not w.below_floor()
        await feed(-GOOD, 4)
        task.cancel()
        w.close()

    with caplog.at_level(logging.WARNING, logger="edgerank.engine.watch"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if "fidelity watch" in r.getMessage()]
    assert len(warnings) == 2  # once per fall under the floor


# -- in a daemon, on real files ------------------------------------------------------------


def _with_reference(entry, fp32, dest):
    """A copy of an INT8 entry that keeps ``fp32`` beside it as its reference."""
    shutil.copytree(entry, dest)
    shutil.copy2(fp32, dest / "model.fp32.onnx")
    m = Manifest.read(dest)
    m.recipe = {**m.recipe, "reference_file": "model.fp32.onnx"}
    m.files = {rel: {} for rel in (*m.files, "model.fp32.onnx")}
    m.write(dest)
    return dest


@pytest.fixture(scope="module")
def entries(tmp_path_factory, tiny_onnx_dir, tiny_bert_hf):
    """The tiny INT8 entry with its FP32 reference, and the same entry whose INT8 file was
    swapped for another model's (a deliberately bad quantization)."""
    pytest.importorskip("torch")
    from edgerank.convert.onnx_export import export_onnx
    from edgerank.install.store import ModelStore

    tmp = tmp_path_factory.mktemp("watch")
    fp32 = export_onnx(tiny_bert_hf, tmp / "fp32")
    good = _with_reference(tiny_onnx_dir, fp32, tmp / "good")
    other = ModelStore(tmp / "home").import_onnx(
        "other", tiny_models.build_tiny_bert(tmp / "other-hf", seed=5), policy=any_int8()
    )
    bad = _with_reference(tiny_onnx_dir, fp32, tmp / "bad")
    for name in ("model.int8.onnx", "model.int8.onnx.data"):  # the graph and its weights
        shutil.copy2(other / name, bad / name)
    m = Manifest.read(bad)
    m.write(bad)  # re-hash: the swap is a valid entry that ranks wrongly
    return good, bad


def _watched_gauges(entry, tmp_path, requests: int = 12) -> dict[str, float]:
    server = HttpServerThread(http_settings(tmp_path, fidelity_sample=1.0))
    try:
        server.load(OnnxBackend.from_dir(entry, threads=1))

        async def watch():
            server.service.watch_fidelity(open_reference(entry), 1.0)

        server.call(watch())
        docs = tiny_models.corpus(10, seed=4)
        with httpx.Client(base_url=server.base, timeout=60) as c:
            for i in range(requests):
                body = {"query": docs[i % 10], "documents": docs}
                assert c.post("/v2/rerank", json=body).status_code == 200
            w = server.service.watch
            server.call(_until(lambda: w.samples == requests, "every request rescored"))
            text = c.get("/metrics").text
    finally:
        server.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("edgerank_fidelity_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_daemon_gauges_appear_and_fall_for_a_bad_int8_file(entries, tmp_path):
    good, bad = entries
    g = _watched_gauges(good, tmp_path / "good")
    b = _watched_gauges(bad, tmp_path / "bad")
    assert g["edgerank_fidelity_samples"] == 12 == b["edgerank_fidelity_samples"]
    assert g["edgerank_fidelity_spearman"] > 0.9
    assert b["edgerank_fidelity_spearman"] < g["edgerank_fidelity_spearman"] - 0.3
    assert b["edgerank_fidelity_top1_agreement"] < g["edgerank_fidelity_top1_agreement"]


def test_gauges_are_absent_when_the_watch_is_off(tiny_onnx_dir, tmp_path):
    server = HttpServerThread(http_settings(tmp_path))
    try:
        server.load(OnnxBackend.from_dir(tiny_onnx_dir, threads=1))
        assert server.service.watch is None
        text = httpx.get(server.base + "/metrics", timeout=60).text
    finally:
        server.close()
    assert "edgerank_fidelity_" not in text


def test_an_entry_without_a_reference_is_refused_in_one_line(tiny_onnx_dir):
    with pytest.raises(BackendUnavailable, match="keeps no FP32 reference") as exc:
        open_reference(tiny_onnx_dir)
    assert "\n" not in str(exc.value)


def test_daemon_opens_the_reference_of_the_configured_entry(entries, tmp_path):
    from edgerank.server import daemon
    from edgerank.server.settings import load

    good, _ = entries
    settings = load({"model": str(good), "fidelity_sample": 0.5, "home": str(tmp_path)}, env={})
    ref = daemon.load_reference(settings, served="tiny-bert")
    assert ref.info().precision == "fp32"
    assert json.loads((good / "manifest.json").read_text())["recipe"]["reference_file"]
    ref.close()
