from __future__ import annotations

import pytest

from edgerank.backends.base import ScoreOptions
from edgerank.backends.pairs import PairTokenizer
from edgerank.errors import InvalidInput, ModelCorrupt

LONG = " ".join(f"w{i % 7} river" for i in range(200))


@pytest.fixture(scope="module")
def bert_tok(tiny_bert_hf):
    return PairTokenizer(tiny_bert_hf / "tokenizer.json", max_length=32)


@pytest.fixture(scope="module")
def xlmr_tok(tiny_xlmr_hf):
    return PairTokenizer(tiny_xlmr_hf / "tokenizer.json", max_length=32)


def _tokens(tok: PairTokenizer, ids):
    return [tok._tok.id_to_token(int(i)) for i in ids]


def test_bert_pair_layout_and_segments(bert_tok):
    (item,) = bert_tok.encode("cat dog", ["river ocean"], ScoreOptions())
    toks = _tokens(bert_tok, item.ids)
    assert toks[0] == "[CLS]" and toks[-1] == "[SEP]" and toks.count("[SEP]") == 2
    first_sep = toks.index("[SEP]")
    assert set(item.type_ids[: first_sep + 1].tolist()) == {0}
    assert set(item.type_ids[first_sep + 1 :].tolist()) == {1}


def test_xlmr_pair_layout(xlmr_tok):
    (item,) = xlmr_tok.encode("cat dog", ["river"], ScoreOptions())
    toks = _tokens(xlmr_tok, item.ids)
    assert toks[0] == "<s>" and toks[-1] == "</s>"
    assert "</s></s>" in "".join(toks)


def test_truncation_keeps_query_and_cuts_passage(bert_tok):
    (right,) = bert_tok.encode("cat dog", [LONG], ScoreOptions())
    (left,) = bert_tok.encode("cat dog", [LONG], ScoreOptions(direction="left"))
    assert right.n_tokens == left.n_tokens == 32
    assert _tokens(bert_tok, right.ids)[1:3] == ["cat", "dog"]
    assert _tokens(bert_tok, left.ids)[1:3] == ["cat", "dog"]
    assert right.ids.tolist() != left.ids.tolist()  # start of the passage vs its end


def test_chunk_windows_cover_the_passage_each_with_the_query(bert_tok):
    items = bert_tok.encode("cat dog", [LONG, "short one"], ScoreOptions(truncation="chunk"))
    windows = [it for it in items if it.doc == 0]
    assert len(windows) > 3
    assert [it.doc for it in items][-1] == 1
    passage_tokens = len(bert_tok._tok.encode(LONG, add_special_tokens=False).ids)
    covered = 0
    for w in windows:
        assert w.n_tokens <= 32
        assert _tokens(bert_tok, w.ids)[1:3] == ["cat", "dog"]
        covered += w.n_tokens - 5  # minus [CLS] cat dog [SEP] ... [SEP]
    assert covered >= passage_tokens  # overlap means more than once over


def test_max_tokens_per_doc_caps_length(bert_tok):
    (item,) = bert_tok.encode("cat", [LONG], ScoreOptions(max_tokens_per_doc=12))
    assert item.n_tokens == 12
    with pytest.raises(InvalidInput):
        bert_tok.encode("cat", ["x"], ScoreOptions(max_tokens_per_doc=0))


def test_overlong_query_is_capped_so_the_passage_keeps_room(bert_tok):
    (item,) = bert_tok.encode(LONG, ["cat dog"], ScoreOptions())
    room = 32 - 3  # [CLS] q [SEP] p [SEP]
    assert item.type_ids.tolist().count(0) == int(room * 0.75) + 2
    assert _tokens(bert_tok, item.ids)[-3:] == ["cat", "dog", "[SEP]"]  # passage kept whole


def test_pad_builds_masks(bert_tok):
    items = bert_tok.encode("cat", ["dog", "river ocean ship harbour"], ScoreOptions())
    feed = bert_tok.pad(items)
    assert feed["input_ids"].shape == feed["attention_mask"].shape
    assert feed["attention_mask"].sum(1).tolist() == [it.n_tokens for it in items]


def test_unreadable_tokenizer_is_a_model_error(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ModelCorrupt):
        PairTokenizer(bad, 32)


def test_encode_pairs_is_one_input_per_pair_cut_like_a_request(bert_tok):
    """The install's probe and calibration path: pairs in order, a long query capped as in
    a request (`tokenizers`' only_second truncation raised here instead)."""
    pairs = [("cat dog", "river"), ("cat dog", LONG), (LONG, "ocean"), ("cat dog", "tree")]
    items = bert_tok.encode_pairs(pairs)
    assert len(items) == 4 and all(len(it.ids) <= 32 for it in items)
    for (q, d), item in zip(pairs, items, strict=True):
        (alone,) = bert_tok.encode(q, [d], ScoreOptions())
        assert item.ids.tolist() == alone.ids.tolist()
    assert "ocean" in _tokens(bert_tok, items[2].ids)  # the passage kept room
