"""LLM reranker prompts and score rules against each publisher's reference recipe.

The references here are written the way the publishers' code does it, with transformers'
tokenizer API and model call, on tiny random Qwen3-like and Gemma-like checkpoints: the
prompt pieces, the truncation limits and the logits read at the last position.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from edgerank.backends import llm
from edgerank.backends.base import ScoreOptions
from edgerank.catalog.load import load_catalog
from edgerank.errors import InvalidInput
from edgerank.models.llm_format import LlmFormat

CATALOG = load_catalog()
QWEN = LlmFormat.from_spec(CATALOG.get("qwen3-reranker-0.6b"))
GEMMA = LlmFormat.from_spec(CATALOG.get("bge-reranker-v2-gemma"))
QUERY = "how long do cats sleep at night"
PASSAGES = [
    "the cat sleeps in the garden all summer",
    "stock market price bank money",
    "dog bird fish tree river mountain city train car road house garden music piano " * 3,
    "Yes",
]


def hf_tokenizer(hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)


def qwen_reference_ids(tok, query, passage, instruction=QWEN.default_instruction):
    """Qwen3-Reranker's model card: prefix + tokenizer(body) + suffix, no BOS."""
    prefix = QWEN.prompt.split("<Instruct>")[0]
    suffix = QWEN.prompt.split("{passage}")[1]
    body = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {passage}"
    return (
        tok.encode(prefix, add_special_tokens=False)
        + tok(body)["input_ids"]
        + tok.encode(suffix, add_special_tokens=False)
    )


def baai_reference_ids(tok, query, passage, instruction=GEMMA.default_instruction):
    """FlagEmbedding's FlagLLMReranker: BOS + 'A: q' + sep + 'B: p' + sep + prompt."""
    sep = tok("\n", add_special_tokens=False)["input_ids"]
    return (
        [tok.bos_token_id]
        + tok(f"A: {query}", add_special_tokens=False)["input_ids"]
        + sep
        + tok(f"B: {passage}", add_special_tokens=False)["input_ids"]
        + sep
        + tok(instruction, add_special_tokens=False)["input_ids"]
    )


def prompt_tokenizer(hf_dir, fmt, max_length=400):
    return llm.PromptTokenizer.from_dir(hf_dir, fmt, max_length)


# ------------------------------------------------------------------------------ prompts


def test_units_follow_each_publishers_pieces():
    assert llm.split_units(GEMMA.prompt, "baai") == (
        "A: {query}",
        "\n",
        "B: {passage}",
        "\n",
        "{instruction}",
    )
    prefix, body, suffix = llm.split_units(QWEN.prompt, "qwen")
    assert prefix.endswith("<|im_start|>user\n")
    assert body == "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {passage}"
    assert suffix.startswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "".join((prefix, body, suffix)) == QWEN.prompt


@pytest.mark.parametrize(
    ("fixture", "fmt", "reference"),
    [
        ("tiny_qwen3_hf", QWEN, qwen_reference_ids),
        ("tiny_gemma_hf", GEMMA, baai_reference_ids),
    ],
)
def test_ids_match_the_reference_recipe(request, fixture, fmt, reference):
    hf_dir = request.getfixturevalue(fixture)
    tok = hf_tokenizer(hf_dir)
    items = prompt_tokenizer(hf_dir, fmt).encode(QUERY, PASSAGES, ScoreOptions())
    assert [it.doc for it in items] == list(range(len(PASSAGES)))
    for it, passage in zip(items, PASSAGES, strict=True):
        assert it.ids.tolist() == reference(tok, QUERY, passage)


def test_gemma_prompt_starts_with_bos_and_qwen_has_none(tiny_qwen3_hf, tiny_gemma_hf):
    g = prompt_tokenizer(tiny_gemma_hf, GEMMA).encode(QUERY, PASSAGES[:1], ScoreOptions())[0]
    q = prompt_tokenizer(tiny_qwen3_hf, QWEN).encode(QUERY, PASSAGES[:1], ScoreOptions())[0]
    assert g.ids[0] == hf_tokenizer(tiny_gemma_hf).bos_token_id
    assert q.ids[0] == hf_tokenizer(tiny_qwen3_hf).convert_tokens_to_ids("<|im_start|>")


def test_instruction_is_per_request_with_the_catalog_default(tiny_qwen3_hf):
    pt = prompt_tokenizer(tiny_qwen3_hf, QWEN)
    tok = hf_tokenizer(tiny_qwen3_hf)
    custom = "Judge whether the passage is about cats"
    default = pt.encode(QUERY, PASSAGES[:1], ScoreOptions())[0].ids.tolist()
    mine = pt.encode(QUERY, PASSAGES[:1], ScoreOptions(instruction=custom))[0].ids.tolist()
    assert mine == qwen_reference_ids(tok, QUERY, PASSAGES[0], custom)
    assert default == qwen_reference_ids(tok, QUERY, PASSAGES[0])
    assert mine != default


def test_answer_tokens_are_the_ones_the_references_read(tiny_qwen3_hf, tiny_gemma_hf):
    qt, gt = hf_tokenizer(tiny_qwen3_hf), hf_tokenizer(tiny_gemma_hf)
    assert prompt_tokenizer(tiny_qwen3_hf, QWEN).answer_ids == (
        qt.convert_tokens_to_ids("yes"),
        qt.convert_tokens_to_ids("no"),
    )
    baai_yes = gt("Yes", add_special_tokens=False)["input_ids"][0]
    assert prompt_tokenizer(tiny_gemma_hf, GEMMA).answer_ids == (baai_yes,)


# --------------------------------------------------------------------------- truncation


def long_text(n_words: int, seed: int) -> str:
    import random

    from edgerank.testing.tiny_models import WORDS

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


@pytest.mark.parametrize(("fixture", "fmt"), [("tiny_qwen3_hf", QWEN), ("tiny_gemma_hf", GEMMA)])
def test_truncation_keeps_the_template_and_caps_the_query(request, fixture, fmt):
    hf_dir = request.getfixturevalue(fixture)
    limit = 160
    pt = prompt_tokenizer(hf_dir, fmt, max_length=limit)
    _, cost = pt._fixed(fmt.default_instruction)
    room = limit - cost
    query, passage = long_text(300, 1), long_text(300, 2)
    (item,) = pt.encode(query, [passage], ScoreOptions())
    assert cost < item.n_tokens <= limit
    # the fixed tail (Qwen's chat suffix, BAAI's instruction) survives whole, at the end
    tail_unit = llm.split_units(fmt.prompt, fmt.style)[-1]
    tail = pt._ids(tail_unit.replace("{instruction}", fmt.default_instruction))
    assert item.ids[-len(tail) :].tolist() == tail
    # the query got at most 3/4 of the room: its text in the prompt is a cut of the query
    q_tokens = int(room * llm.QUERY_SHARE)
    short = pt.encode(query, ["cat"], ScoreOptions())[0]
    assert short.n_tokens <= cost + q_tokens + 3  # + the passage and boundary merges


def test_left_truncation_keeps_the_passage_end(tiny_gemma_hf):
    pt = prompt_tokenizer(tiny_gemma_hf, GEMMA, max_length=120)
    passage = long_text(200, 3) + " zebra"
    right = pt.encode("cat", [passage], ScoreOptions(direction="right"))[0]
    left = pt.encode("cat", [passage], ScoreOptions(direction="left"))[0]
    zebra_ids = pt._ids(" zebra")[-1:]
    assert zebra_ids[0] in left.ids.tolist()
    assert zebra_ids[0] not in right.ids.tolist()


def test_chunking_windows_cover_the_passage(tiny_gemma_hf):
    pt = prompt_tokenizer(tiny_gemma_hf, GEMMA, max_length=120)
    passage = long_text(400, 4)
    items = pt.encode("cat", [passage, "dog"], ScoreOptions(truncation="chunk"))
    windows = [it for it in items if it.doc == 0]
    assert len(windows) > 2
    assert [it.doc for it in items][-1] == 1
    assert all(it.n_tokens <= 120 for it in items)


def test_a_prompt_longer_than_the_limit_is_refused(tiny_qwen3_hf):
    pt = prompt_tokenizer(tiny_qwen3_hf, QWEN, max_length=400)
    with pytest.raises(InvalidInput, match="nothing is left"):
        pt.encode(QUERY, PASSAGES, ScoreOptions(max_tokens_per_doc=20))


def test_left_padding_and_positions(tiny_qwen3_hf):
    pt = prompt_tokenizer(tiny_qwen3_hf, QWEN)
    items = pt.encode(QUERY, PASSAGES, ScoreOptions())
    feed = pt.pad(items)
    width = max(it.n_tokens for it in items)
    assert feed["input_ids"].shape == (len(items), width)
    for row, it in enumerate(items):
        n = it.n_tokens
        assert feed["input_ids"][row, -n:].tolist() == it.ids.tolist()  # right-aligned
        assert feed["attention_mask"][row].tolist() == [0] * (width - n) + [1] * n
        assert feed["position_ids"][row, -n:].tolist() == list(range(n))


# --------------------------------------------------------------------------- score rules


def test_raw_scores_and_probability_follow_the_rules():
    logits = np.array([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]], dtype=np.float32)
    raw = llm.raw_scores("yes-no-softmax", logits)
    assert raw.tolist() == [3.0, 0.0, -4.0]
    for (yes, no), p in zip(logits.tolist(), llm.probability(raw).tolist(), strict=True):
        softmax_yes = math.exp(yes) / (math.exp(yes) + math.exp(no))
        assert p == pytest.approx(softmax_yes, abs=1e-6)
    assert llm.raw_scores("yes-logit", logits[:, :1]).tolist() == [2.0, 0.5, -3.0]
    with pytest.raises(ValueError):
        llm.raw_scores("layer-head", logits)


def test_format_roundtrip_and_validation():
    assert LlmFormat.from_dict(QWEN.to_dict()) == QWEN
    with pytest.raises(ValueError):
        dataclasses.replace(QWEN, score_rule="cls-logit")
    with pytest.raises(ValueError):
        dataclasses.replace(QWEN, prompt="no fields here")
    layerwise = CATALOG.get("bge-reranker-v2-minicpm-layerwise")
    assert LlmFormat.from_spec(layerwise).cutoff_layer == 28


def direct_logits(hf_dir, ids_list, words):
    """The reference forward pass: one unpadded sequence at a time, full logits."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = hf_tokenizer(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    word_ids = [tok.convert_tokens_to_ids(w) for w in words]
    out = []
    with torch.no_grad():
        for ids in ids_list:
            logits = model(torch.tensor([ids])).logits[0, -1]
            out.append([float(logits[w]) for w in word_ids])
    return np.array(out)


def test_qwen3_rule_against_transformers(tiny_qwen3_hf):
    from edgerank.backends.torch import open_torch
    from edgerank.models.checkpoint import Checkpoint

    tok = hf_tokenizer(tiny_qwen3_hf)
    ids = [qwen_reference_ids(tok, QUERY, p) for p in PASSAGES]
    yes_no = direct_logits(tiny_qwen3_hf, ids, ("yes", "no"))
    p_yes = np.exp(yes_no[:, 0]) / np.exp(yes_no).sum(axis=1)  # the model card's softmax

    be = open_torch(tiny_qwen3_hf, Checkpoint("llm-yes-logit", 400, QWEN))
    raw = be.score(be.encode(QUERY, PASSAGES, ScoreOptions()))  # one left-padded batch
    assert raw == pytest.approx(yes_no[:, 0] - yes_no[:, 1], abs=1e-4)
    assert llm.probability(raw) == pytest.approx(p_yes, abs=1e-5)
    assert np.ptp(raw) > 1e-2  # the tiny model's scores differ, so the check has teeth


def test_gemma_rule_against_transformers(tiny_gemma_hf):
    from edgerank.backends.torch import open_torch
    from edgerank.models.checkpoint import Checkpoint

    tok = hf_tokenizer(tiny_gemma_hf)
    ids = [baai_reference_ids(tok, QUERY, p) for p in PASSAGES]
    (yes,) = direct_logits(tiny_gemma_hf, ids, ("Yes",)).T

    be = open_torch(tiny_gemma_hf, Checkpoint("llm-yes-logit", 400, GEMMA))
    raw = be.score(be.encode(QUERY, PASSAGES, ScoreOptions()))
    assert raw == pytest.approx(yes, abs=1e-4)
    assert np.ptp(raw) > 1e-2
    assert be.info().details["score_rule"] == "yes-logit"
