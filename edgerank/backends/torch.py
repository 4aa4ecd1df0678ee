"""torch cross-encoders: the FP32 reference, BF16 on AMX CPUs, FP16 on CUDA (extra `cuda`).

Tokenization is the same PairTokenizer as the ONNX backend, so the two see identical ids
and differ only in arithmetic: that is what fidelity tests and benchmarks compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgerank.backends.base import BackendInfo, Encoded, ScoreOptions
from edgerank.backends.pairs import PairTokenizer
from edgerank.errors import BackendFailure, missing_extra

DTYPES = ("fp32", "bf16", "fp16")


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise missing_extra("torch/transformers", "cuda") from exc
    return torch


class TorchBackend:
    def __init__(
        self,
        hf_dir: Path | str,
        *,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        max_length: int = 512,
        name: str | None = None,
    ):
        torch = _torch()
        from transformers import AutoModelForSequenceClassification

        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {DTYPES}")
        hf_dir = Path(hf_dir)
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
            precision
        ]
        self._device = torch.device(device)
        self._precision = precision
        self._threads = threads or torch.get_num_threads()
        self._name = name or hf_dir.name
        self._tok = PairTokenizer(hf_dir / "tokenizer.json", max_length)
        model = AutoModelForSequenceClassification.from_pretrained(
            hf_dir, torch_dtype=self._dtype, attn_implementation="sdpa"
        )
        self._model = model.to(self._device).eval()
        self._uses_types = getattr(model.config, "type_vocab_size", 1) > 1

    def encode(self, query: str, passages: Sequence[str], options: ScoreOptions) -> list[Encoded]:
        return self._tok.encode(query, passages, options)

    def score(self, batch: Sequence[Encoded]) -> np.ndarray:
        if not batch:
            return np.empty(0, dtype=np.float32)
        torch = self._torch
        feed = self._tok.pad(batch)
        if not self._uses_types:
            feed.pop("token_type_ids")
        tensors = {k: torch.from_numpy(v).to(self._device) for k, v in feed.items()}
        try:
            with torch.inference_mode():
                logits = self._model(**tensors).logits
        except RuntimeError as exc:
            raise BackendFailure(f"torch failed: {exc}".splitlines()[0]) from exc
        return logits[:, 0].float().cpu().numpy()

    def info(self) -> BackendInfo:
        return BackendInfo(
            backend="torch",
            model=self._name,
            precision=self._precision,
            device=str(self._device),
            max_length=self._tok.max_length,
            threads=self._threads,
        )

    def close(self) -> None:
        self._model = None
