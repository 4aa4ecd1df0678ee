"""PROVISIONAL (lead): export + INT8 quantization, replaced by the measured recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgerank.errors import missing_extra

DEFAULT_RECIPE = "matmulnbits8-b32-acc4"


def export_onnx(hf_dir: Path | str, out_dir: Path | str) -> Path:
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
    uses_types = getattr(model.config, "type_vocab_size", 1) > 1
    ids = torch.ones((2, 8), dtype=torch.long)
    args = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if uses_types:
        args["token_type_ids"] = torch.zeros_like(ids)
    axes = {k: {0: "batch", 1: "sequence"} for k in args}
    axes["logits"] = {0: "batch"}
    out = out_dir / "model.onnx"
    torch.onnx.export(
        model, (), str(out), kwargs=args, input_names=list(args), output_names=["logits"],
        dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip
    for f in ("tokenizer.json", "config.json"):
        if (hf_dir / f).exists():
            shutil.copy2(hf_dir / f, out_dir / f)
    return out


def quantize_int8(fp32_onnx: Path | str, out_onnx: Path | str, recipe: str = DEFAULT_RECIPE):
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(fp32_onnx))
    q = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True, accuracy_level=4)
    q.process()
    onnx.save(q.model.model, str(out_onnx))
    return {"name": recipe, "op": "MatMulNBits", "bits": 8, "block_size": 32, "accuracy_level": 4}
