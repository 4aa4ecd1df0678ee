"""torch rerankers (extra `cuda`): FP32 reference and BF16 on the CPU, FP16 on CUDA.

Cross-encoders use the same PairTokenizer as the ONNX backend, so the two see identical ids
and differ only in arithmetic: that is what fidelity tests, benchmarks and calibration
compare. LLM rerankers use llm.PromptTokenizer, shared with the gguf backend.

CUDA is started (context, weights, one warm-up batch) while loading, so that a broken driver,
a GPU too old for the wheel's kernels or a full card fails there and not on a request; then
the backend reloads on the CPU at the CPU precision and logs why (info().details["fallback"]).

bge-reranker-v2-minicpm-layerwise is hub modelling code (trust_remote_code): it is loaded
only when the caller allows remote code, and is called the way its code expects,
forward(..., cutoff_layers=[k, ...]) -> one score tensor per cutoff; its layers past the
largest cutoff never run. The cutoff is per request where the caller sets one.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgerank.backends import llm
from edgerank.backends.base import BackendInfo, Encoded, ScoreOptions
from edgerank.backends.pairs import PairTokenizer
from edgerank.errors import BackendFailure, InvalidInput, ModelCorrupt, missing_extra
from edgerank.models.checkpoint import Checkpoint, read_config
from edgerank.models.manifest import Manifest

log = logging.getLogger("edgerank.torch")

DTYPES = ("fp32", "bf16", "fp16")
#: what a failing CUDA start raises: driver/runtime errors and OOM are RuntimeErrors, a
#: CPU-only wheel asserts, missing CUDA libraries fail to load
CUDA_FAILURES = (RuntimeError, AssertionError, OSError, ImportError)


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise missing_extra("torch/transformers", "cuda") from exc
    return torch


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def start_cuda(torch: Any, device: str) -> None:
    """Create the CUDA context now, so that a broken setup fails while loading."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "torch.cuda.is_available() is False (a CPU-only torch build, or no usable driver)"
        )
    torch.zeros(1, device=device)


def _release_cuda(torch: Any) -> None:
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except CUDA_FAILURES:  # the device is already broken: nothing to give back
        pass


def _dtype_kwarg() -> str:
    """transformers 4.56 renamed torch_dtype to dtype (the old name warns)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class _TorchBackend:
    """Loading, device fallback and token-bounded sub-batches shared by both model kinds."""

    def __init__(
        self,
        hf_dir: Path | str,
        *,
        model: Checkpoint,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        name: str | None = None,
        allow_remote_code: bool = False,
        cpu_precision: str = "fp32",
        batch_tokens: int | None = None,
        identity: str = "",
    ):
        torch = _torch()
        for p in (precision, cpu_precision):
            if p not in DTYPES:
                raise ValueError(f"precision must be one of {DTYPES}, got {p!r}")
        self._hf_dir = Path(hf_dir)
        remote = model.remote_code or "auto_map" in read_config(self._hf_dir)
        if remote and not allow_remote_code:
            raise InvalidInput(
                f"{name or self._hf_dir.name} runs modelling code from the hub "
                "(trust_remote_code): opt in with --allow-remote-code"
            )
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._spec = model
        self._trust = remote
        self._name = name or self._hf_dir.name
        self._threads = threads or torch.get_num_threads()
        self._batch_tokens = batch_tokens
        self._identity = identity  # the store entry's (manifest); "" for a bare checkpoint
        self._fallback: str | None = None
        self._attention = "sdpa"
        self._init_tokenizer()
        self._place(precision, device, cpu_precision)

    # -- loading ------------------------------------------------------------------------

    def _init_tokenizer(self) -> None:
        raise NotImplementedError

    def _auto_class(self) -> Any:
        raise NotImplementedError

    def _after_load(self) -> None:
        """Model-specific checks once the weights are in place."""

    def _place(self, precision: str, device: str, cpu_precision: str) -> None:
        torch = self._torch
        if device != "cpu":
            try:
                start_cuda(torch, device)
                self._load(precision, device)
                with torch.inference_mode():
                    self._score(self.encode("warm up", ["warm up"], ScoreOptions()))
                return
            except CUDA_FAILURES as exc:
                reason = _first_line(exc)
                log.warning(
                    "CUDA failed to start on %s: %s; falling back to the CPU (%s)",
                    device, reason, cpu_precision,
                )  # fmt: skip
                self._fallback = f"{device}: {reason}"
                self._model = None
                _release_cuda(torch)
            precision = cpu_precision
        self._load(precision, "cpu")

    def _load(self, precision: str, device: str) -> None:
        torch = self._torch
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        kwargs = {_dtype_kwarg(): dtype, "trust_remote_code": self._trust}
        auto = self._auto_class()
        try:
            try:
                model = auto.from_pretrained(self._hf_dir, attn_implementation="sdpa", **kwargs)
                self._attention = "sdpa"
            except ValueError as exc:  # an architecture without an SDPA path (DeBERTa...)
                log.info("no SDPA attention for %s (%s): default attention", self._name, exc)
                model = auto.from_pretrained(self._hf_dir, **kwargs)
                self._attention = "default"
        except OSError as exc:
            raise ModelCorrupt(f"cannot load {self._hf_dir}: {_first_line(exc)}") from exc
        self._device = torch.device(device)
        self._precision = precision
        self._model = model.to(self._device).eval()
        self._after_load()

    # -- scoring ------------------------------------------------------------------------

    def _score(self, batch: Sequence[Encoded]) -> np.ndarray:
        raise NotImplementedError

    def _tensors(self, feed: dict[str, np.ndarray]) -> dict[str, Any]:
        return {k: self._torch.from_numpy(v).to(self._device) for k, v in feed.items()}

    def score(self, batch: Sequence[Encoded]) -> np.ndarray:
        if not batch:
            return np.empty(0, dtype=np.float32)
        out = np.empty(len(batch), dtype=np.float32)
        if self._batch_tokens is None:
            groups = [list(range(len(batch)))]
        else:
            from edgerank.backends.padding import plan_batches

            groups = plan_batches([it.n_tokens for it in batch], self._batch_tokens)
        torch = self._torch
        for idx in groups:
            try:
                with torch.inference_mode():
                    out[idx] = self._score([batch[i] for i in idx])
            except torch.cuda.OutOfMemoryError as exc:
                tokens = len(idx) * max(batch[i].n_tokens for i in idx)
                raise BackendFailure(
                    f"CUDA out of memory on a batch of {tokens} padded tokens: lower the "
                    "batch token budget (max_batch_tokens)"
                ) from exc
            except RuntimeError as exc:
                raise BackendFailure(f"torch failed: {_first_line(exc)}") from exc
        return out

    @property
    def model(self) -> Any:
        """The loaded torch module (tests and profiling look inside it)."""
        return self._model

    def _details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"kind": self._spec.kind, "attention": self._attention}
        if self._fallback:
            details["fallback"] = self._fallback
        return details

    def info(self) -> BackendInfo:
        return BackendInfo(
            backend="torch",
            model=self._name,
            precision=self._precision,
            device=str(self._device),
            max_length=self._spec.max_length,
            threads=self._threads,
            details=self._details(),
            identity=self._identity,
        )

    def close(self) -> None:
        on_gpu = getattr(self, "_device", None) is not None and self._device.type == "cuda"
        self._model = None
        if on_gpu:
            _release_cuda(self._torch)


class TorchBackend(_TorchBackend):
    """Cross-encoders: the classification head's one logit on the first token."""

    def __init__(
        self,
        hf_dir: Path | str,
        *,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        max_length: int | None = None,
        name: str | None = None,
        model: Checkpoint | None = None,
        **kwargs: Any,
    ):
        model = model or Checkpoint.detect(hf_dir)
        if model.kind != "cross-encoder":
            raise InvalidInput(f"{hf_dir} is a {model.kind} model: open it with open_torch()")
        if max_length is not None:
            model = replace(model, max_length=max_length)
        super().__init__(
            hf_dir, model=model, precision=precision, device=device, threads=threads, name=name,
            **kwargs,
        )  # fmt: skip

    def _init_tokenizer(self) -> None:
        self._tok = PairTokenizer(self._hf_dir / "tokenizer.json", self._spec.max_length)

    def _auto_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def _after_load(self) -> None:
        self._uses_types = getattr(self._model.config, "type_vocab_size", 1) > 1

    def encode(self, query: str, passages: Sequence[str], options: ScoreOptions) -> list[Encoded]:
        return self._tok.encode(query, passages, options)

    def _score(self, batch: Sequence[Encoded]) -> np.ndarray:
        feed = self._tok.pad(batch)
        if not self._uses_types:
            feed.pop("token_type_ids")
        logits = self._model(**self._tensors(feed)).logits
        return logits[:, 0].float().cpu().numpy()


class TorchLLMBackend(_TorchBackend):
    """LLM rerankers: answer-token logits at the last position, or layerwise heads."""

    def __init__(self, hf_dir: Path | str, *, model: Checkpoint, **kwargs: Any):
        if model.llm is None:
            raise ValueError("TorchLLMBackend needs an LLM reranker")
        self._fmt = model.llm
        self._layerwise = model.llm.score_rule == "layer-head"
        super().__init__(hf_dir, model=model, **kwargs)

    def _init_tokenizer(self) -> None:
        self._tok = llm.PromptTokenizer.from_dir(self._hf_dir, self._fmt, self._spec.max_length)

    def _auto_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def _after_load(self) -> None:
        cfg = self._model.config
        self._layers = (getattr(cfg, "start_layer", 1), cfg.num_hidden_layers)
        if self._layerwise:
            self._check_cutoff(self._fmt.cutoff_layer)
        params = inspect.signature(self._model.forward).parameters
        self._keep = {}
        for key in ("logits_to_keep", "num_logits_to_keep"):  # renamed in transformers 4.50
            if key in params:
                self._keep = {key: 1}
                break

    def _check_cutoff(self, layer: int | None) -> int:
        lo, hi = self._layers
        if layer is None or not lo <= layer <= hi:
            raise InvalidInput(f"cutoff layer must be in {lo}..{hi} for {self._name}, got {layer}")
        return layer

    def encode(
        self,
        query: str,
        passages: Sequence[str],
        options: ScoreOptions,
        *,
        cutoff_layer: int | None = None,
    ) -> list[Encoded]:
        """``cutoff_layer`` (or a ``cutoff_layer`` field on the options) overrides the
        layerwise model's default for this request; other models ignore it."""
        extra = None
        if self._layerwise:
            layer = cutoff_layer or getattr(options, "cutoff_layer", None) or self._fmt.cutoff_layer
            extra = {"cutoff_layer": self._check_cutoff(layer)}
        return self._tok.encode(query, passages, options, extra=extra)

    def _score(self, batch: Sequence[Encoded]) -> np.ndarray:
        feed = self._tensors(self._tok.pad(batch))
        if self._layerwise:
            return self._score_layerwise(batch, feed)
        out = self._model(**feed, use_cache=False, **self._keep)
        picked = out.logits[:, -1, list(self._tok.answer_ids)]
        return llm.raw_scores(self._fmt.score_rule, picked.float().cpu().numpy())

    def _score_layerwise(self, batch: Sequence[Encoded], feed: dict[str, Any]) -> np.ndarray:
        """One pass up to the deepest cutoff in the batch; each row reads its own layer."""
        torch = self._torch
        wanted = [(it.extra or {}).get("cutoff_layer") or self._fmt.cutoff_layer for it in batch]
        cutoffs = sorted(set(wanted))
        out = self._model(**feed, cutoff_layers=cutoffs, use_cache=False)
        per_layer = torch.stack([scores[:, -1] for scores in out.logits], dim=1)
        column = torch.tensor([cutoffs.index(k) for k in wanted], device=per_layer.device)
        rows = torch.arange(len(batch), device=per_layer.device)
        return per_layer[rows, column].float().cpu().numpy()

    def _details(self) -> dict[str, Any]:
        details = super()._details()
        details["score_rule"] = self._fmt.score_rule
        if self._layerwise:
            details["cutoff_layer"] = self._fmt.cutoff_layer
        return details


def open_torch(
    hf_dir: Path | str, model: Checkpoint | None = None, **kwargs: Any
) -> TorchBackend | TorchLLMBackend:
    """The backend class that fits the checkpoint (detected from config.json if not given)."""
    model = model or Checkpoint.detect(hf_dir)
    if model.kind == "cross-encoder":
        return TorchBackend(hf_dir, model=model, **kwargs)
    return TorchLLMBackend(hf_dir, model=model, **kwargs)


def open_entry(model_dir: Path | str, manifest: Manifest, **kwargs: Any):
    """A torch store entry: the checkpoint plus a manifest whose recipe says how it scores."""
    model_dir = Path(model_dir)
    model = Checkpoint.from_recipe(manifest.recipe, manifest.max_length)
    return open_torch(model_dir, model, name=manifest.name, identity=manifest.identity(), **kwargs)
