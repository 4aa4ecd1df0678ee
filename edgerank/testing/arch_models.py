"""Random-weight rerankers at the catalog's real shapes, built offline (no hub).

The INT8 import was built and measured on MiniLM-L6 (BERT, hidden 384). The catalog's models
for real boxes are XLM-RoBERTa (bge-reranker-base/large/v2-m3, bce-reranker) and DeBERTa-v2
(mxbai-rerank); these checkpoints have their architectures and shapes (layers, hidden, heads,
FFN, vocabulary rows, positions) with random weights, for the import's plumbing (export,
fusions, first-token last layer, kinds, cascade) and for speed. Random weights rank by
noise: what a ladder decides on them says nothing of a trained model, and fidelity claims
stay on the real-weight MiniLM rerankers (minilm_rerankers.py).

The tokenizer is all-MiniLM-L6-v2's real WordPiece vocabulary (shipped in edgerank/data)
under each architecture's special tokens and pair template, so English text gets realistic
token counts; its ids stay below 30,526, so a smaller ``vocab_size`` than the real one
changes the embedding table's memory and nothing of the encoder's speed (the table is a
Gather).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

VOCAB_FILE = Path(__file__).resolve().parent.parent / "data" / "all-minilm-l6-v2-vocab.txt"
_BERT_SPECIALS = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}


@dataclass(frozen=True)
class Shape:
    arch: str  # "xlm-roberta" | "deberta-v2"
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int  # the real model's embedding rows
    positions: int
    models: str  # which catalog models have this shape


SHAPES: dict[str, Shape] = {
    "xlmr-base": Shape("xlm-roberta", 768, 12, 12, 3072, 250002, 514,
                       "bge-reranker-base, bce-reranker-base_v1"),
    "xlmr-large": Shape("xlm-roberta", 1024, 24, 16, 4096, 250002, 514,
                        "bge-reranker-large (bge-reranker-v2-m3: 8194 positions)"),
    "deberta-xsmall": Shape("deberta-v2", 384, 12, 6, 1536, 128100, 512,
                            "mxbai-rerank-xsmall-v1"),
    "deberta-base": Shape("deberta-v2", 768, 12, 12, 3072, 128100, 512,
                          "mxbai-rerank-base-v1"),
    "deberta-large": Shape("deberta-v2", 1024, 24, 16, 4096, 128100, 512,
                           "mxbai-rerank-large-v1"),
}  # fmt: skip


def _pieces() -> list[str]:
    lines = VOCAB_FILE.read_text(encoding="utf-8").splitlines()
    return [p for p in lines if p and p not in _BERT_SPECIALS]


def tokenizer(arch: str):
    """MiniLM's WordPiece pieces under the architecture's specials and pair template:
    XLM-R ``<s> q </s></s> p </s>`` (no token types), DeBERTa-v2 ``[CLS] q [SEP] p [SEP]``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    if arch == "xlm-roberta":
        specials, unk, mask = ["<s>", "<pad>", "</s>", "<unk>"], "<unk>", "<mask>"
    else:
        specials, unk, mask = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"], "[UNK]", "[MASK]"
    vocab = {p: i for i, p in enumerate([*specials, *_pieces(), mask])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if arch == "xlm-roberta":
        tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0))
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
        )
    return tok


def small(arch: str) -> Shape:
    """A 2-layer, 64-wide model of ``arch`` for tests: the same graph patterns, seconds to
    export."""
    return Shape(arch, 64, 2, 4, 128, 30600, 130 if arch == "xlm-roberta" else 128, "tests")


def build(
    name: str | Shape, out: Path | str, *, vocab_size: int | None = None, seed: int = 0
) -> Path:
    """Write the random-weight checkpoint of SHAPES[name] (or of a Shape given; cached by a
    marker file).

    ``vocab_size``: embedding rows (default: the real model's; at least the tokenizer's)."""
    out = Path(out)
    shape = SHAPES[name] if isinstance(name, str) else name
    rows = max(vocab_size or shape.vocab, len(_pieces()) + 5)
    marker = out / "edgerank-arch-model.json"
    want = {"shape": repr(shape), "vocab_size": rows, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return out
    import torch

    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(shape.arch)
    tok.save(str(out / "tokenizer.json"))
    torch.manual_seed(seed)
    model = _model(shape, rows, tok)
    with torch.no_grad():  # widen the head so random scores spread beyond float noise
        head = model.classifier
        (head.out_proj if hasattr(head, "out_proj") else head).weight.mul_(20.0)
    model.save_pretrained(out, safe_serialization=True)
    if shape.arch == "xlm-roberta":
        specials = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>",
                    "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                    "mask_token": "<mask>"}  # fmt: skip
        cls, max_len = "XLMRobertaTokenizerFast", shape.positions - 2
    else:
        specials = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                    "unk_token": "[UNK]", "mask_token": "[MASK]"}  # fmt: skip
        cls, max_len = "DebertaV2TokenizerFast", shape.positions
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": cls, "model_max_length": max_len, **specials})
    )
    (out / "special_tokens_map.json").write_text(json.dumps(specials))
    marker.write_text(json.dumps(want))
    return out


def _model(shape: Shape, rows: int, tok):
    common = dict(
        vocab_size=rows, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, intermediate_size=shape.ffn,
        max_position_embeddings=shape.positions, num_labels=1,
    )  # fmt: skip
    if shape.arch == "xlm-roberta":
        from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

        cfg = XLMRobertaConfig(
            **common, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
            bos_token_id=0, eos_token_id=2,
        )  # fmt: skip
        return XLMRobertaForSequenceClassification(cfg).eval()
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    # DeBERTa-v3's configuration, as mxbai-rerank-*-v1 publish it
    cfg = DebertaV2Config(
        **common, type_vocab_size=0, layer_norm_eps=1e-7, relative_attention=True,
        max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
        share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
        pooler_hidden_size=shape.hidden, pooler_hidden_act="gelu", hidden_act="gelu",
        pad_token_id=0,
    )  # fmt: skip
    return DebertaV2ForSequenceClassification(cfg).eval()
