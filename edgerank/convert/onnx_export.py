"""Hugging Face cross-encoder checkpoint -> FP32 ONNX, the input of every INT8 recipe. Needs the
`convert` extra (torch, transformers), imported inside the function.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgerank.errors import missing_extra


def export_onnx(hf_dir: Path | str, out_dir: Path | str, opset: int = 17) -> Path:
    """FP32 ONNX of a *ForSequenceClassification checkpoint, tokenizer and config beside it.

    torch.onnx.export (TorchScript exporter) rather than optimum: same graph, one fewer
    heavy dependency at import, and eager attention gives the pattern the fusions know.
    """
    try:
        import torch
        from transformers import AutoModelForSequenceClassification
    except ImportError as exc:
        raise missing_extra("torch/transformers", "convert") from exc
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        hf_dir, attn_implementation="eager"
    ).eval()
    ids = torch.full((2, 8), 5, dtype=torch.long)
    args = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.config, "type_vocab_size", 1) > 1:  # BERT yes, XLM-R no
        args["token_type_ids"] = torch.zeros_like(ids)
    axes = {name: {0: "batch", 1: "sequence"} for name in args}
    axes["logits"] = {0: "batch"}
    out = out_dir / "model.onnx"
    with torch.inference_mode():
        torch.onnx.export(
            model, (), str(out), kwargs=args, input_names=list(args),
            output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False,
        )  # fmt: skip
    for name in ("tokenizer.json", "config.json"):
        if (hf_dir / name).exists():
            shutil.copy2(hf_dir / name, out_dir / name)
    return out
