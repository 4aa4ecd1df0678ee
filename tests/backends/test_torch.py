"""The torch backend: precisions against transformers, layerwise cutoffs, remote-code opt-in,
CUDA fallback, and how the probe/choice/loader select it on GPU machines.

GPU tests carry @pytest.mark.gpu and skip only where torch sees no CUDA device.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from edgerank.backends import torch as torch_backend
from edgerank.backends.base import ScoreOptions
from edgerank.backends.registry import open_entry
from edgerank.backends.torch import TorchBackend, open_torch
from edgerank.catalog.load import load_catalog
from edgerank.errors import InvalidInput
from edgerank.hardware.facts import Gpu, Hardware
from edgerank.models.checkpoint import Checkpoint
from edgerank.models.llm_format import LlmFormat
from edgerank.planning.candidates import Wishes
from edgerank.planning.candidates import torch_placement as placement
from edgerank.planning.choice import choose
from edgerank.testing import tiny_models

CATALOG = load_catalog()
PAIRS = [
    ("how long do cats sleep", "the cat sleeps sixteen hours a day in the garden"),
    ("how long do cats sleep", "stock market price bank money"),
    ("river ship harbour", "the ship sailed down the river to the harbour island"),
    ("river ship harbour", "piano guitar song"),
    ("doctor hospital", "the nurse and the doctor work at the hospital " * 6),
    ("doctor hospital", "bread cheese apple"),
]
QUERY = "how long do cats sleep"
PASSAGES = [p for _, p in PAIRS]
LAYERWISE = dataclasses.replace(
    LlmFormat.from_spec(CATALOG.get("bge-reranker-v2-minicpm-layerwise")), cutoff_layer=4
)


def scores(be, pairs=PAIRS):
    out = []
    for q, p in pairs:
        out.append(float(be.score(be.encode(q, [p], ScoreOptions()))[0]))
    return np.array(out)


def assert_close_in_order(low, ref, rel):
    """Within ``rel`` of the largest |score| (a 16-bit float's error follows the magnitude,
    not the spread), and every pair of scores further apart than twice that keeps its order."""
    tol = rel * float(np.max(np.abs(ref))) + 0.01
    assert np.max(np.abs(low - ref)) <= tol
    for i in range(len(ref)):
        for j in range(len(ref)):
            if ref[i] - ref[j] > 2 * tol:
                assert low[i] > low[j]
    assert np.ptp(ref) > 2 * tol  # not vacuous: at least the extremes keep their order


def hardware(*, vram_free_mib=(), isa=frozenset({"avx2"}), ram_mib=16384) -> Hardware:
    gpus = tuple(Gpu(i, f"gpu{i}", 24576, free, "8.9") for i, free in enumerate(vram_free_mib))
    return Hardware(
        arch="x86_64",
        ram_total_mib=ram_mib,
        ram_available_mib=ram_mib,
        cgroup_limit_mib=None,
        cgroup_usage_mib=None,
        logical_cpus=2,
        usable_cpus=2.0,
        physical_cores=2,
        isa=isa,
        gpus=gpus,
        disk_free_mib=None,
    )


# ------------------------------------------------------------------- cross-encoders


@pytest.mark.parametrize("fixture", ["wide_bert_hf", "wide_xlmr_hf"])
def test_fp32_matches_transformers(request, fixture):
    hf_dir = request.getfixturevalue(fixture)
    max_length = 126 if fixture == "wide_xlmr_hf" else 128
    ref = np.array(tiny_models.torch_scores(hf_dir, PAIRS, max_length))
    be = TorchBackend(hf_dir, precision="fp32", threads=1, max_length=max_length)
    assert scores(be) == pytest.approx(ref, abs=1e-4)
    assert np.ptp(ref) > 0.3  # the weights are wide enough for the comparison to mean something


@pytest.mark.parametrize("fixture", ["wide_bert_hf", "wide_xlmr_hf"])
def test_bf16_on_cpu_tracks_fp32(request, fixture):
    """bf16 keeps ~3 significant digits: close to fp32, not equal (this CPU has no AMX, so
    it is slow here and never chosen; correctness is what this checks)."""
    import torch

    hf_dir = request.getfixturevalue(fixture)
    fp32 = scores(TorchBackend(hf_dir, precision="fp32", threads=1))
    be = TorchBackend(hf_dir, precision="bf16", threads=1)
    bf16 = scores(be)
    assert be.info().precision == "bf16"
    assert next(be.model.parameters()).dtype == torch.bfloat16
    assert_close_in_order(bf16, fp32, rel=0.02)
    assert not np.array_equal(bf16, fp32)  # it really ran in bf16


def test_batch_mates_and_token_sub_batches_do_not_change_scores(tiny_bert_hf):
    alone = TorchBackend(tiny_bert_hf)
    split = TorchBackend(tiny_bert_hf, model=Checkpoint("cross-encoder"), batch_tokens=64)
    items = alone.encode(QUERY, PASSAGES, ScoreOptions())
    one_batch = alone.score(items)
    assert one_batch == pytest.approx([float(alone.score([it])[0]) for it in items], abs=1e-5)
    assert split.score(items) == pytest.approx(one_batch, abs=1e-5)


def test_detect_tells_the_kind_from_config(tiny_bert_hf, tiny_xlmr_hf, tiny_qwen3_hf):
    bert = Checkpoint.detect(tiny_bert_hf)
    assert (bert.kind, bert.max_length, bert.llm) == ("cross-encoder", 128, None)
    assert Checkpoint.detect(tiny_xlmr_hf).max_length == 128  # 130 positions - XLM-R's 2
    qwen = Checkpoint.detect(tiny_qwen3_hf)
    assert qwen.kind == "llm-yes-logit"
    assert qwen.llm == LlmFormat.from_spec(CATALOG.get("qwen3-reranker-0.6b"))


def test_detect_refuses_an_unknown_causal_lm(tiny_layerwise_hf):
    with pytest.raises(InvalidInput, match="cannot tell how to score"):
        Checkpoint.detect(tiny_layerwise_hf)


# ------------------------------------------------------------------------ layerwise


def open_layerwise(hf_dir, **kw):
    return open_torch(
        hf_dir, Checkpoint("llm-layerwise", 256, LAYERWISE, True), allow_remote_code=True, **kw
    )


def manual_layer_score(model, ids, k):
    """Head k on the normed hidden state after k layers, at the last token, by hand."""
    import torch

    x = torch.tensor([ids])
    n = x.shape[1]
    with torch.no_grad():
        h = model.embed(x) + model.pos(torch.arange(n)[None])
        causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
        for layer in model.layers[:k]:
            h = layer(h, causal)
        head = model.lm_head[k - model.config.start_layer]
        return float(head(model.norm(h))[0, -1, 0])


def count_layer_calls(model):
    calls = [0] * len(model.layers)
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_layerwise_score_is_the_cutoff_head_and_later_layers_never_run(tiny_layerwise_hf):
    be = open_layerwise(tiny_layerwise_hf)
    items = be.encode(QUERY, PASSAGES, ScoreOptions())
    calls = count_layer_calls(be.model)
    got = be.score(items)
    assert calls == [1, 1, 1, 1, 0, 0]  # default cutoff 4 of 6 layers: one batch, 4 layers
    want = [manual_layer_score(be.model, it.ids.tolist(), 4) for it in items]
    assert got == pytest.approx(want, abs=1e-4)
    assert np.ptp(got) > 0.1
    assert be.info().details["cutoff_layer"] == 4


def test_layerwise_cutoff_per_request_and_mixed_in_one_batch(tiny_layerwise_hf):
    be = open_layerwise(tiny_layerwise_hf)
    shallow = be.encode(QUERY, PASSAGES[:3], ScoreOptions(), cutoff_layer=2)
    deep = be.encode(QUERY, PASSAGES[:3], ScoreOptions(), cutoff_layer=6)
    calls = count_layer_calls(be.model)
    alone = be.score(shallow)
    assert calls == [1, 1, 0, 0, 0, 0]
    mixed = be.score(shallow + deep)  # one pass to layer 6, each row reads its own layer
    assert calls == [2, 2, 1, 1, 1, 1]
    assert alone == pytest.approx(
        [manual_layer_score(be.model, it.ids.tolist(), 2) for it in shallow], abs=1e-4
    )
    assert mixed[:3] == pytest.approx(alone, abs=1e-4)
    assert mixed[3:] == pytest.approx(
        [manual_layer_score(be.model, it.ids.tolist(), 6) for it in deep], abs=1e-4
    )
    assert not np.allclose(mixed[:3], mixed[3:], atol=1e-3)


@pytest.mark.parametrize("layer", [1, 7])
def test_layerwise_cutoff_out_of_range_is_refused(tiny_layerwise_hf, layer):
    be = open_layerwise(tiny_layerwise_hf)
    with pytest.raises(InvalidInput, match="cutoff layer must be in 2..6"):
        be.encode(QUERY, PASSAGES, ScoreOptions(), cutoff_layer=layer)


def test_remote_code_runs_only_on_opt_in(tiny_layerwise_hf):
    model = Checkpoint("llm-layerwise", 256, LAYERWISE, remote_code=False)
    with pytest.raises(InvalidInput, match="--allow-remote-code"):
        open_torch(tiny_layerwise_hf, model)  # config.json's auto_map alone is enough to refuse
    assert open_torch(tiny_layerwise_hf, model, allow_remote_code=True).info().backend == "torch"


# ------------------------------------------------------------------- CUDA fallback


def test_cuda_failing_at_load_falls_back_to_cpu_and_logs_why(tiny_bert_hf, monkeypatch, caplog):
    def broken(torch, device):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(torch_backend, "start_cuda", broken)
    with caplog.at_level(logging.WARNING, logger="edgerank.torch"):
        be = TorchBackend(tiny_bert_hf, precision="fp16", device="cuda:0", cpu_precision="fp32")
    info = be.info()
    assert (info.device, info.precision) == ("cpu", "fp32")
    assert "no kernel image" in info.details["fallback"]
    assert any("no kernel image" in r.getMessage() for r in caplog.records)
    assert scores(be) == pytest.approx(scores(TorchBackend(tiny_bert_hf)), abs=1e-6)


def test_cuda_absent_falls_back_on_a_cpu_only_torch(tiny_bert_hf, tiny_qwen3_hf, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the forced failure above covers the fallback")
    be = TorchBackend(tiny_bert_hf, precision="fp16", device="cuda:0")
    assert "is_available() is False" in be.info().details["fallback"]
    # past the context check, moving the weights fails too: still a fallback, not a crash
    monkeypatch.setattr(torch_backend, "start_cuda", lambda torch, device: None)
    qwen = open_torch(tiny_qwen3_hf, precision="fp16", device="cuda:0")
    assert qwen.info().device == "cpu"
    assert qwen.info().details["fallback"].startswith("cuda:0: ")


# ------------------------------------------------------------------------ selection


def test_placement_follows_the_hardware():
    assert placement(hardware()) == ("cpu", "fp32", "fp32")
    assert placement(hardware(isa=frozenset({"avx512f", "amx_bf16"}))) == ("cpu", "bf16", "bf16")
    assert placement(hardware(vram_free_mib=(2000, 9000))) == ("cuda:1", "fp16", "fp32")


WITH_TORCH = frozenset({"onnx", "biencoder", "torch"})


def test_gpu_with_room_and_torch_installed_chooses_cuda_fp16():
    choice = choose(CATALOG, hardware(vram_free_mib=(20000,)), Wishes(), WITH_TORCH)
    assert (choice.backend, choice.precision, choice.device) == ("torch", "fp16", "cuda:0")
    assert choice.memory_budget_mib == 20000
    without = choose(CATALOG, hardware(vram_free_mib=(20000,)), Wishes(), WITH_TORCH - {"torch"})
    assert without.device == "cpu"


def test_gpu_too_small_keeps_the_cpu_path_and_says_why():
    choice = choose(CATALOG, hardware(vram_free_mib=(300,)), Wishes(), WITH_TORCH)
    assert choice.device == "cpu"
    gpu_verdicts = {v.candidate.model: v for v in choice.reasons if v.candidate.device == "cuda:0"}
    assert not any(v.accepted for v in gpu_verdicts.values())
    for small in ("ms-marco-tinybert-l2", "ms-marco-minilm-l6"):  # nothing else against them
        assert "free VRAM on cuda:0 300 MiB" in gpu_verdicts[small].reason


def test_loader_opens_the_chosen_torch_entry_and_falls_back_when_cuda_fails(
    tmp_path, tiny_bert_hf, monkeypatch, caplog
):
    from edgerank.hardware import probe
    from edgerank.install.store import ModelStore
    from edgerank.startup import load as loader

    store = ModelStore(tmp_path / "home")
    spec = CATALOG.get("ms-marco-minilm-l6")
    store.import_torch(spec.name, tiny_bert_hf, spec=dataclasses.replace(spec, max_length=128))
    assert store.installed() == {spec.name: ["torch"]}
    monkeypatch.setattr(probe, "probe", lambda **kw: hardware(vram_free_mib=(20000,)))

    def broken(torch, device):
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(torch_backend, "start_cuda", broken)
    with caplog.at_level(logging.WARNING, logger="edgerank.torch"):
        loaded = loader.load(None, threads=1, store=store)
    info = loaded.backend.info()
    assert (info.backend, info.model, info.device, info.precision) == (
        "torch",
        spec.name,
        "cpu",
        "fp32",
    )
    assert "driver version is insufficient" in loaded.note
    assert any("driver version is insufficient" in r.getMessage() for r in caplog.records)
    assert loaded.token_budget == 16384  # the GPU choice's budget, from choose()
    assert scores(loaded.backend) == pytest.approx(scores(TorchBackend(tiny_bert_hf)), abs=1e-5)


def test_store_torch_entry_roundtrip(tmp_path, tiny_bert_hf, tiny_qwen3_hf, monkeypatch):
    from edgerank.hardware import probe
    from edgerank.startup import load as loader

    # an AVX2-only machine: the loader places torch at FP32 there (BF16 on AVX512-BF16/AMX),
    # the precision the entry opened directly below scores at
    monkeypatch.setattr(probe, "probe", lambda **kw: hardware())
    from edgerank.install.store import ModelStore
    from edgerank.models.manifest import Manifest

    store = ModelStore(tmp_path / "home")
    path = store.import_torch("my-ce", tiny_bert_hf)
    m = Manifest.read(path)
    assert (m.backend, m.precision, m.max_length, m.recipe["kind"]) == (
        "torch",
        "fp32",
        128,
        "cross-encoder",
    )
    be = open_entry(store.entry("my-ce", "torch"), threads=1)
    assert scores(be) == pytest.approx(scores(TorchBackend(tiny_bert_hf)), abs=1e-6)
    store.import_torch("tiny-qwen", tiny_qwen3_hf)
    by_dir = loader.load(str(store.path("tiny-qwen", "torch")), threads=1).backend
    assert by_dir.info().details["score_rule"] == "yes-no-softmax"
    plain = loader.load(str(tiny_bert_hf), threads=1).backend  # a checkpoint with no manifest
    assert scores(plain) == pytest.approx(scores(be), abs=1e-6)


# ------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("fixture", ["wide_bert_hf", "wide_xlmr_hf"])
def test_fp16_on_cuda_tracks_fp32(request, fixture):
    hf_dir = request.getfixturevalue(fixture)
    fp32 = scores(TorchBackend(hf_dir, precision="fp32"))
    be = TorchBackend(hf_dir, precision="fp16", device="cuda:0")
    assert be.info().device == "cuda:0"
    assert "fallback" not in be.info().details
    assert_close_in_order(scores(be), fp32, rel=0.005)


@pytest.mark.gpu
def test_llm_and_layerwise_on_cuda(tiny_qwen3_hf, tiny_layerwise_hf):
    model = Checkpoint(
        "llm-yes-logit", 400, LlmFormat.from_spec(CATALOG.get("qwen3-reranker-0.6b"))
    )
    cpu = open_torch(tiny_qwen3_hf, model)
    gpu = open_torch(tiny_qwen3_hf, model, precision="fp16", device="cuda:0")
    items = cpu.encode(QUERY, PASSAGES, ScoreOptions())
    ref = cpu.score(items)
    assert gpu.score(items) == pytest.approx(ref, abs=0.02 * np.ptp(ref) + 0.02)
    lw = open_layerwise(tiny_layerwise_hf, precision="fp16", device="cuda:0")
    lw_cpu = open_layerwise(tiny_layerwise_hf)
    items = lw_cpu.encode(QUERY, PASSAGES, ScoreOptions())
    ref = lw_cpu.score(items)
    assert lw.info().device == "cuda:0"
    assert lw.score(items) == pytest.approx(ref, abs=0.02 * np.ptp(ref) + 0.02)
