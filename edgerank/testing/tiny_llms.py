"""Tiny random LLM rerankers built offline (Qwen3, Gemma, a layerwise MiniCPM stand-in): a
trained `tokenizers` vocabulary that holds the catalog's prompts and answer words, and random
weights. They test plumbing (prompts, answer tokens, prefix sharing, GGUF conversion), never
quality.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgerank.testing.tiny_models import corpus

ANSWER_WORDS = ("yes", "no", "Yes", "No")
_PRINTABLE = [chr(c) for c in range(32, 127)] + ["\n"]


def _llm_corpus() -> list[str]:
    """Word salad plus the catalog prompts, so their pieces merge like a real vocabulary's."""
    from edgerank.catalog.load import load_catalog

    prompts = {s.prompt for s in load_catalog() if s.prompt}
    instructions = {s.default_instruction for s in load_catalog() if s.default_instruction}
    return [*corpus(600, seed=3), *prompts, *instructions, *(list(ANSWER_WORDS) * 60)]


def _check_answers(tok) -> None:
    missing = [w for w in ANSWER_WORDS if tok.token_to_id(w) is None]
    if missing:
        raise AssertionError(f"tiny vocabulary lacks {missing}: raise its size")


def _qwen_tokenizer(vocab_size: int = 600):
    """Byte-level BPE with Qwen's chat specials (no BOS, like Qwen's own tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_llm_corpus(), trainer)
    tok.add_tokens(["<think>", "</think>"])
    _check_answers(tok)
    return tok


def _sentencepiece_like_tokenizer(vocab_size: int = 600):
    """Metaspace BPE with <bos> prepended by the post-processor (Gemma / MiniCPM style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=_PRINTABLE,
    )
    tok.train_from_iterator(_llm_corpus(), trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    _check_answers(tok)
    return tok


def _llm_tokenizer_config(out: Path, max_len: int, **specials: str | None) -> None:
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, **specials}
        )
    )


def build_tiny_qwen3(out: Path, seed: int = 0, max_positions: int = 512) -> Path:
    """A 2-layer Qwen3ForCausalLM (GQA, q/k norms) with a Qwen-like chat vocabulary."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = _qwen_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        initializer_range=0.3,  # wide weights: the answer logits spread beyond float noise
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"),
        bos_token_id=None,
    )
    Qwen3ForCausalLM(cfg).eval().save_pretrained(out, safe_serialization=True)
    _llm_tokenizer_config(
        out, max_positions, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    return out


def build_tiny_gemma(out: Path, seed: int = 0, max_positions: int = 512) -> Path:
    """A 2-layer GemmaForCausalLM (MQA, scaled embeddings, tied head) with <bos>."""
    import torch
    from transformers import GemmaConfig, GemmaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = _sentencepiece_like_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    torch.manual_seed(seed)
    cfg = GemmaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=max_positions,
        initializer_range=0.3,
        pad_token_id=tok.token_to_id("<pad>"),
        bos_token_id=tok.token_to_id("<bos>"),
        eos_token_id=tok.token_to_id("<eos>"),
    )
    GemmaForCausalLM(cfg).eval().save_pretrained(out, safe_serialization=True)
    _llm_tokenizer_config(
        out, max_positions, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>",
    )  # fmt: skip
    return out


#: the modelling code of the tiny layerwise model, shipped in its directory as hub code is
#: (config.json's auto_map names it), so that loading it needs trust_remote_code like BAAI's
#: LayerWiseMiniCPMForCausalLM. Same calling convention: forward(..., cutoff_layers=[k, ...])
#: returns logits = one (batch, length) tensor per cutoff, in increasing layer order, from
#: head[k - start_layer] applied to the normed hidden state after k layers; layers past the
#: largest cutoff never run.
LAYERWISE_MODELING = """
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput


class TinyLayerwiseConfig(PretrainedConfig):
    model_type = "tiny-layerwise"

    def __init__(self, vocab_size=64, hidden_size=32, num_hidden_layers=6,
                 num_attention_heads=2, max_position_embeddings=512, start_layer=2, **kw):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.start_layer = start_layer
        super().__init__(**kw)


class Block(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(),
                                 nn.Linear(2 * hidden, hidden))

    def forward(self, x, mask):
        b, n, h = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, h // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(a.transpose(1, 2).reshape(b, n, h))
        return x + self.mlp(self.norm2(x))


class TinyLayerwiseForCausalLM(PreTrainedModel):
    config_class = TinyLayerwiseConfig
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        h = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, h)
        self.pos = nn.Embedding(config.max_position_embeddings, h)
        self.layers = nn.ModuleList(
            Block(h, config.num_attention_heads) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(h)
        self.lm_head = nn.ModuleList(
            nn.Linear(h, 1, bias=False)
            for _ in range(config.start_layer, config.num_hidden_layers + 1))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.3)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def forward(self, input_ids, attention_mask=None, position_ids=None, cutoff_layers=None,
                **kwargs):
        cfg = self.config
        b, n = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(n, device=input_ids.device).expand(b, n)
        if cutoff_layers is None:
            cutoff_layers = [cfg.num_hidden_layers]
        cutoffs = sorted(set([cutoff_layers] if isinstance(cutoff_layers, int) else cutoff_layers))
        if any(k < cfg.start_layer or k > cfg.num_hidden_layers for k in cutoffs):
            raise ValueError(f"cutoffs must be in {cfg.start_layer}..{cfg.num_hidden_layers}")
        keys = attention_mask.bool()[:, None, None, :]
        causal = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=input_ids.device)
        mask = (causal & keys) | eye  # a pad row sees itself: no fully masked row, no NaN
        x = self.embed(input_ids) + self.pos(position_ids)
        logits = []
        for idx in range(max(cutoffs) + 1):
            if idx in cutoffs:
                head = self.lm_head[idx - cfg.start_layer]
                logits.append(head(self.norm(x)).squeeze(-1).float())
            if idx == max(cutoffs):
                break
            x = self.layers[idx](x, mask)
        return ModelOutput(logits=tuple(logits))
"""


def build_tiny_layerwise(
    out: Path, seed: int = 0, layers: int = 6, start_layer: int = 2, max_positions: int = 512
) -> Path:
    """A tiny layerwise reranker whose modelling code is remote code in its own directory."""
    import importlib.util

    import torch

    out.mkdir(parents=True, exist_ok=True)
    tok = _sentencepiece_like_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    code = out / "modeling_tiny_layerwise.py"
    code.write_text(LAYERWISE_MODELING)
    spec = importlib.util.spec_from_file_location(f"_tiny_layerwise_{seed}", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(seed)
    cfg = module.TinyLayerwiseConfig(
        vocab_size=tok.get_vocab_size(),
        num_hidden_layers=layers,
        start_layer=start_layer,
        max_position_embeddings=max_positions,
        architectures=["TinyLayerwiseForCausalLM"],
        auto_map={
            "AutoConfig": "modeling_tiny_layerwise.TinyLayerwiseConfig",
            "AutoModelForCausalLM": "modeling_tiny_layerwise.TinyLayerwiseForCausalLM",
        },
        bos_token_id=tok.token_to_id("<bos>"),
        pad_token_id=tok.token_to_id("<pad>"),
    )
    module.TinyLayerwiseForCausalLM(cfg).eval().save_pretrained(out, safe_serialization=True)
    _llm_tokenizer_config(out, max_positions, bos_token="<bos>", pad_token="<pad>")
    return out
