"""What both gguf backends share: the GGUF's header check, the runtime, the tokenizer hook, info."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from edgerank.backends.base import BackendInfo
from edgerank.backends.llama_runtime import LlamaRuntime
from edgerank.models.gguf_file import read_header
from edgerank.models.gguf_model import GgufModel, check_servable, file_precision


class GgufBase:
    def __init__(
        self,
        gguf_path: Path | str,
        tokenizer_dir: Path | str,
        *,
        model: GgufModel,
        threads: int = 1,
        name: str | None = None,
        precision: str | None = None,
        extra_bufts: bool = True,
        identity: str = "",
    ):
        self._path = Path(gguf_path)
        self._identity = identity  # the store entry's (manifest); "" for a bare GGUF
        self._dir = Path(tokenizer_dir)
        self._spec = model
        self._name = name or self._path.stem
        self._header = read_header(self._path)
        check_servable(self._header, model.kind, self._name)
        self._precision = precision or file_precision(self._header)
        self._rt = LlamaRuntime(self._path, threads, extra_bufts=extra_bufts)
        train = self._rt.lib.llama_model_n_ctx_train(self._rt.model)
        if train > 0 and model.max_length > train:
            self._spec = replace(model, max_length=train)
        try:
            self._init_tokenizer()
        except BaseException:
            self._rt.close()
            raise

    def _init_tokenizer(self) -> None:
        raise NotImplementedError

    @property
    def max_length(self) -> int:
        return self._spec.max_length

    def _details(self) -> dict[str, Any]:
        return {"kind": self._spec.kind, "file": self._path.name, "fixes": list(self._header.fixes)}

    def info(self) -> BackendInfo:
        return BackendInfo(
            backend="gguf",
            model=self._name,
            precision=self._precision,
            device="cpu",
            max_length=self._spec.max_length,
            threads=self._rt.threads,
            details=self._details(),
            identity=self._identity,
        )

    def close(self) -> None:
        rt = getattr(self, "_rt", None)
        if rt is not None:
            rt.close()
