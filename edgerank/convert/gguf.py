"""Hugging Face checkpoint -> GGUF (f16 or f32) with llama.cpp's own converter, then quantized.

The converter ships only in llama-cpp-python's source distribution. edgerank never copies
it: `converter_dir()` fetches that sdist with pip (the version of the installed
llama-cpp-python, so the converter and the runtime agree), keeps convert_hf_to_gguf.py,
conversion/ and gguf-py/ under <home>/tools/, and gguf_runner.py runs it in a subprocess
with its own gguf-py first on the path (PyPI's `gguf` does not match it). The conversion
needs torch and transformers (the `convert` extra); EDGERANK_LLAMA_CPP_SRC may point at an
already extracted llama.cpp tree instead of the download.

BERT cross-encoders need two fixes, applied to a staged copy of the checkpoint before the
converter sees it, and recorded in the GGUF (``edgerank.fixes``):

- pooler: BertForSequenceClassification scores ``classifier(tanh(pooler.dense(h_cls)))``,
  but the converter drops ``bert.pooler``; renamed ``classifier.dense`` it becomes
  llama.cpp's ``cls`` tensor, which RANK pooling applies with a tanh (as for RoBERTa);
- segment-b: llama.cpp's BERT graph adds token type 0 to every token. The token table is
  doubled, rows V.. holding ``word + type[1] - type[0]``, and the backend offsets
  segment-B ids by V (``edgerank.segment_b_offset``): the sum the graph computes is then
  exactly BERT's ``word + type[t] + position``.

Quantization (q8_0, q4_k_m, or f16 from f32) is llama.cpp's llama_model_quantize, in process.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerank.backends.llama_runtime import last_log, load_llama
from edgerank.catalog import quants as gguf_quants
from edgerank.errors import BackendFailure, BackendUnavailable, InvalidInput, missing_extra
from edgerank.models.checkpoint import read_config

ENV_SRC = "EDGERANK_LLAMA_CPP_SRC"
PACKAGE = "llama-cpp-python"
#: what the converter needs from the sdist's vendor/llama.cpp
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")
#: architectures whose checkpoint gets the BERT fixes
BERT_ARCHS = ("BertForSequenceClassification",)
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
#: q8_0 of a cross-encoder keeps the LayerNorm-fed matmuls (attention Q/K/V, FFN up) in f16.
#: ggml's q8_0 also rounds each matmul's *input* to 8 bits per block of 32, and a block that
#: holds one of the post-LayerNorm outlier channels loses the rest: on the MiniLM test model
#: plain q8_0 kept the FP32 top-1 in 95% of 60 groups (Spearman 0.995), this mix in 100%
#: (0.9986) at the same speed and 15% more bytes (edgerank/testing/minilm_ce.py's model against
#: torch FP32; tests/backends/test_gguf.py holds the recipe to the acceptance bar).
CROSS_ENCODER_KEEP = {r"attn_(q|k|v|qkv)\.weight": "f16", r"ffn_up\.weight": "f16"}


def llama_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise missing_extra(PACKAGE, "gguf") from None


def _is_converter(d: Path) -> bool:
    return (d / "convert_hf_to_gguf.py").is_file() and (d / "conversion").is_dir()


def converter_dir(
    home: Path | None = None,
    *,
    version: str | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> Path:
    """The llama.cpp converter matching the installed llama-cpp-python, fetched once.

    Order: $EDGERANK_LLAMA_CPP_SRC; <home>/tools/llama-cpp-python-<version>/ from an earlier
    run; else `pip download --no-deps --no-binary :all: llama-cpp-python==<version>` (pip's
    own index settings apply: PIP_INDEX_URL, PIP_FIND_LINKS, ...) and extract the parts.
    """
    if env := os.environ.get(ENV_SRC):
        d = Path(env)
        if not _is_converter(d):
            raise InvalidInput(f"{ENV_SRC}={env} holds no convert_hf_to_gguf.py + conversion/")
        return d
    if home is None:
        from edgerank.store.layout import home as store_home

        home = store_home()
    version = version or llama_version()
    target = Path(home) / "tools" / f"{PACKAGE}-{version}"
    if _is_converter(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".sdist-") as tmp:
        progress(f"downloading the {PACKAGE} {version} source (for llama.cpp's converter)")
        sdist = _pip_download(version, Path(tmp))
        staging = Path(tmp) / "converter"
        _extract_converter(sdist, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def _pip_download(version: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "--dest", str(dest), f"{PACKAGE}=={version}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BackendUnavailable(
            f"pip could not download the {PACKAGE}=={version} source for llama.cpp's converter "
            f"({tail[-1] if tail else 'no output'}); set {ENV_SRC} to an extracted copy"
        )
    found = sorted(dest.glob("*.tar.gz"))
    if not found:
        raise BackendUnavailable(f"pip downloaded no {PACKAGE} source archive into {dest}")
    return found[0]


def _extract_converter(sdist: Path, out: Path) -> None:
    """Only <top>/vendor/llama.cpp/{CONVERTER_PARTS}, refusing links and paths that escape."""
    out.mkdir(parents=True)
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp"):
                continue
            if parts[3] not in CONVERTER_PARTS or ".." in parts:
                continue
            if not (member.isfile() or member.isdir()):
                continue
            dest = out.joinpath(*parts[3:])
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with src, open(dest, "wb") as f:
                shutil.copyfileobj(src, f)
    if not _is_converter(out):
        raise BackendUnavailable(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py")


def needs_bert_fixes(cfg: dict[str, Any]) -> bool:
    arch = (cfg.get("architectures") or [""])[0]
    return arch in BERT_ARCHS


def _load_state(hf_dir: Path) -> dict[str, Any]:
    import torch

    files = sorted(hf_dir.glob("*.safetensors"))
    state: dict[str, Any] = {}
    if files:
        from safetensors.torch import load_file

        for f in files:
            state.update(load_file(str(f)))
        return state
    for f in sorted(hf_dir.glob("pytorch_model*.bin")):
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    if not state:
        raise InvalidInput(f"{hf_dir} has no weights (*.safetensors or pytorch_model*.bin)")
    return state


def stage_bert_fixes(hf_dir: Path, out: Path, *, pooler: bool = True, segment_b: bool = True):
    """A copy of a BertForSequenceClassification checkpoint the converter maps faithfully.

    Returns the metadata to record: ``edgerank.fixes`` and ``edgerank.segment_b_offset``.
    """
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError as exc:
        raise missing_extra("torch/safetensors", "convert") from exc
    cfg = read_config(hf_dir)
    state = _load_state(hf_dir)
    prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
    fixes: list[str] = []
    meta: dict[str, Any] = {}
    if pooler:
        for part in ("weight", "bias"):
            src = f"{prefix}pooler.dense.{part}"
            if src not in state:
                raise InvalidInput(f"{hf_dir}: no {src}: not a BERT sequence classifier")
            state[f"classifier.dense.{part}"] = state.pop(src)
            state[f"classifier.out_proj.{part}"] = state.pop(f"classifier.{part}")
        fixes.append("pooler")
    types = state.get(f"{prefix}embeddings.token_type_embeddings.weight")
    if segment_b and types is not None and types.shape[0] > 1:
        if types.shape[0] > 2:
            raise InvalidInput(f"{hf_dir}: {types.shape[0]} token types; edgerank folds only 2")
        key = f"{prefix}embeddings.word_embeddings.weight"
        words = state[key]
        vocab = int(words.shape[0])
        state[key] = torch.cat([words, words + (types[1] - types[0])], dim=0)
        cfg["vocab_size"] = 2 * vocab
        fixes.append("segment-b")
        meta["edgerank.segment_b_offset"] = vocab
    meta["edgerank.fixes"] = ",".join(fixes)
    out.mkdir(parents=True, exist_ok=True)
    for f in hf_dir.iterdir():
        if (
            f.is_file()
            and not f.name.endswith((".safetensors", ".bin"))
            and f.name != "config.json"
        ):
            shutil.copy2(f, out / f.name)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return meta


@dataclass(frozen=True)
class Job:
    """One conversion: checkpoint -> GGUF file of ``outtype``."""

    hf_dir: Path
    outfile: Path
    outtype: str = "f16"
    #: False only to show what goes wrong without the BERT fixes (tests)
    bert_fixes: bool = True


def convert(
    hf_dir: Path | str,
    outfile: Path | str,
    *,
    outtype: str = "f16",
    tools: Path | None = None,
    home: Path | None = None,
    bert_fixes: bool = True,
    progress: Callable[[str], None] = lambda msg: None,
) -> Path:
    """One GGUF from a checkpoint, BERT fixes applied."""
    job = Job(Path(hf_dir), Path(outfile), outtype, bert_fixes)
    return convert_many([job], tools=tools, home=home, progress=progress)[0]


def convert_many(
    jobs: Sequence[Job],
    *,
    tools: Path | None = None,
    home: Path | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> list[Path]:
    """Several conversions in one converter process (torch is imported once)."""
    specs = []
    for job in jobs:
        if job.outtype not in OUTTYPES:
            raise ValueError(f"outtype must be one of {OUTTYPES}, got {job.outtype!r}")
        cfg = read_config(job.hf_dir)
        arch = (cfg.get("architectures") or [""])[0]
        if "LayerWise" in arch:
            from edgerank.models.gguf_model import LAYERWISE_ERROR

            raise BackendUnavailable(LAYERWISE_ERROR.format(name=job.hf_dir.name))
        specs.append((job, cfg, arch))
    for module in ("torch", "transformers", "safetensors"):
        if importlib.util.find_spec(module) is None:  # the converter needs all three
            raise missing_extra(module, "convert")
    tools = tools or converter_dir(home, progress=progress)
    with tempfile.TemporaryDirectory(prefix="edgerank-gguf-") as tmp:
        runs = []
        for i, (job, cfg, arch) in enumerate(specs):
            src = job.hf_dir
            meta: dict[str, Any] = {"edgerank.source_arch": arch}
            if needs_bert_fixes(cfg) and job.bert_fixes:
                progress("folding BERT's pooler and segment-B embedding into the checkpoint")
                src = Path(tmp) / str(i) / job.hf_dir.name
                meta.update(stage_bert_fixes(job.hf_dir, src))
            job.outfile.parent.mkdir(parents=True, exist_ok=True)
            runs.append(
                {"model": str(src), "outfile": str(job.outfile), "outtype": job.outtype,
                 "meta": meta}
            )  # fmt: skip
        names = ", ".join(j.hf_dir.name for j in jobs)
        progress(f"converting {names} to GGUF with llama.cpp's converter")
        run_converter(tools, runs)
    return [job.outfile for job in jobs]


def run_converter(tools: Path, runs: list[dict[str, Any]]) -> None:
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])  # edgerank importable in the child
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    env.setdefault("NO_LOCAL_GGUF", "1")  # the runner puts the converter's gguf-py first
    cmd = [sys.executable, "-m", "edgerank.convert.gguf_runner", str(tools), json.dumps(runs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    missing = [r["outfile"] for r in runs if not Path(r["outfile"]).is_file()]
    if proc.returncode != 0 or missing:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln] or lines
        what = ", ".join(Path(r["model"]).name for r in runs)
        last = errors[-1] if errors else f"exit {proc.returncode}"
        raise BackendFailure(f"llama.cpp's converter failed on {what}: {last}")


def convert_and_quantize(
    hf_dir: Path | str,
    out_dir: Path | str,
    quants: tuple[str, ...] = gguf_quants.MADE,
    *,
    base: str = "f16",
    threads: int = 0,
    keep: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda msg: None,
    **convert_kw: Any,
) -> dict[str, str]:
    """``base`` (f32 or f16) from the converter, every quant from it with llama.cpp's
    quantizer; ``keep`` overrides the type of matching tensors in the q8_0 file.
    Returns quant -> file name in out_dir (the base file is kept only if asked for).

    An f32 base avoids rounding twice (f32 -> f16 -> q8_0): on the MiniLM test model that
    flipped near-tied top-1s in 2 of 60 groups. Cross-encoders (fp32 checkpoints, <= 568M
    parameters) use it; LLMs (bf16 checkpoints of 0.6-8B) convert to f16."""
    from edgerank.convert.gguf import quantize

    out_dir = Path(out_dir)
    if base not in ("f32", "f16"):
        raise ValueError(f"base must be f32 or f16, got {base!r}")
    files = {base: f"model.{base}.gguf"}
    convert(hf_dir, out_dir / files[base], outtype=base, progress=progress, **convert_kw)
    for q in quants:
        if q == base:
            continue
        progress(f"quantizing to {q}")
        files[q] = f"model.{q}.gguf"
        kept = keep if q == "q8_0" else None
        quantize(out_dir / files[base], out_dir / files[q], q, threads, kept)
    if base not in quants:
        (out_dir / files.pop(base)).unlink()
    return files


def quantize(
    src: Path | str,
    dst: Path | str,
    quant: str,
    threads: int = 0,
    keep: dict[str, str] | None = None,
) -> Path:
    """llama.cpp's own quantizer (llama_model_quantize): f32/f16 GGUF -> f16, q8_0, q4_k_m.

    ``keep``: tensor name regex -> type ("f32" | "f16" | "q8_0") overriding the quant's."""
    lib = load_llama()
    if quant not in gguf_quants.BY_NAME:
        raise ValueError(f"quant must be one of {gguf_quants.PRECISE_FIRST}, got {quant!r}")
    params = lib.llama_model_quantize_default_params()
    params.ftype = gguf_quants.BY_NAME[quant].ftype
    params.nthread = threads
    types = {"f32": lib.GGML_TYPE_F32, "f16": lib.GGML_TYPE_F16, "q8_0": lib.GGML_TYPE_Q8_0}
    overrides = (lib.llama_model_tensor_override * (len(keep or {}) + 1))()
    for i, (pattern, kind) in enumerate((keep or {}).items()):
        overrides[i].pattern = pattern.encode()
        overrides[i].type = types[kind]
    if keep:
        params.tt_overrides = overrides
    rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise BackendFailure(f"llama.cpp could not quantize {src} to {quant}: {last_log('')}")
    return Path(dst)
