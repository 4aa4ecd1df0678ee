"""llama.cpp's C API through llama-cpp-python's ctypes bindings: the library initialised once with
its log routed to logging, a reusable llama_batch, and one model + context pair that grows
on demand. Shared by the gguf backends and by the GGUF quantizer (convert/gguf.py).
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerank.errors import BackendFailure, ModelCorrupt, missing_extra

log = logging.getLogger("edgerank.gguf")

_INIT_LOCK = threading.Lock()


_STATE: dict[str, Any] = {}


def load_llama():
    """llama_cpp, initialised once, with its log routed to logging (it prints by default)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise missing_extra("llama-cpp-python", "gguf") from exc
    with _INIT_LOCK:
        if "lib" not in _STATE:
            lines: deque[str] = deque(maxlen=20)

            @llama_cpp.llama_log_callback
            def _log(level, text, user_data):  # noqa: ARG001 - ctypes signature
                msg = text.decode("utf-8", errors="replace").rstrip()
                if msg:
                    lines.append(msg)
                    log.debug("%s", msg)

            llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _STATE.update(lib=llama_cpp, log=_log, lines=lines)
    return _STATE["lib"]


def last_log(default: str) -> str:
    lines = [ln for ln in _STATE.get("lines", ()) if "error" in ln.lower() or "failed" in ln]
    return lines[-1] if lines else default


class LlamaBatch:
    """A reusable llama_batch and a typed view of its arrays."""

    def __init__(self, lib: Any, capacity: int):
        self._lib = lib
        self.capacity = capacity
        self.raw = lib.llama_batch_init(capacity, 0, 1)
        self._seq = [self.raw.seq_id[i] for i in range(capacity)]

    def fill(self, rows: Sequence[tuple[np.ndarray, int, int, bool]]) -> list[int]:
        """rows: (token ids, first position, sequence, logits for the last token).
        Returns the batch index of each row's last token."""
        ids = np.concatenate([r[0] for r in rows]).astype(np.int32)
        n = len(ids)
        if n > self.capacity:
            raise AssertionError("batch overflow")
        pos = np.concatenate([np.arange(p, p + len(t), dtype=np.int32) for t, p, _, _ in rows])
        out = np.zeros(n, dtype=np.int8)
        ones = np.ones(n, dtype=np.int32)
        last, start = [], 0
        for t, _, seq, want in rows:
            for i in range(start, start + len(t)):
                self._seq[i][0] = seq
            start += len(t)
            last.append(start - 1)
            if want:
                out[start - 1] = 1
        b = self.raw
        ctypes.memmove(b.token, ids.ctypes.data, ids.nbytes)
        ctypes.memmove(b.pos, pos.ctypes.data, pos.nbytes)
        ctypes.memmove(b.n_seq_id, ones.ctypes.data, ones.nbytes)
        ctypes.memmove(b.logits, out.ctypes.data, out.nbytes)
        b.n_tokens = n
        return last

    def free(self) -> None:
        if self.raw is not None:
            self._lib.llama_batch_free(self.raw)
            self.raw = None


class LlamaRuntime:
    """One model and one context; the context is rebuilt larger when a request needs it."""

    def __init__(
        self, path: Path, threads: int, *, extra_bufts: bool = True, vocab_only: bool = False
    ):
        """``vocab_only``: the vocabulary and metadata without the weights (an import's
        checks), no context can be made."""
        self.lib = lib = load_llama()
        self.path = path
        self.threads = max(1, int(threads))
        mp = lib.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.load_mode = lib.LLAMA_LOAD_MODE_MMAP
        mp.use_extra_bufts = extra_bufts
        mp.vocab_only = vocab_only
        self.model = lib.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise ModelCorrupt(f"llama.cpp cannot load {path}: {last_log('see the log')}")
        self.ctx = None
        self.batch: LlamaBatch | None = None
        self.n_ctx = 0
        self.n_seq = 0
        self.params: dict[str, Any] = {}

    def context(self, n_ctx: int, n_batch: int, n_ubatch: int, n_seq: int, **params: Any):
        """A context with at least these sizes (reused when the current one is big enough)."""
        lib = self.lib
        if (
            self.ctx is not None
            and n_ctx <= self.n_ctx
            and n_batch <= self.batch.capacity
            and n_seq <= self.n_seq
            and params == self.params
        ):
            return self.ctx
        self.free_context()
        cp = lib.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_ubatch
        cp.n_seq_max = n_seq
        cp.n_threads = self.threads
        cp.n_threads_batch = self.threads
        cp.no_perf = True
        cp.embeddings = params.get("embeddings", False)
        cp.pooling_type = params.get("pooling", lib.LLAMA_POOLING_TYPE_NONE)
        cp.kv_unified = params.get("kv_unified", True)
        # llama.cpp's CPU flash attention rounds through f16 differently for different batch
        # sizes (up to 4e-3 on a logit, measured): off, so that batch mates never matter
        cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        for key in ("flash_attn_type", "type_k", "type_v"):
            if key in params:
                setattr(cp, key, params[key])
        ctx = lib.llama_init_from_model(self.model, cp)
        if not ctx:
            raise BackendFailure(
                f"llama.cpp cannot create a context of {n_ctx} tokens for {self.path.name}: "
                f"{last_log('out of memory?')}"
            )
        self.ctx, self.n_ctx, self.params = ctx, lib.llama_n_ctx(ctx), dict(params)
        self.n_seq = n_seq
        self.batch = LlamaBatch(lib, n_batch)
        return ctx

    def decode(self) -> None:
        rc = self.lib.llama_decode(self.ctx, self.batch.raw)
        if rc != 0:
            raise BackendFailure(f"llama_decode failed ({rc}): {last_log('no KV room?')}")

    def memory(self):
        return self.lib.llama_get_memory(self.ctx)

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(512)
        n = self.lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def free_context(self) -> None:
        if self.batch is not None:
            self.batch.free()
            self.batch = None
        if self.ctx is not None:
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def close(self) -> None:
        self.free_context()
        if self.model is not None:
            self.lib.llama_model_free(self.model)
            self.model = None


def round_up(n: int, step: int = 256) -> int:
    return int(math.ceil(max(n, 1) / step) * step)
