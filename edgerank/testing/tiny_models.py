"""Tiny random checkpoints built offline: a `tokenizers` vocabulary + random weights.

Random weights rank by noise, so these test plumbing (tokenization, export, batching,
serving), never quality; quality is tested on the real MiniLM weights (minilm_ce.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "cat dog bird fish tree river mountain city train car road house garden music piano "
    "guitar song river ocean ship harbour island sun moon star planet rocket engine wheel "
    "bread cheese apple orange coffee tea sugar salt rain snow wind storm cloud summer "
    "winter spring autumn school teacher student book paper pencil market price stock bank "
    "money doctor nurse hospital medicine health sleep dream night morning evening"
).split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def _bert_tokenizer():
    """WordPiece over an explicit vocabulary: the specials, every letter (alone and as a
    ``##`` continuation), and whole words for the corpus and the synthetic probe's words
    (edgerank/quality/texts.py), so any text tokenizes and the tests' texts stay short.

    Not trained: `tokenizers`' WordPieceTrainer breaks ties between equally frequent merges
    in hash order, which changes per process, so each test run built a different
    vocabulary, different token ids and different random scores, and a rank test on the
    tiny model passed or failed by the draw (seen on test_gguf's f16 ranking test)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from edgerank.quality.texts import FILLER, TOPICS

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted(set(WORDS) | set(FILLER) | {w for t in TOPICS for w in t.split()})
    letters = sorted(set("".join(words)) | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    pieces = [*specials, *letters, *(f"##{c}" for c in letters), *words]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def _xlmr_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        corpus(),
        trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>"),
    )
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>"))
    )
    return tok


def build_tiny_bert(
    out: Path, seed: int = 0, max_positions: int = 128, init_range: float = 0.02
) -> Path:
    """A 2-layer, 32-wide BertForSequenceClassification (num_labels=1) + tokenizer.json.

    ``init_range`` > 0.02 spreads random scores wider (precision tests need the spread)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out.mkdir(parents=True, exist_ok=True)
    tok = _bert_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        num_labels=1,
        pad_token_id=tok.token_to_id("[PAD]"),
        initializer_range=init_range,
    )
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # widen the head so scores spread beyond float noise
        model.classifier.weight.mul_(20.0)
    model.save_pretrained(out, safe_serialization=True)
    _tokenizer_config(out, "BertTokenizerFast", max_positions)
    return out


def build_tiny_xlmr(
    out: Path, seed: int = 0, max_positions: int = 130, init_range: float = 0.02
) -> Path:
    """A 2-layer XLMRobertaForSequenceClassification (no token types, <s> q </s></s> p </s>)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    out.mkdir(parents=True, exist_ok=True)
    tok = _xlmr_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        type_vocab_size=1,
        num_labels=1,
        initializer_range=init_range,
        pad_token_id=tok.token_to_id("<pad>"),
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
    )
    model = XLMRobertaForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(20.0)
    model.save_pretrained(out, safe_serialization=True)
    _tokenizer_config(out, "XLMRobertaTokenizerFast", max_positions - 2)
    return out


def _tokenizer_config(out: Path, cls: str, max_len: int) -> None:
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": cls, "model_max_length": max_len})
    )


def torch_scores(hf_dir: Path, pairs: list[tuple[str, str]], max_length: int) -> list[float]:
    """The FP32 reference through transformers, one pair at a time (no padding effects)."""
    import torch
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    out = []
    with torch.no_grad():
        for q, p in pairs:
            enc = tok(q, p, truncation="only_second", max_length=max_length, return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return out


# ------------------------------------------------------------------ tiny LLM rerankers

#: the special words the score rules read; trained into the vocabularies as whole tokens
