"""INT8 ONNX cross-encoders on CPU: onnxruntime + the Rust `tokenizers`. Never imports torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgerank.backends.base import BackendInfo, Encoded, ScoreOptions
from edgerank.backends.pairs import PairTokenizer
from edgerank.errors import BackendFailure, ModelCorrupt
from edgerank.models.manifest import Manifest
from edgerank.models.serving import Verdict

#: padded tokens per onnxruntime run: a batch wider than this runs as consecutive slices
RUN_TOKENS = 2048


def session_options(threads: int, prepack: bool = True):
    """Fixed thread count with spinning off: spinning burns the other vCPU on small boxes.

    Memory: onnxruntime's CPU arena grows by powers of two and keeps what it took, and memory
    patterns keep a buffer plan per input shape; a reranker sees a new (batch, length) shape
    on nearly every batch, so one request of 100 x 256 tokens took a daemon from 253 to
    1505 MiB for good. Memory patterns are off; the arena stays (malloc per tensor measured
    slower, and glibc kept the memory anyway) but is shrunk after every run (`run_options`),
    and a batch runs in slices of RUN_TOKENS padded tokens, so the activations one run
    holds stay far below the chooser's budget (bench/memory.py: the figures, and the speed
    against the old settings, measured in one run).
    """
    import onnxruntime as ort  # a base dependency

    so = ort.SessionOptions()
    so.enable_mem_pattern = False
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if not prepack:  # the weights stay in the file's mapped pages (see open_session)
        so.add_session_config_entry("session.disable_prepacking", "1")
    return so


def run_options():
    """Every run gives the arena's unused chunks back when it ends."""
    import onnxruntime as ort

    ro = ort.RunOptions()
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return ro


def run_slices(n: int, width: int) -> list[slice]:
    """Consecutive slices of a batch of n rows padded to `width`, RUN_TOKENS each at most."""
    rows = max(1, RUN_TOKENS // max(1, width))
    return [slice(at, at + rows) for at in range(0, n, rows)]


def open_session(model_path: Path, threads: int, prepack: bool = True):
    """``prepack`` False: MatMuls read their weights where they lie, so the weights of a
    graph saved with external data stay in its file's mapped pages (shared, clean, given
    back under pressure) instead of packed copies in the process's own memory: what an
    INT8 entry's FP32 reference wants, which only rescores a few passages a request
    (bench/memory.py measures both)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(model_path), session_options(threads, prepack),
            providers=["CPUExecutionProvider"],
        )  # fmt: skip
    except Exception as exc:  # onnxruntime raises its own non-exported exception types
        raise ModelCorrupt(f"onnxruntime cannot load {model_path}: {exc}".splitlines()[0]) from exc


class OnnxBackend:
    """A cross-encoder whose graph maps (input_ids, attention_mask[, token_type_ids]) -> logits."""

    def __init__(
        self, model_dir: Path, manifest: Manifest, threads: int = 1,
        verdict: Verdict | None = None, prepack: bool = True,
    ):  # fmt: skip
        self._dir = model_dir
        self._manifest = manifest
        #: why this file of the entry serves (INT8 or FP32 at the request shape), if it chose
        self._verdict = verdict
        self._threads = threads
        self._tok = PairTokenizer(model_dir / "tokenizer.json", manifest.max_length)
        self._session = open_session(model_dir / manifest.model_file, threads, prepack)
        self._run_options = run_options()
        self._inputs = [i.name for i in self._session.get_inputs()]
        missing = {"input_ids", "attention_mask"} - set(self._inputs)
        if missing:
            raise ModelCorrupt(f"{manifest.model_file} lacks inputs {sorted(missing)}")
        self._output = self._session.get_outputs()[0].name

    @classmethod
    def from_file(
        cls, path: Path | str, max_length: int, *, threads: int = 1, precision: str = "fp32",
        prepack: bool = True,
    ) -> OnnxBackend:  # fmt: skip
        """A graph outside the store (an export, a candidate recipe, an entry's FP32
        reference): its tokenizer.json sits beside it or one directory up."""
        path = Path(path).resolve()
        model_dir = path.parent
        if not (model_dir / "tokenizer.json").exists():
            model_dir = model_dir.parent
        manifest = Manifest(path.stem, "onnx", precision, str(path), max_length)
        return cls(model_dir, manifest, threads, prepack=prepack)

    @classmethod
    def from_dir(cls, model_dir: Path | str, threads: int = 1, verify: bool = True) -> OnnxBackend:
        model_dir = Path(model_dir)
        manifest = Manifest.read(model_dir)
        if verify:
            manifest.verify(model_dir)
        return cls(model_dir, manifest, threads)

    @property
    def tokenizer(self) -> PairTokenizer:
        return self._tok

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def model_dir(self) -> Path:
        """Where the entry lives: its FP32 reference (the cascade's) sits there too."""
        return self._dir

    def encode(self, query: str, passages: Sequence[str], options: ScoreOptions) -> list[Encoded]:
        return self._tok.encode(query, passages, options)

    def score(self, batch: Sequence[Encoded], feeds: dict | None = None) -> np.ndarray:
        """Raw logits; ``feeds``: more inputs a graph takes besides the tokens (the
        install's per-MatMul switch, convert/int8_files.switch_graph)."""
        if not batch:
            return np.empty(0, dtype=np.float32)
        width = max(it.n_tokens for it in batch)
        parts = [self._score(batch[part], feeds) for part in run_slices(len(batch), width)]
        return np.concatenate(parts)

    def _score(self, batch: Sequence[Encoded], feeds: dict | None = None) -> np.ndarray:
        feed = self._tok.pad(batch)
        feed = {k: v for k, v in feed.items() if k in self._inputs}
        feed.update(feeds or {})
        try:
            (logits,) = self._session.run([self._output], feed, self._run_options)
        except Exception as exc:
            raise BackendFailure(f"onnxruntime failed: {exc}".splitlines()[0]) from exc
        return np.asarray(logits, dtype=np.float32).reshape(len(batch), -1)[:, 0]

    def info(self) -> BackendInfo:
        from edgerank.hardware.probe import int8_kernel_here

        m = self._manifest
        kernel = int8_kernel_here()  # the note compares it with the measured one
        return BackendInfo(
            backend="onnx",
            model=m.name,
            precision=m.precision,
            device="cpu",
            max_length=m.max_length,
            threads=self._threads,
            normalise=m.normalise,  # type: ignore[arg-type]
            details={
                "model_file": m.model_file,
                "recipe": m.recipe.get("name", ""),
                # Info reports the FP32 rescoring of near-ties (engine/cascade) the entry serves
                **({"cascade_margin": c["margin"]} if (c := m.recipe.get("cascade")) else {}),
                **({"fidelity_note": note} if (note := m.fidelity_note(kernel)) else {}),
                **({"serving": self._verdict.reason} if self._verdict else {}),
            },
            identity=m.identity(),
        )

    def close(self) -> None:
        self._session = None
