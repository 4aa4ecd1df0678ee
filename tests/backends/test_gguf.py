"""The llama.cpp backend against torch FP32, on tiny random checkpoints converted offline
(edgerank/testing/gguf_models.py): cross-encoders (BERT with edgerank's fixes, XLM-R), LLM rerankers
(Qwen3 yes/no, Gemma yes-logit, Qwen3's native rank head), shared-prefix reuse, batch
independence, the refusal of uncorrected BERT GGUFs and of the layerwise model, the store,
the loader's choice and the CLI. Skipped as a whole without the `gguf` extra.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from edgerank.backends import gguf, gguf_llm, llama_runtime  # noqa: E402
from edgerank.backends.base import ScoreOptions  # noqa: E402
from edgerank.backends.registry import open_entry
from edgerank.backends.torch import TorchBackend, open_torch  # noqa: E402
from edgerank.catalog.load import load_catalog  # noqa: E402
from edgerank.engine.agreement import rank_agreement  # noqa: E402
from edgerank.engine.rank import score_documents  # noqa: E402
from edgerank.errors import BackendUnavailable, ModelCorrupt  # noqa: E402
from edgerank.models.checkpoint import Checkpoint
from edgerank.models.gguf_file import GgufHeader, read_header  # noqa: E402
from edgerank.models.gguf_model import GgufModel, check_servable, refuse_layerwise  # noqa: E402
from edgerank.models.llm_format import LlmFormat
from edgerank.quality.texts import probe_groups
from edgerank.testing.gguf_models import RANK_HEAD  # noqa: E402

CATALOG = load_catalog()
FORMATS = {
    "qwen3": LlmFormat.from_spec(CATALOG.get("qwen3-reranker-0.6b")),
    "gemma": LlmFormat.from_spec(CATALOG.get("bge-reranker-v2-gemma")),
}
QUERY = "how long do cats sleep at night"
PASSAGES = [
    "the cat sleeps sixteen hours a day in the garden",
    "stock market price bank money",
    "the ship sailed down the river to the harbour island " * 3,
    "piano guitar song",
    "the nurse and the doctor work at the hospital " * 6,
    "Yes",
]
LLM_MAX = 400


def cross_encoder(gm, name, quant="f32", **kw):
    model = GgufModel("cross-encoder", 128)
    return gguf.open_gguf(gm.gguf(name, quant), gm.hf(name), model, **{"threads": 1, **kw})


def llm_backend(gm, name, quant="f32", **kw):
    model = GgufModel("llm-yes-logit", LLM_MAX, FORMATS[name.split("-")[0]])
    return gguf.open_gguf(gm.gguf(name, quant), gm.hf(name), model, **{"threads": 1, **kw})


def torch_llm(gm, name):
    model = Checkpoint("llm-yes-logit", LLM_MAX, FORMATS[name])
    return open_torch(gm.hf(name), model, threads=1)


def llm_groups(n_groups=40, per_group=8, seed=3):
    """Short passages: the tiny LLMs' prompts stay a few dozen tokens."""
    groups = probe_groups(n_groups, per_group, seed)
    return [(q, [" ".join(p.split()[:25]) for p in ps]) for q, ps in groups]


# ------------------------------------------------------------------------ cross-encoders


@pytest.fixture(scope="module")
def ce_reference(gguf_models):
    """torch FP32 scores of 40 groups x 10 passages per cross-encoder."""
    groups = probe_groups(40, 10, seed=11)
    out = {}
    for name in ("bert", "xlmr"):
        ref = TorchBackend(gguf_models.hf(name), precision="fp32", threads=1, max_length=128)
        out[name] = [score_documents(ref, q, ps).raw for q, ps in groups]
        ref.close()
    return groups, out


@pytest.mark.parametrize("name", ["bert", "xlmr"])
def test_cross_encoder_f32_scores_equal_torch(gguf_models, ce_reference, name):
    """Per pair, not only in rank: the converted graph is the checkpoint's (BERT only
    thanks to the pooler and segment-B fixes). llama.cpp's GELU reads an f16 table, hence
    the tolerance."""
    groups, ref = ce_reference
    be = cross_encoder(gguf_models, name)
    got = [score_documents(be, q, ps).raw for q, ps in groups[:10]]
    diff = max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref[name], strict=False))
    assert diff < 0.02
    assert min(float(np.ptp(r)) for r in ref[name][:10]) > 0.1  # spread beyond the tolerance
    assert be.info().details["fixes"] == (["pooler", "segment-b"] if name == "bert" else [])


@pytest.mark.parametrize("name", ["bert", "xlmr"])
def test_cross_encoder_f16_ranks_like_torch_fp32(gguf_models, ce_reference, name):
    groups, ref = ce_reference
    be = cross_encoder(gguf_models, name, "f16")
    got = rank_agreement(ref[name], [score_documents(be, q, ps).raw for q, ps in groups])
    assert got["spearman_mean"] >= 0.99, got
    assert got["top1_kept"] >= 0.97, got
    assert be.info().precision == "f16"


def within_8bit_noise(ref, cand, rel):
    """RMS error of all scores, relative to their mean magnitude."""
    r, c = np.concatenate(ref), np.concatenate(cand)
    return float(np.sqrt(np.mean((r - c) ** 2)) / np.mean(np.abs(r))) <= rel


@pytest.mark.parametrize("name", ["bert", "xlmr"])
def test_cross_encoder_q8_0_is_within_8bit_noise_of_torch(gguf_models, ce_reference, name):
    """Plumbing, not the acceptance bar: tiny random encoders score nearly constant (within-
    group spread ~2% of the score), the same order as q8_0's rounding (~0.5%: at hidden 32
    one q8_0 block is a whole row), so measured rank agreement is only ~0.90-0.95 here,
    against 0.99+ for f16 above. The acceptance figures for q8_0 are held on real MiniLM
    weights (test_minilm_q8_0_ranks_like_torch_fp32). A wrong tensor or a lost head would
    show here as a Spearman near 0 and errors of whole percents."""
    groups, ref = ce_reference
    be = cross_encoder(gguf_models, name, "q8_0")
    cand = [score_documents(be, q, ps).raw for q, ps in groups]
    assert within_8bit_noise(ref[name], cand, rel=0.015)
    assert rank_agreement(ref[name], cand)["spearman_mean"] >= 0.85
    types = read_header(gguf_models.gguf(name, "q8_0")).tensors
    assert types["blk.0.ffn_down.weight"][1] == 8  # GGML_TYPE_Q8_0
    assert types["blk.0.attn_q.weight"][1] == 1  # F16: the LayerNorm-fed matmuls are kept


def test_cross_encoder_batch_mates_do_not_change_scores(gguf_models):
    for pack in (0, 512):  # one pair per decode (the default), and pairs packed together
        be = cross_encoder(gguf_models, "bert", pack_tokens=pack)
        items = be.encode(QUERY, PASSAGES, ScoreOptions())
        alone = np.array([float(be.score([it])[0]) for it in items])
        assert np.max(np.abs(be.score(items) - alone)) < 1e-3
        assert np.ptp(alone) > 0.05


def test_segment_b_ids_read_the_folded_rows(gguf_models):
    """Same ids as every other backend; only the GGUF input offsets segment B."""
    be = cross_encoder(gguf_models, "bert")
    (item,) = be.encode(QUERY, PASSAGES[:1], ScoreOptions())
    ref = TorchBackend(gguf_models.hf("bert")).encode(QUERY, PASSAGES[:1], ScoreOptions())[0]
    assert item.ids.tolist() == ref.ids.tolist()
    offset = read_header(gguf_models.gguf("bert")).get("edgerank.segment_b_offset")
    shifted = be._ids(item)
    assert offset > 0 and (shifted[item.type_ids == 1] >= offset).all()
    assert (shifted[item.type_ids == 0] == item.ids[item.type_ids == 0]).all()


# ------------------------------------------------------------------ refusing what is wrong


def test_bert_gguf_without_the_fixes_is_refused(gguf_models):
    raw = gguf_models.gguf("bert", fixes=False)
    with pytest.raises(ModelCorrupt, match="token types, which llama.cpp ignores"):
        gguf.open_gguf(raw, gguf_models.hf("bert"), GgufModel("cross-encoder", 128))


def _header(tensors, **meta):
    h = GgufHeader(path=__import__("pathlib").Path("x.gguf"), version=3)
    h.metadata = {"general.architecture": "bert", **meta}
    h.tensors = {t: ((1,), 0) for t in tensors}
    return h


def test_check_servable_rules():
    ok_xlmr = _header(["cls.weight", "cls.output.weight"])
    check_servable(ok_xlmr, "cross-encoder")
    no_pooler = _header(["cls.output.weight"])
    with pytest.raises(ModelCorrupt, match="lost BERT's pooler"):
        check_servable(no_pooler, "cross-encoder")
    types = _header(["cls.weight", "cls.output.weight"], **{"tokenizer.ggml.token_type_count": 2})
    with pytest.raises(ModelCorrupt, match="segment B would score as segment A"):
        check_servable(types, "cross-encoder")
    fixed = _header(
        ["cls.weight", "cls.output.weight"],
        **{"tokenizer.ggml.token_type_count": 2, "edgerank.fixes": "pooler,segment-b"},
    )
    check_servable(fixed, "cross-encoder")
    with pytest.raises(ModelCorrupt, match="no classification head"):
        check_servable(_header(["token_embd.weight"]), "cross-encoder")
    check_servable(_header(["token_embd.weight"]), "llm-yes-logit")  # LLMs read logits


def test_layerwise_is_routed_to_torch(tmp_path):
    spec = CATALOG.get("bge-reranker-v2-minicpm-layerwise")
    with pytest.raises(BackendUnavailable, match="torch backend"):
        refuse_layerwise(spec)
    with pytest.raises(BackendUnavailable, match="torch backend"):
        GgufModel("llm-layerwise", 512, LlmFormat.from_spec(spec))
    from edgerank.install.store import ModelStore

    with pytest.raises(BackendUnavailable, match="--backend torch"):
        ModelStore(tmp_path).pull(spec, backend="gguf")


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(llama_runtime, "_STATE", {})
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(BackendUnavailable) as exc:
        llama_runtime.load_llama()
    assert "edgerank[gguf]" in str(exc.value) and "\n" not in str(exc.value)


# ------------------------------------------------------------------------ LLM rerankers


@pytest.fixture(scope="module")
def llm_reference(gguf_models):
    groups = llm_groups()
    out = {}
    for name in ("qwen3", "gemma"):
        ref = torch_llm(gguf_models, name)
        out[name] = [score_documents(ref, q, ps).raw for q, ps in groups]
        ref.close()
    return groups, out


@pytest.mark.parametrize("name", ["qwen3", "gemma"])
def test_llm_ids_and_f32_scores_equal_torch(gguf_models, name):
    ref = torch_llm(gguf_models, name)
    be = llm_backend(gguf_models, name)
    mine = be.encode(QUERY, PASSAGES, ScoreOptions())
    theirs = ref.encode(QUERY, PASSAGES, ScoreOptions())
    assert [m.ids.tolist() for m in mine] == [t.ids.tolist() for t in theirs]
    want = ref.score(theirs)
    assert be.score(mine) == pytest.approx(want, abs=5e-3)
    assert np.ptp(want) > 1.0


@pytest.mark.parametrize("name", ["qwen3", "gemma"])
def test_llm_f16_ranks_like_torch_fp32(gguf_models, llm_reference, name):
    groups, ref = llm_reference
    be = llm_backend(gguf_models, name, "f16")
    got = rank_agreement(ref[name], [score_documents(be, q, ps).raw for q, ps in groups])
    assert got["spearman_mean"] >= 0.99, got
    assert got["top1_kept"] >= 0.97, got


@pytest.mark.parametrize("name", ["qwen3", "gemma"])
def test_llm_q8_0_tracks_torch_fp32(gguf_models, llm_reference, name):
    """As for the encoders: tiny random LLMs' answer logits spread by ~0.5 while q8_0 moves
    them by ~0.05 (measured Spearman 0.98-0.99, top-1 93-98% of 40 groups, at every init
    scale tried), so this checks plumbing at a lower bar; no real LLM weights exist offline."""
    groups, ref = llm_reference
    be = llm_backend(gguf_models, name, "q8_0")
    cand = [score_documents(be, q, ps).raw for q, ps in groups]
    got = rank_agreement(ref[name], cand)
    assert got["spearman_mean"] >= 0.95, got
    assert got["top1_kept"] >= 0.85, got
    assert got["max_abs_diff"] < 0.3, got


@pytest.mark.parametrize("name", ["qwen3", "gemma"])
def test_prefix_reuse_equals_no_reuse(gguf_models, name):
    reuse = llm_backend(gguf_models, name, "q8_0")
    plain = llm_backend(gguf_models, name, "q8_0", prefix_reuse=False)
    items = reuse.encode(QUERY, PASSAGES, ScoreOptions())
    shared = [it.extra["prefix"] for it in items]
    assert min(shared) > 5  # the template and query really are shared...
    assert all(k < it.n_tokens for k, it in zip(shared, items, strict=True))  # ...not all
    assert plain.encode(QUERY, PASSAGES, ScoreOptions())[0].extra is None
    assert np.max(np.abs(reuse.score(items) - plain.score(items))) < 1e-3
    assert reuse.info().details["prefix_reuse"] is True


@pytest.mark.parametrize("name", ["qwen3", "gemma"])
def test_llm_batch_mates_do_not_change_scores(gguf_models, name):
    """Alone, together, across two requests with different prefixes, and in narrow
    parallel chunks: the same scores within 1e-3."""
    be = llm_backend(gguf_models, name)
    narrow = llm_backend(gguf_models, name, parallel=2)
    a = be.encode(QUERY, PASSAGES, ScoreOptions())
    b = be.encode("river ship harbour", PASSAGES[:3], ScoreOptions(instruction="Is it boats?"))
    alone = np.array([float(be.score([it])[0]) for it in a + b])
    assert np.max(np.abs(be.score(a + b) - alone)) < 1e-3
    assert np.max(np.abs(narrow.score(b + a) - np.r_[alone[len(a) :], alone[: len(a)]])) < 1e-3


def test_rank_head_gguf_scores_like_the_logits(gguf_models):
    """A Qwen3-Reranker converted by llama.cpp gets a yes/no rank head (softmax): log-odds
    of it are the same raw score as the yes/no logits."""
    header = read_header(gguf_models.gguf(RANK_HEAD))
    assert header.pooling == 4 and header.labels == ("yes", "no")
    rank = llm_backend(gguf_models, RANK_HEAD)
    logits = llm_backend(gguf_models, "qwen3")
    assert rank.info().details["head"] == "rank" and logits.info().details["head"] == "logits"
    items = logits.encode(QUERY, PASSAGES, ScoreOptions())
    assert rank.score(items) == pytest.approx(logits.score(items), abs=1e-3)


def test_instruction_is_per_request(gguf_models):
    be = llm_backend(gguf_models, "qwen3")
    default = be.score(be.encode(QUERY, PASSAGES, ScoreOptions()))
    custom = be.score(be.encode(QUERY, PASSAGES, ScoreOptions(instruction="Is it about cats?")))
    assert np.max(np.abs(default - custom)) > 1e-3


def test_threads_and_context(gguf_models):
    be = llm_backend(gguf_models, "qwen3", threads=2)
    be.score(be.encode(QUERY, PASSAGES[:1], ScoreOptions()))
    lib, ctx = be._rt.lib, be._rt.ctx
    assert lib.llama_n_threads(ctx) == 2 and lib.llama_n_threads_batch(ctx) == 2
    assert lib.llama_n_seq_max(ctx) == gguf_llm.PARALLEL + 1
    info = be.info()
    assert (info.backend, info.device, info.threads, info.precision) == ("gguf", "cpu", 2, "f32")
    be.close()


# ------------------------------------------------------------------ store, loader, CLI


@pytest.fixture
def ready_dir(gguf_models, tmp_path):
    """A directory as a user might have it: GGUF files beside the checkpoint's tokenizer."""
    import shutil

    d = tmp_path / "ready"
    shutil.copytree(gguf_models.hf("qwen3"), d)
    for quant in ("f16", "q8_0"):
        shutil.copy2(gguf_models.gguf("qwen3", quant), d / f"tiny.{quant}.gguf")
    return d


def test_store_installs_ready_gguf_files_and_opens_each_quant(ready_dir, tmp_path):
    from edgerank.install.store import ModelStore
    from edgerank.models.manifest import Manifest

    store = ModelStore(tmp_path / "home")
    path = store.import_gguf("tiny-qwen", ready_dir)
    m = Manifest.read(path)
    assert (m.backend, m.precision, m.recipe["kind"]) == ("gguf", "q8_0", "llm-yes-logit")
    assert set(m.recipe["files"]) == {"f16", "q8_0"}
    assert store.installed() == {"tiny-qwen": ["gguf"]}
    q8 = open_entry(store.entry("tiny-qwen", "gguf"), threads=1)
    f16 = open_entry(store.entry("tiny-qwen", "gguf"), threads=1, precision="f16")
    assert (q8.info().precision, f16.info().precision) == ("q8_0", "f16")
    items = q8.encode(QUERY, PASSAGES, ScoreOptions())
    assert q8.score(items) == pytest.approx(f16.score(items), abs=0.1)


def test_store_refuses_an_uncorrected_bert_gguf(gguf_models, tmp_path):
    import shutil

    from edgerank.install.store import ModelStore

    d = tmp_path / "raw"
    shutil.copytree(gguf_models.hf("bert"), d)
    shutil.copy2(gguf_models.gguf("bert", fixes=False), d / "bert.gguf")
    store = ModelStore(tmp_path / "home")
    with pytest.raises(ModelCorrupt, match="edgerank import CHECKPOINT --backend gguf"):
        store.import_gguf("raw-bert", d)
    assert store.installed() == {}


def test_loader_opens_the_chosen_gguf_quant(ready_dir, tmp_path, monkeypatch):
    """The choice function picks gguf for an LLM on a CPU box without torch; the loader
    opens the quant it chose."""
    from edgerank import backends
    from edgerank.hardware import probe
    from edgerank.hardware.facts import Hardware
    from edgerank.install.store import ModelStore
    from edgerank.startup import load as loader

    spec = dataclasses.replace(CATALOG.get("qwen3-reranker-0.6b"), max_length=LLM_MAX)
    store = ModelStore(tmp_path / "home")
    store.import_gguf(spec.name, ready_dir, spec=spec)
    hw = Hardware(
        arch="x86_64", ram_total_mib=16384, ram_available_mib=16384, cgroup_limit_mib=None,
        cgroup_usage_mib=None, logical_cpus=2, usable_cpus=2.0, physical_cores=2,
        isa=frozenset({"avx2"}), gpus=(), disk_free_mib=None,
    )  # fmt: skip
    monkeypatch.setattr(probe, "probe", lambda **kw: hw)
    monkeypatch.setattr(backends, "available_backends", lambda: frozenset({"onnx", "gguf"}))
    loaded = loader.load(None, threads=1, store=store, languages=("multi",))
    info = loaded.backend.info()
    assert (info.backend, info.model, info.precision) == ("gguf", spec.name, "q8_0")
    by_dir = loader.load(str(store.path(spec.name, "gguf")), threads=1).backend
    assert by_dir.info().backend == "gguf"


def test_cli_import_and_score(ready_dir, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from edgerank.cli.main import main

    monkeypatch.setenv("EDGERANK_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    done = runner.invoke(main, ["import", str(ready_dir), "--name", "t", "--backend", "gguf"])
    assert done.exit_code == 0, done.output
    scored = runner.invoke(
        main, ["score", QUERY, *PASSAGES[:3], "--model", "t", "--threads", "1", "--json"]
    )
    assert scored.exit_code == 0, scored.output
    out = json.loads(scored.stdout)
    assert out["model"] == "t (gguf q8_0)" and len(out["results"]) == 3


# ------------------------------------------------------------------ real MiniLM weights


@pytest.mark.slow
def test_minilm_q8_0_ranks_like_torch_fp32(minilm_ce_ckpt, minilm_groups, minilm_reference,
                                          llama_converter, tmp_path):  # fmt: skip
    """The shipped q8_0 recipe on real pretrained weights, fitted head
    (edgerank/testing/minilm_ce.py)."""
    from edgerank.convert import gguf as convert_gguf

    files = convert_gguf.convert_and_quantize(
        minilm_ce_ckpt, tmp_path, ("q8_0",), base="f32", keep=convert_gguf.CROSS_ENCODER_KEEP,
        tools=llama_converter,
    )  # fmt: skip
    model = GgufModel("cross-encoder", 512)
    be = gguf.open_gguf(tmp_path / files["q8_0"], minilm_ce_ckpt, model, threads=1)
    cand = [score_documents(be, q, ps).raw for q, ps in minilm_groups]
    got = rank_agreement(minilm_reference, cand)
    assert got["spearman_mean"] >= 0.99, got
    assert got["top1_kept"] >= 0.97, got
