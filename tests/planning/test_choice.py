"""choose() on hand-built Hardware records: RAM and GPU tiers, languages, opt-ins, forcing.

Expected choices follow from the figures in models.toml (int8 weights, quality per group)
and the memory model documented in edgerank/choose.py:
  need = weights + activations (37.5 KiB/token at hidden 384 .. 68.75 at 1024, fp32) + 150,
  and for an ONNX INT8 candidate its FP32 reference (the cascade's): the FP32 weights' encoder
  share, 12 x layers x hidden^2 of params_m (planning/memory.reference_mib).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerank.catalog.load import load_catalog
from edgerank.errors import InvalidInput, ModelNotFound
from edgerank.hardware.facts import Gpu, Hardware
from edgerank.planning.candidates import Choice, Wishes, quality_for
from edgerank.planning.choice import choose
from edgerank.planning.explain import explain
from edgerank.planning.measured import Measured
from edgerank.planning.memory import activation_kib_per_token, memory_need

CATALOG = load_catalog(Path(__file__).resolve().parents[2] / "models.toml")
BASE = frozenset({"onnx", "biencoder"})
WITH_GGUF = BASE | {"gguf"}
WITH_TORCH = BASE | {"torch"}
EVERYTHING = BASE | {"gguf", "torch"}
GIB = 1024
RAM_TIERS = (512, 1 * GIB, 2 * GIB, 4 * GIB, 8 * GIB, 16 * GIB, 32 * GIB)
GPU_TIERS = (4 * GIB, 8 * GIB, 16 * GIB, 24 * GIB)
AVX2 = frozenset({"avx2"})


def hw(
    ram_mib: int,
    *,
    vram_free_mib: tuple[int, ...] = (),
    isa: frozenset[str] = AVX2,
    cores: int = 2,
    usable: float = 2.0,
    cgroup_limit_mib: int | None = None,
) -> Hardware:
    """A box whose whole RAM is free; GPUs with the given free VRAM (80 GiB total)."""
    gpus = tuple(Gpu(i, f"gpu{i}", 80 * GIB, free) for i, free in enumerate(vram_free_mib))
    return Hardware(
        arch="x86_64",
        ram_total_mib=ram_mib,
        ram_available_mib=ram_mib,
        cgroup_limit_mib=cgroup_limit_mib,
        cgroup_usage_mib=0 if cgroup_limit_mib else None,
        logical_cpus=cores * 2,
        usable_cpus=usable,
        physical_cores=cores,
        isa=isa,
        gpus=gpus,
        disk_free_mib=None,
    )


def pick(choice: Choice) -> tuple[str, str, str, str]:
    return choice.model.name, choice.backend, choice.precision, choice.device


def run(ram: int, langs=("en",), backends=BASE, **kw) -> Choice:
    vram = kw.pop("vram", ())
    isa = kw.pop("isa", AVX2)
    installed = kw.pop("installed_models", None)
    return choose(
        CATALOG,
        hw(ram, vram_free_mib=vram, isa=isa),
        Wishes(languages=tuple(langs), **kw),
        installed_backends=backends,
        installed_models=installed,
    )


# ---------------------------------------------------------------------- memory model


def test_activation_model_matches_models_md():
    """models.md: ~0.3 GB (small) to ~0.55 GB (large) of activations at batch 16 x 512."""
    tokens = 16 * 512
    assert activation_kib_per_token(384) * tokens / 1024 == pytest.approx(300)
    assert activation_kib_per_token(1024) * tokens / 1024 == pytest.approx(550)
    assert activation_kib_per_token(128) < activation_kib_per_token(384)


def test_memory_need_is_weights_plus_activations_plus_overhead():
    c = run(4 * GIB)  # bge-reranker-v2-m3 int8 at the full batch
    assert pick(c)[:3] == ("bge-reranker-v2-m3", "onnx", "int8")
    assert c.batch_token_budget == 8192
    # int8 570 + its FP32 reference 1207 (2270 x 302M encoder / 568M params) + 550 + 150
    assert c.memory_need_mib == 570 + 1207 + 550 + 150
    assert c.memory_budget_mib == 4 * GIB
    assert "FP32 reference 1207" in memory_need(c.model, "onnx", "int8", False, 4 * GIB)[2]
    gguf = memory_need(c.model, "gguf", "q8_0", False, 4 * GIB)
    assert "reference" not in gguf[2]  # only the ONNX INT8 install keeps one


def test_budget_is_the_tighter_of_hardware_and_ceiling():
    box = hw(64 * GIB, cgroup_limit_mib=1 * GIB)
    assert choose(CATALOG, box).memory_budget_mib == 1 * GIB
    c = run(64 * GIB, memory_ceiling_mib=700)
    assert c.memory_budget_mib == 700 and c.memory_need_mib <= 700


# ------------------------------------------------------------------------- RAM tiers

# en, base install (onnx + biencoder); an ONNX INT8 candidate carries its FP32 reference:
#   512: v2-m3 (570 + 1207) and mxbai-large exceed the budget; the best en model left is
#        jina-v1-turbo (49.60): its ready ONNX INT8 file runs no hub code,
#        38 + 43 reference + 150 (4096 tokens at hidden 384) + 150 = 381 MiB.
#   1 GiB: still jina-v1-turbo, now at 8192 tokens (531 MiB): v2-m3 needs 1962 at 512.
#   2 GiB: v2-m3 (55.36) at 1024 tokens: 570 + 1207 + 69 + 150 = 1996 MiB.
#   4 GiB+: v2-m3 at the full 8192 tokens (2477 MiB); no better en model on onnx.
# zh: 512 -> nothing zh fits (bge-reranker-base 280 + 340 + ...) -> the bi-encoder fallback;
#     1 GiB -> bge-reranker-base (63.42) at 4096 tokens (995); 16 GiB -> v2-m3 (72.16).
# multi: 512 and 1 GiB -> nothing multilingual fits -> the bi-encoder fallback;
#        8 GiB -> v2-m3 (58.36).
# With gguf (LLMs only with half the budget at 8192 tokens):
#   qwen3-0.6b q8_0: 639 + (112 KV + 68.75) KiB x 8192 + 150 = 2235 -> from 8 GiB (4096 half)
#   qwen3-4b q8_0: 4300 + 2 x 143.75 KiB x 8192 + 150 = 6750 -> from 16 GiB
#   qwen3-8b q8_0: 8600 + 2 x 218.75 KiB x 8192 + 150 = 12250 -> from 32 GiB (zh, multi)
EXPECTED_RAM = {
    ("en", BASE): {
        512: ("jina-reranker-v1-turbo-en", "onnx", "int8", 4096),
        1 * GIB: ("jina-reranker-v1-turbo-en", "onnx", "int8", 8192),
        2 * GIB: ("bge-reranker-v2-m3", "onnx", "int8", 1024),
        4 * GIB: ("bge-reranker-v2-m3", "onnx", "int8", 8192),
        8 * GIB: ("bge-reranker-v2-m3", "onnx", "int8", 8192),
        16 * GIB: ("bge-reranker-v2-m3", "onnx", "int8", 8192),
        32 * GIB: ("bge-reranker-v2-m3", "onnx", "int8", 8192),
    },
    ("en", WITH_GGUF): {
        512: ("jina-reranker-v1-turbo-en", "onnx", "int8", 4096),
        1 * GIB: ("bge-reranker-v2-m3", "gguf", "q8_0", 2048),  # 636 + 138 + 150: no reference
        4 * GIB: ("bge-reranker-v2-m3", "onnx", "int8", 8192),
        8 * GIB: ("qwen3-reranker-0.6b", "gguf", "q8_0", 8192),
        16 * GIB: ("qwen3-reranker-4b", "gguf", "q8_0", 8192),
        32 * GIB: ("qwen3-reranker-4b", "gguf", "q8_0", 8192),  # 8B is lower on en
    },
    ("zh", BASE): {
        512: ("all-minilm-l6-v2", "biencoder", "int8", 8192),
        1 * GIB: ("bge-reranker-base", "onnx", "int8", 4096),
        16 * GIB: ("bge-reranker-v2-m3", "onnx", "int8", 8192),
    },
    ("zh", WITH_GGUF): {
        8 * GIB: ("bge-reranker-v2-m3", "onnx", "int8", 8192),  # 72.16 > qwen3-0.6b 71.31
        16 * GIB: ("qwen3-reranker-4b", "gguf", "q8_0", 8192),
        32 * GIB: ("qwen3-reranker-8b", "gguf", "q8_0", 8192),
    },
    ("multi", BASE): {
        512: ("all-minilm-l6-v2", "biencoder", "int8", 8192),
        1 * GIB: ("all-minilm-l6-v2", "biencoder", "int8", 8192),
        8 * GIB: ("bge-reranker-v2-m3", "onnx", "int8", 8192),
    },
    ("multi", WITH_GGUF): {
        4 * GIB: ("bge-reranker-v2-m3", "onnx", "int8", 8192),
        8 * GIB: ("qwen3-reranker-0.6b", "gguf", "q8_0", 8192),
        16 * GIB: ("qwen3-reranker-4b", "gguf", "q8_0", 8192),
        32 * GIB: ("qwen3-reranker-8b", "gguf", "q8_0", 8192),
    },
}
RAM_CASES = [
    pytest.param(lang, backends, ram, want, id=f"{lang}-{'+'.join(sorted(backends))}-{ram}")
    for (lang, backends), table in EXPECTED_RAM.items()
    for ram, want in table.items()
]


@pytest.mark.parametrize("lang,backends,ram,want", RAM_CASES)
def test_ram_tiers(lang, backends, ram, want):
    c = run(ram, (lang,), backends)
    assert (*pick(c)[:3], c.batch_token_budget) == want
    assert c.device == "cpu"
    assert c.memory_need_mib <= ram


def test_german_wish_is_served_like_multi():
    assert pick(run(2 * GIB, ("de",)))[0] == "bge-reranker-v2-m3"
    assert pick(run(512, ("de",)))[0] == "all-minilm-l6-v2"


def test_japanese_wish_accepts_bce_without_a_figure():
    """bce covers ja but has no figure for it: it ranks below v2-m3, which has one."""
    c = run(2 * GIB, ("ja",), memory_ceiling_mib=900)  # v2-m3 needs ~1962 at 512 tokens
    assert pick(c)[0] == "bce-reranker-base_v1"
    assert c.quality is None


@pytest.mark.parametrize("backends", [BASE, WITH_GGUF, EVERYTHING], ids=["base", "gguf", "all"])
@pytest.mark.parametrize("lang", ["en", "zh", "multi"])
def test_more_ram_never_gives_lower_quality(lang, backends):
    previous = -1.0
    for ram in range(256, 40 * GIB, 128):
        c = run(ram, (lang,), backends)
        q = c.quality if c.quality is not None else 0.0
        assert q >= previous, f"{ram} MiB: {pick(c)} ({q}) after {previous}"
        previous = q


def test_a_512_mib_box_always_gets_something():
    for lang in ("en", "zh", "multi", "de"):
        c = run(512, (lang,))
        assert c.memory_need_mib <= 512
    # 240 MiB: MiniLM-L6 at 512 tokens (23 + 43 reference + 19 + 150 = 235) is the best en
    # model that fits (jina-v1-turbo needs 250)
    assert pick(run(240))[:3] == ("ms-marco-minilm-l6", "onnx", "int8")
    # the bi-encoder itself needs as little (23 + 19 + 150): zh on 200 MiB still gets it
    assert run(200, ("zh",)).model.name == "all-minilm-l6-v2"


def test_fallback_is_last_and_says_so():
    c = run(512, ("multi",))
    assert c.model.kind == "bi-encoder"
    assert any("bi-encoder" in w for w in c.warnings)
    assert any("covers en, not multi" in w for w in c.warnings)
    # and with room for a real multilingual reranker, the fallback is rejected with a reason
    c = run(4 * GIB, ("multi",))
    fallback = [v for v in c.reasons if v.candidate.model == "all-minilm-l6-v2"]
    assert fallback and "last resort" in fallback[0].reason


def test_no_room_at_all_is_a_clear_error():
    with pytest.raises(InvalidInput, match="nothing fits a 100 MiB budget"):
        run(100)


# ------------------------------------------------------------------------- GPU tiers

# torch installed, 16 GiB of RAM. On the GPU: fp16 weights + half the fp32 activations at
# up to 16384 tokens + 512 MiB reserve.
#   4/8 GiB: qwen3-0.6b: 1198 + 550 + 512 = 2260 (qwen3-4b's 8000 MiB fp16 does not fit);
#            zh: v2-m3 (72.16 > 0.6b's 71.31): 1160 + 550 + 512 = 2222.
#   16 GiB: qwen3-4b: 8000 + 1150 + 512 = 9662.
#   24 GiB: qwen3-8b (16000 + 1750 + 512 = 18262) for zh/multi; en stays on the 4B (67.09 >
#           66.35).
EXPECTED_GPU = {
    "en": {4: "qwen3-reranker-0.6b", 8: "qwen3-reranker-0.6b", 16: "qwen3-reranker-4b",
           24: "qwen3-reranker-4b"},
    "zh": {4: "bge-reranker-v2-m3", 8: "bge-reranker-v2-m3", 16: "qwen3-reranker-4b",
           24: "qwen3-reranker-8b"},
    "multi": {4: "qwen3-reranker-0.6b", 8: "qwen3-reranker-0.6b", 16: "qwen3-reranker-4b",
              24: "qwen3-reranker-8b"},
}  # fmt: skip
GPU_CASES = [
    pytest.param(lang, gib, model, id=f"{lang}-{gib}GiB")
    for lang, table in EXPECTED_GPU.items()
    for gib, model in table.items()
]


@pytest.mark.parametrize("backends", [WITH_TORCH, EVERYTHING], ids=["torch", "all"])
@pytest.mark.parametrize("lang,gib,model", GPU_CASES)
def test_gpu_tiers(lang, gib, model, backends):
    c = run(16 * GIB, (lang,), backends, vram=(gib * GIB,))
    assert pick(c) == (model, "torch", "fp16", "cuda:0")
    assert c.batch_token_budget == 16384
    assert c.memory_need_mib <= gib * GIB and c.memory_budget_mib == gib * GIB


@pytest.mark.parametrize("lang", ["en", "zh", "multi"])
def test_more_vram_never_gives_lower_quality(lang):
    previous = -1.0
    for vram in range(0, 30 * GIB, 256):
        c = run(16 * GIB, (lang,), WITH_TORCH, vram=(vram,) if vram else ())
        assert c.quality >= previous, f"{vram} MiB VRAM: {pick(c)}"
        previous = c.quality


def test_gpu_with_the_most_free_vram_is_used():
    c = run(16 * GIB, ("en",), WITH_TORCH, vram=(1 * GIB, 16 * GIB))
    assert c.device == "cuda:1" and c.model.name == "qwen3-reranker-4b"


def test_gpu_without_torch_falls_back_to_cpu():
    c = run(16 * GIB, ("en",), BASE, vram=(24 * GIB,))
    assert pick(c) == ("bge-reranker-v2-m3", "onnx", "int8", "cpu")
    torch_cuda = [v for v in c.reasons if v.candidate.device == "cuda:0"]
    assert torch_cuda and not any(v.accepted for v in torch_cuda)
    plain = [v for v in torch_cuda if v.candidate.model == "qwen3-reranker-8b"]
    assert plain[0].reason == "backend torch is not installed (pip install 'edgerank[cuda]')"


def test_tiny_free_vram_does_not_push_a_better_cpu_model_aside():
    """1 GiB free fits only small encoders in fp16; v2-m3 int8 on the CPU is better."""
    c = run(16 * GIB, ("en",), WITH_TORCH, vram=(1 * GIB,))
    assert pick(c) == ("bge-reranker-v2-m3", "onnx", "int8", "cpu")


def test_usable_gpu_keeps_llms_off_the_cpu():
    """With 32 GiB RAM and gguf, qwen3-4b would run on the CPU (67.09 en); a 4 GiB GPU
    serving qwen3-0.6b takes over instead: latency wins, as documented in choose.py."""
    assert pick(run(32 * GIB, ("en",), EVERYTHING))[:2] == ("qwen3-reranker-4b", "gguf")
    c = run(32 * GIB, ("en",), EVERYTHING, vram=(4 * GIB,))
    assert pick(c) == ("qwen3-reranker-0.6b", "torch", "fp16", "cuda:0")
    cpu_llm = [v for v in c.reasons if v.candidate.model == "qwen3-reranker-4b"
               and v.candidate.backend == "gguf"]  # fmt: skip
    assert cpu_llm and all("LLMs stay off the CPU" in v.reason for v in cpu_llm)


def test_cuda_needs_host_ram_too():
    c = run(900, ("en",), WITH_TORCH, vram=(24 * GIB,))
    assert c.device == "cpu"
    reasons = [v.reason for v in c.reasons if v.candidate.device == "cuda:0"]
    assert any("host RAM" in r for r in reasons)


# -------------------------------------------------------------------------- reasons


@pytest.mark.parametrize(
    "ram,lang,backends,vram",
    [(512, "en", BASE, ()), (8 * GIB, "zh", WITH_GGUF, ()), (16 * GIB, "multi", EVERYTHING,
     (8 * GIB,))],
)  # fmt: skip
def test_every_candidate_has_exactly_one_verdict_with_a_reason(ram, lang, backends, vram):
    c = run(ram, (lang,), backends, vram=vram)
    accepted = [v for v in c.reasons if v.accepted]
    assert len(accepted) == 1 and accepted[0].candidate == c.candidate
    assert c.reasons[0].accepted
    rejected = [v for v in c.reasons if not v.accepted]
    assert all(v.reason.strip() for v in rejected)
    seen = [str(v.candidate) for v in c.reasons]
    assert len(seen) == len(set(seen))
    # every catalog model, and every backend it lists, appears among the candidates
    pairs = {(v.candidate.model, v.candidate.backend) for v in c.reasons}
    assert pairs == {(s.name, b) for s in CATALOG for b in s.backends}


def test_rejections_say_why():
    c = run(512, ("en",))
    why = {str(v.candidate): v.reason for v in c.reasons}
    assert "needs ~" in why["bge-reranker-v2-m3 onnx/int8 on cpu"]
    assert "memory budget 512 MiB" in why["bge-reranker-v2-m3 onnx/int8 on cpu"]
    assert "covers en" not in why["ms-marco-minilm-l6 onnx/int8 on cpu"]
    assert "quality 48.64 < 49.60" in why["ms-marco-minilm-l6 onnx/int8 on cpu"]
    assert "gguf is not installed" in why["ms-marco-minilm-l6 gguf/q8_0 on cpu"]
    assert "trust_remote_code" in why["jina-reranker-v1-turbo-en torch/fp32 on cpu"]
    assert "covers zh, en, not" not in why["bge-reranker-base onnx/int8 on cpu"]
    zh = {str(v.candidate): v.reason for v in run(2 * GIB, ("zh",)).reasons}
    assert zh["ms-marco-minilm-l6 onnx/int8 on cpu"] == "covers en, not zh"
    gte = {str(v.candidate): v.reason for v in run(4 * GIB).reasons}
    assert "no published quality figure" in gte["gte-reranker-modernbert-base onnx/int8 on cpu"]


def test_llm_on_cpu_needs_gguf_quality_and_plenty_of_ram():
    c = run(32 * GIB, ("en",), EVERYTHING)  # torch on the CPU: never for an LLM
    why = {str(v.candidate): v.reason for v in c.reasons}
    assert "only through gguf" in why["qwen3-reranker-0.6b torch/fp32 on cpu"]
    speed = run(32 * GIB, ("en",), WITH_GGUF, prefer="speed")
    assert not speed.model.is_llm
    why = {str(v.candidate): v.reason for v in speed.reasons}
    assert "prefer=speed" in why["qwen3-reranker-4b gguf/q8_0 on cpu"]
    tight = run(4 * GIB, ("en",), WITH_GGUF)  # qwen3-0.6b needs 2235 > half of 4096
    why = {str(v.candidate): v.reason for v in tight.reasons}
    assert "plentiful RAM" in why["qwen3-reranker-0.6b gguf/q8_0 on cpu"]


def test_q4_only_when_ram_is_tight():
    # gguf only: v2-m3 q8_0 (636 + 34 at 512 tokens + 150 = 820) does not fit 800 MiB, q4 does
    c = run(800, ("multi",), WITH_GGUF, backend="gguf")
    assert pick(c)[:3] == ("bge-reranker-v2-m3", "gguf", "q4_k_m")
    c = run(4 * GIB, ("multi",), WITH_GGUF, backend="gguf")
    assert pick(c)[:3] == ("bge-reranker-v2-m3", "gguf", "q8_0")


# ------------------------------------------------------------------- licence, remote code


def test_non_commercial_is_excluded_by_default_and_allowed_on_opt_in():
    # 1 GiB, multilingual: only jina-v2 (280 MiB int8 + 340 reference, CC-BY-NC) would fit
    c = run(1 * GIB, ("multi",))
    assert c.model.name == "all-minilm-l6-v2"
    why = {str(v.candidate): v.reason for v in c.reasons}
    assert "non-commercial" in why["jina-reranker-v2-base-multilingual onnx/int8 on cpu"]
    c = run(1 * GIB, ("multi",), allow_non_commercial=True)
    assert pick(c)[:3] == ("jina-reranker-v2-base-multilingual", "onnx", "int8")
    for ram in RAM_TIERS:
        for lang in ("en", "zh", "multi"):
            assert not run(ram, (lang,), EVERYTHING).model.non_commercial


def test_remote_code_only_on_opt_in_and_said_so():
    # torch on the CPU within 700 MiB (400 of it runtime): jina-v1-turbo (49.60) fits
    # (151 + 75 at 2048 tokens + 400 = 626) but runs hub code; MiniLM-L6 (48.64) does not
    c = run(2 * GIB, ("en",), {"torch"}, backend="torch", memory_ceiling_mib=700)
    assert c.model.name == "ms-marco-minilm-l6"
    why = {str(v.candidate): v.reason for v in c.reasons}
    assert "--allow-remote-code" in why["jina-reranker-v1-turbo-en torch/fp32 on cpu"]
    c = run(
        2 * GIB, ("en",), {"torch"}, backend="torch", memory_ceiling_mib=700,
        allow_remote_code=True,
    )  # fmt: skip
    assert c.model.name == "jina-reranker-v1-turbo-en"
    assert any("trust_remote_code" in w for w in c.warnings)
    assert not any("trust_remote_code" in w for w in run(512).warnings)


def test_minicpm_layerwise_needs_remote_code_on_the_gpu():
    # zh at 16 GiB VRAM: qwen3-4b (75.94) beats minicpm (72.85) anyway; at 8 GiB minicpm
    # (5400 fp16) is the best zh model that fits, but only with the opt-in
    c = run(16 * GIB, ("zh",), WITH_TORCH, vram=(8 * GIB,))
    assert c.model.name == "bge-reranker-v2-m3"
    c = run(16 * GIB, ("zh",), WITH_TORCH, vram=(8 * GIB,), allow_remote_code=True)
    assert pick(c) == ("bge-reranker-v2-minicpm-layerwise", "torch", "fp16", "cuda:0")


# ---------------------------------------------------------------------- precision rules


@pytest.mark.parametrize(
    "isa,precision",
    [
        (AVX2, "fp32"),
        (frozenset({"avx2", "avx512f", "avx512_vnni"}), "fp32"),
        (frozenset({"avx2", "avx512f", "avx512_bf16"}), "bf16"),
        (frozenset({"avx2", "amx_int8", "amx_bf16"}), "bf16"),
    ],
)
def test_bf16_on_cpu_only_with_amx_or_avx512_bf16(isa, precision):
    c = run(4 * GIB, ("en",), {"torch"}, backend="torch", isa=isa)
    assert (c.backend, c.precision, c.device) == ("torch", precision, "cpu")
    for v in c.reasons:
        if v.candidate.backend == "torch" and v.candidate.device == "cpu":
            assert v.candidate.precision == precision
        assert v.candidate.precision != "fp16" or v.candidate.device.startswith("cuda")


def test_bf16_halves_activations():
    fp32 = run(4 * GIB, ("en",), {"torch"}, backend="torch")
    bf16 = run(4 * GIB, ("en",), {"torch"}, backend="torch", isa=frozenset({"amx_bf16"}))
    assert fp32.model.name == bf16.model.name == "bge-reranker-v2-m3"
    # fp32 2270 + 550 + 400; bf16 1160 + 275 + 400
    assert (fp32.memory_need_mib, bf16.memory_need_mib) == (3220, 1835)


# ------------------------------------------------------------------- forced model/backend


def test_forced_model_is_honoured():
    c = run(4 * GIB, model="ms-marco-minilm-l6")
    assert pick(c) == ("ms-marco-minilm-l6", "onnx", "int8", "cpu")
    assert "requested model" in c.reasons[0].reason
    others = [v for v in c.reasons if v.candidate.model != "ms-marco-minilm-l6"]
    assert all("not the requested model" in v.reason for v in others)


def test_forced_model_with_forced_backend():
    c = run(4 * GIB, backends=EVERYTHING, model="ms-marco-minilm-l6", backend="gguf")
    assert pick(c) == ("ms-marco-minilm-l6", "gguf", "q8_0", "cpu")


def test_forced_model_outside_wished_language_warns():
    c = run(4 * GIB, ("zh",), model="ms-marco-minilm-l6")
    assert c.model.name == "ms-marco-minilm-l6"
    assert any("covers en, not zh" in w for w in c.warnings)


def test_forced_llm_on_cpu_is_allowed_with_a_warning():
    c = run(4 * GIB, ("en",), WITH_GGUF, model="qwen3-reranker-0.6b")
    assert pick(c) == ("qwen3-reranker-0.6b", "gguf", "q8_0", "cpu")
    assert any("plentiful RAM" in w for w in c.warnings)


@pytest.mark.parametrize(
    "wishes,backends,message",
    [
        (dict(model="bge-reranker-v2-m3"), BASE, r"cannot run bge-reranker-v2-m3 here: .*needs ~"),
        (dict(model="mxbai-rerank-base-v1", backend="gguf"), WITH_GGUF,
         r"mxbai-rerank-base-v1 cannot run on gguf: its backends are onnx, torch"),
        (dict(backend="gguf"), BASE,
         r"backend gguf is not installed: pip install 'edgerank\[gguf\]'"),
        (dict(model="jina-reranker-v2-base-multilingual"), BASE, r"non-commercial"),
        (dict(model="bge-reranker-v2-minicpm-layerwise"), EVERYTHING, r"trust_remote_code"),
        (dict(model="qwen3-reranker-0.6b"), BASE, r"backend gguf is not installed"),
        (dict(backend="torch", memory_ceiling_mib=300), {"torch"},
         r"cannot run any model on torch here: .*needs ~"),
        (dict(prefer="fast"), BASE, r"prefer must be quality or speed"),
        (dict(languages=("English",)), BASE, r"not a lower-case ISO code"),
        (dict(backend="tensorrt"), BASE, r"unknown backend 'tensorrt'"),
        (dict(memory_ceiling_mib=0), BASE, r"memory ceiling must be positive"),
    ],
)  # fmt: skip
def test_impossible_wishes_fail_clearly(wishes, backends, message):
    box = hw(512)
    with pytest.raises(InvalidInput, match=message) as exc:
        choose(CATALOG, box, Wishes(**wishes), installed_backends=backends)
    assert "\n" not in str(exc.value)


def test_forced_unknown_model_suggests_names():
    with pytest.raises(ModelNotFound, match="bge-reranker-v2-m3"):
        run(4 * GIB, model="bge-v2-m3")


# -------------------------------------------------------------------- speed preference


def test_speed_trades_at_most_the_slack_for_compute():
    # 512 MiB en: best jina-v1-turbo 49.60; within 2 points: mxbai-xsmall, MiniLM-L6,
    # jina-tiny, bge-base, MiniLM-L4 (47.81). The least compute: 4 layers x 384 for both
    # jina-tiny and MiniLM-L4; the tie goes to the better one, jina-tiny (48.54).
    c = run(512, ("en",), prefer="speed")
    assert pick(c)[:3] == ("jina-reranker-v1-tiny-en", "onnx", "int8")
    assert "least compute" in c.reasons[0].reason
    best_q = run(512, ("en",)).quality
    assert c.quality >= best_q - 2.0
    why = {str(v.candidate): v.reason for v in c.reasons}
    assert "more compute" in why["jina-reranker-v1-turbo-en onnx/int8 on cpu"]
    assert "more than 2 points below" in why["ms-marco-tinybert-l2 onnx/int8 on cpu"]


def test_speed_keeps_a_clear_quality_winner():
    c = run(2 * GIB, ("en",), prefer="speed")  # nothing within 2 points of v2-m3's 55.36
    assert c.model.name == "bge-reranker-v2-m3"


# ------------------------------------------------------------------------ the store


def test_installed_models_restrict_the_choice_and_suggest_a_pull():
    c = run(4 * GIB, installed_models={})
    assert c.model.name == "all-minilm-l6-v2"
    assert c.suggestion == "edgerank pull bge-reranker-v2-m3"
    c = run(4 * GIB, installed_models={"ms-marco-minilm-l6": ["onnx"]})
    assert pick(c)[:2] == ("ms-marco-minilm-l6", "onnx")
    assert c.suggestion == "edgerank pull bge-reranker-v2-m3"
    c = run(4 * GIB, installed_models=["bge-reranker-v2-m3"])
    assert c.model.name == "bge-reranker-v2-m3" and c.suggestion is None


def test_store_entry_for_another_backend_does_not_count():
    c = run(4 * GIB, ("en",), WITH_GGUF, installed_models={"bge-reranker-v2-m3": ["gguf"]})
    assert pick(c)[:3] == ("bge-reranker-v2-m3", "gguf", "q8_0")
    why = {str(v.candidate): v.reason for v in c.reasons}
    assert "not in the model store" in why["bge-reranker-v2-m3 onnx/int8 on cpu"]


# ---------------------------------------------------------------------- threads, text


def test_threads_follow_physical_cores_within_the_quota():
    box = hw(4 * GIB, cores=1, usable=2.0)  # 2 vCPUs that are one core
    assert choose(CATALOG, box).threads == 1
    assert choose(CATALOG, hw(4 * GIB, cores=8, usable=3.5)).threads == 3
    assert choose(CATALOG, hw(4 * GIB, cores=4, usable=0.5)).threads == 1


# ------------------------------------------------------------------------ batch shape

MINILM = "ms-marco-minilm-l6"
#: a cap of 8 pairs measured fastest at 8192 tokens; 2048 tokens is the best of the rest
SHAPES = {"8192x0": 300.0, "4096x0": 310.0, "2048x0": 360.0, "1024x0": 250.0, "8192x8": 400.0}


def measured_minilm(shapes: dict[str, float]) -> Measured:
    return Measured(MINILM, "onnx", "int8", "cpu", {1: 300.0, 2: 280.0}, shapes=shapes)


def minilm_choice(m: Measured | None, ceiling: int | None = None) -> Choice:
    return choose(
        CATALOG,
        hw(8 * GIB),
        Wishes(memory_ceiling_mib=ceiling),
        BASE,
        {MINILM: ["onnx"]},
        calibration={m.key: m} if m else None,
    )


def test_a_measured_batch_shape_runs_and_never_above_the_memory_budget():
    m = measured_minilm(SHAPES)
    c = minilm_choice(m)
    assert (c.model.name, c.threads) == (MINILM, 1)
    assert (c.batch_token_budget, c.batch_max_pairs, c.batch_measured) == (8192, 8, True)
    assert (
        "threads 1, batch 8192 tokens, at most 8 pairs: measured fastest within the memory "
        "budget of 8192 tokens (400 pairs/s at 1 thread vs 300 without a cap)"
    ) in explain(c)
    full = memory_need(CATALOG.get(MINILM), "onnx", "int8", False, 64 * GIB)[0]
    assert memory_need(CATALOG.get(MINILM), "onnx", "int8", False, full - 1)[1] == 4096
    tight = minilm_choice(m, ceiling=full - 1)  # room for 4096 tokens: 8192 x 8 is out
    assert (tight.batch_token_budget, tight.batch_max_pairs) == (2048, None)
    assert "within the memory budget of 4096 tokens (360 pairs/s" in explain(tight)


def test_without_measured_shapes_the_memory_budget_runs_uncapped():
    plain = minilm_choice(None)
    assert (plain.batch_token_budget, plain.batch_max_pairs, plain.batch_measured) == (
        8192,
        None,
        False,
    )
    assert "batch 8192 tokens, no pair cap: the memory budget (batch shapes not measured" in (
        explain(plain)
    )
    old = minilm_choice(measured_minilm({}))  # figures from before shapes were measured
    assert (old.threads, old.batch_token_budget, old.batch_max_pairs) == (1, 8192, None)
    assert not old.batch_measured
    fair = minilm_choice(measured_minilm({"8192x0": 300.0, "8192x8": 305.0}))  # within 3%
    assert (fair.batch_token_budget, fair.batch_max_pairs, fair.batch_measured) == (
        8192,
        None,
        True,
    )
    assert "measured: the memory budget, no shape beat it by over 3%" in explain(fair)


def test_explain_lists_the_choice_and_every_rejection():
    c = run(512, ("en",))
    text = explain(c)
    assert text.splitlines()[0].startswith("chosen: jina-reranker-v1-turbo-en onnx/int8 on cpu")
    rejected = [v for v in c.reasons if not v.accepted]
    assert f"rejected ({len(rejected)}):" in text
    for v in rejected:
        assert str(v.candidate) in text and v.reason in text


def test_quality_for_uses_the_weakest_group_and_falls_back_to_multi():
    m3 = CATALOG.get("bge-reranker-v2-m3")
    assert quality_for(m3, ("en",)) == 55.36
    assert quality_for(m3, ("en", "zh")) == 55.36
    assert quality_for(m3, ("fr",)) == 58.36
    gemma = CATALOG.get("bge-reranker-v2-gemma")
    assert quality_for(gemma, ("zh",)) == gemma.quality["multi"]
    assert quality_for(CATALOG.get("gte-reranker-modernbert-base"), ("en",)) is None
