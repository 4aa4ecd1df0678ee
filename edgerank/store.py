"""The model store: where models live, how they get there (pull, import) and how they open.

Layout: <home>/models/<name>/<backend>/ with a manifest.json (see manifest.py). A model is
installed only once its manifest is written, so an interrupted pull never looks installed.
A torch entry is the Hugging Face checkpoint itself; its manifest's recipe says how it
scores (backends/torch.py TorchModel).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from edgerank.catalog import ModelSpec
from edgerank.errors import BackendUnavailable, InvalidInput, ModelCorrupt, ModelNotFound
from edgerank.manifest import MANIFEST, Manifest

#: the files a cross-encoder directory needs beside its weights
TOKENIZER_FILES = ("tokenizer.json", "config.json")
#: what a gguf entry keeps beside its GGUF files (edgerank tokenizes; llama.cpp never does)
GGUF_TOKENIZER_FILES = (
    "tokenizer.json",
    "config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
#: quants `import --backend gguf` produces (f16 from the converter, the rest quantized)
GGUF_QUANTS = ("f16", "q8_0", "q4_k_m")
#: what a torch entry copies from a checkpoint: weights, configs, tokenizer, modelling code
TORCH_PATTERNS = ("*.safetensors", "*.json", "*.py", "*.txt", "*.model", "pytorch_model*.bin")


def home() -> Path:
    """$EDGERANK_HOME, else systemd's $STATE_DIRECTORY, else the XDG data dir."""
    if env := os.environ.get("EDGERANK_HOME"):
        return Path(env)
    if env := os.environ.get("STATE_DIRECTORY"):
        return Path(env.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "edgerank"


class ModelStore:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else home()

    def path(self, name: str, backend: str = "onnx") -> Path:
        return self.root / "models" / name / backend

    def installed(self) -> dict[str, list[str]]:
        """name -> backends with a manifest (complete installs only)."""
        out: dict[str, list[str]] = {}
        models = self.root / "models"
        if not models.is_dir():
            return out
        for manifest in sorted(models.glob(f"*/*/{MANIFEST}")):
            out.setdefault(manifest.parent.parent.name, []).append(manifest.parent.name)
        return out

    def manifest(self, name: str, backend: str = "onnx") -> Manifest:
        d = self.path(name, backend)
        if not d.exists():
            raise ModelNotFound(
                f"model {name!r} ({backend}) is not installed in {self.root}: "
                f"run `edgerank pull {name}`"
            )
        return Manifest.read(d)

    def open(self, name: str, backend: str = "onnx", threads: int = 1, **backend_options):
        """Verify and load an installed model into its backend. ``backend_options``: torch device,
        precision, cpu_precision, allow_remote_code (backends/torch.py); for gguf, precision
        picks the quant file (backends/gguf.py open_entry)."""
        d = self.path(name, backend)
        manifest = self.manifest(name, backend)  # one clear error for missing/unreadable
        if backend == "onnx":
            from edgerank.backends.onnx import OnnxBackend

            return OnnxBackend.from_dir(d, threads=threads)
        if backend == "torch":
            from edgerank.backends.torch import open_entry

            return open_entry(d, manifest, threads=threads, **backend_options)
        if backend == "gguf":  # backend_options here: precision (the quant), gguf knobs
            from edgerank.backends.gguf import open_entry as open_gguf_entry

            return open_gguf_entry(d, manifest, threads=threads, **backend_options)
        raise BackendUnavailable(f"backend {backend!r} is not available in this build")

    # -- installing -----------------------------------------------------------------------

    def import_onnx(
        self,
        name: str,
        source_dir: Path,
        *,
        spec: ModelSpec | None = None,
        source: dict | None = None,
        progress: Callable[[str], None] = lambda msg: None,
    ) -> Path:
        """Turn a local directory into an INT8 ONNX store entry.

        Accepts a Hugging Face checkpoint (exported with the `convert` extra) or a directory
        that already holds an FP32 `model.onnx` + tokenizer.json (quantized without torch).
        """
        from edgerank import convert
        from edgerank.fidelity import compare_onnx

        source_dir = Path(source_dir)
        if not source_dir.is_dir():
            raise InvalidInput(f"{source_dir} is not a directory")
        missing = [f for f in TOKENIZER_FILES if not (source_dir / f).is_file()]
        if missing:
            raise InvalidInput(
                f"{source_dir} lacks {', '.join(missing)}: not a reranker checkpoint"
            )
        target = self.path(name, "onnx")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self._ensure_models_dir()))
        try:
            fp32 = _find_fp32_onnx(source_dir)
            if fp32 is None:
                progress("exporting to ONNX (fp32) with optimum")
                fp32 = convert.export_onnx(source_dir, staging / "fp32")
            for f in TOKENIZER_FILES:
                shutil.copy2(source_dir / f, staging / f)
            progress("quantizing to INT8")
            recipe = convert.quantize_int8(fp32, staging / "model.int8.onnx")
            progress("measuring fidelity against fp32")
            max_length = _max_length(source_dir, spec)
            fidelity = compare_onnx(staging, fp32.resolve(), "model.int8.onnx", max_length)
            shutil.rmtree(staging / "fp32", ignore_errors=True)
            manifest = Manifest(
                name=name,
                backend="onnx",
                precision="int8",
                model_file="model.int8.onnx",
                max_length=max_length,
                normalise="sigmoid",
                files={f: {} for f in ("model.int8.onnx", *TOKENIZER_FILES)},
                source=source or {"origin": f"local:{source_dir.resolve()}"},
                recipe=recipe,
                fidelity=fidelity,
            )
            manifest.write(staging)
            _publish(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def import_torch(
        self, name: str, source_dir: Path, *, spec: ModelSpec | None = None,
        source: dict | None = None,
    ) -> Path:  # fmt: skip
        """Install a Hugging Face checkpoint as a torch entry (copied as is, no conversion).

        How it scores comes from the catalog entry when given, else from its config.json
        (TorchModel.detect); modelling code it ships is copied but runs only on opt-in.
        """
        from edgerank.backends.torch import TorchModel

        source_dir = Path(source_dir)
        if not all((source_dir / f).is_file() for f in TOKENIZER_FILES):
            raise InvalidInput(f"{source_dir} lacks config.json or tokenizer.json")
        model = TorchModel.from_spec(spec) if spec is not None else TorchModel.detect(source_dir)
        files = sorted(
            {p.name for pattern in TORCH_PATTERNS for p in source_dir.glob(pattern)}
            - {MANIFEST, ".verified.json"}
        )
        weights = [f for f in files if f.endswith((".safetensors", ".bin"))]
        if not weights:
            raise InvalidInput(f"{source_dir} has no weights (*.safetensors or pytorch_model*.bin)")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self._ensure_models_dir()))
        target = self.path(name, "torch")
        try:
            for f in files:
                shutil.copy2(source_dir / f, staging / f)
            Manifest(
                name=name,
                backend="torch",
                precision=_checkpoint_precision(source_dir),
                model_file=weights[0],
                max_length=model.max_length,
                files={f: {} for f in files},
                source=source or {"origin": f"local:{source_dir.resolve()}"},
                recipe=model.to_recipe(),
                fidelity={"measured": False, "note": "the checkpoint is the fp32 reference"},
            ).write(staging)
            _publish(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def pull(
        self,
        spec: ModelSpec,
        *,
        prebuilt_int8: bool = False,
        revision: str | None = None,
        backend: str = "onnx",
        progress: Callable[[str], None] = lambda msg: None,
    ) -> Path:
        """Download a catalog model and install it as INT8 ONNX (or GGUF: `pull_gguf`).

        Order of preference: the hub's FP32 ONNX quantized here with edgerank's measured
        recipe (no torch needed); the hub's ready INT8 file (`prebuilt_int8`, or when no FP32
        file exists; those are naive dynamic quantizations, so fidelity is recorded as
        unmeasured); else the checkpoint, exported with the `convert` extra.
        """
        from edgerank import hub

        if spec.kind == "bi-encoder":
            raise InvalidInput(f"{spec.name} is embedded in edgerank: nothing to pull")
        if backend == "gguf":
            return self.pull_gguf(spec, revision=revision, progress=progress)
        if backend != "onnx":
            raise InvalidInput(f"pull installs onnx or gguf entries, not {backend!r}")
        if "onnx" not in spec.backends or spec.onnx is None:
            raise BackendUnavailable(
                f"{spec.name} has no ONNX build ({', '.join(spec.backends)} only); "
                "this edgerank pulls ONNX cross-encoders"
            )
        src = spec.onnx
        with tempfile.TemporaryDirectory(dir=self._ensure_models_dir(), prefix=".pull-") as tmp:
            tmp_dir = Path(tmp)
            fp32 = getattr(src, "fp32_file", None)
            if fp32 and not prebuilt_int8:
                progress(f"downloading {src.repo}/{fp32}")
                facts = hub.fetch(src.repo, [fp32, *TOKENIZER_FILES], tmp_dir, revision)
                (tmp_dir / fp32).rename(tmp_dir / "model.onnx")
                return self.import_onnx(
                    spec.name, tmp_dir, spec=spec, source=facts, progress=progress
                )
            if src.int8_file:
                progress(f"downloading {src.repo}/{src.int8_file}")
                facts = hub.fetch(src.repo, [src.int8_file, *TOKENIZER_FILES], tmp_dir, revision)
                return self._install_prebuilt(spec, tmp_dir, src.int8_file, facts)
            progress(f"downloading checkpoint {spec.hub_id}")
            facts = hub.fetch_checkpoint(spec.hub_id, tmp_dir / "hf", revision)
            return self.import_onnx(
                spec.name, tmp_dir / "hf", spec=spec, source=facts, progress=progress
            )

    # -- gguf -------------------------------------------------------------------------------

    def import_gguf(
        self,
        name: str,
        source_dir: Path,
        *,
        spec: ModelSpec | None = None,
        source: dict | None = None,
        quants: tuple[str, ...] = GGUF_QUANTS,
        progress: Callable[[str], None] = lambda msg: None,
        **convert_options,
    ) -> Path:
        """Install a local directory as a gguf entry.

        A Hugging Face checkpoint is converted with llama.cpp's converter (convert_gguf.py,
        BERT fixes included) and quantized; a directory that already holds *.gguf files and
        the checkpoint's tokenizer.json + config.json installs those files, after checking
        that llama.cpp would score them faithfully.
        """
        from edgerank.backends import gguf

        source_dir = Path(source_dir)
        if not source_dir.is_dir():
            raise InvalidInput(f"{source_dir} is not a directory")
        missing = [f for f in TOKENIZER_FILES if not (source_dir / f).is_file()]
        if missing:
            raise InvalidInput(
                f"{source_dir} lacks {', '.join(missing)}: not a reranker checkpoint"
            )
        if spec is not None:
            gguf.refuse_layerwise(spec)
        ready = sorted(source_dir.glob("*.gguf"))
        origin = source or {"origin": f"local:{source_dir.resolve()}"}
        if ready:
            files = {gguf_quant(p): p.name for p in ready}
            if len(files) != len(ready):
                raise InvalidInput(f"{source_dir}: several GGUF files of the same precision")
            return self._install_gguf(name, source_dir, files, spec, origin, copy=True)
        from edgerank import convert_gguf

        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self._ensure_models_dir()))
        try:
            model = _gguf_model(source_dir, spec)
            keep = convert_gguf.CROSS_ENCODER_KEEP if model.kind == "cross-encoder" else None
            base = "f32" if model.kind == "cross-encoder" else "f16"
            files = convert_gguf.convert_and_quantize(
                source_dir, staging, quants, base=base, keep=keep, home=self.root,
                progress=progress, **convert_options,
            )  # fmt: skip
            recipe = {
                "converter": f"{convert_gguf.PACKAGE}=={convert_gguf.llama_version()}",
                "quantizer": "llama_model_quantize",
                "keep": keep or {},
            }
            for f in GGUF_TOKENIZER_FILES:
                if (source_dir / f).is_file():
                    shutil.copy2(source_dir / f, staging / f)
            return self._install_gguf(
                name, staging, files, spec, origin, copy=False, recipe=recipe, progress=progress
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def pull_gguf(
        self,
        spec: ModelSpec,
        *,
        revision: str | None = None,
        progress: Callable[[str], None] = lambda msg: None,
    ) -> Path:
        """The GGUF files the catalog names (q8_0 and q4_k_m where published, else f16), with
        the tokenizer from the model's own repository; without published files, the
        checkpoint converted here."""
        from edgerank import hub
        from edgerank.backends import gguf

        gguf.refuse_layerwise(spec)
        if "gguf" not in spec.backends or spec.gguf is None:
            raise BackendUnavailable(
                f"{spec.name} has no GGUF build ({', '.join(spec.backends)} only)"
            )
        src = spec.gguf
        with tempfile.TemporaryDirectory(dir=self._ensure_models_dir(), prefix=".pull-") as tmp:
            tmp_dir = Path(tmp)
            if not src.files:
                progress(f"downloading checkpoint {src.repo} (no published GGUF: converting)")
                facts = hub.fetch_checkpoint(src.repo, tmp_dir / "hf", revision)
                return self.import_gguf(
                    spec.name, tmp_dir / "hf", spec=spec, source=facts, progress=progress
                )
            wanted = [q for q in ("q8_0", "q4_k_m") if q in src.files] or list(src.files)
            names = [src.files[q] for q in wanted]
            progress(f"downloading {src.repo}: {', '.join(names)}")
            facts = hub.fetch(src.repo, names, tmp_dir, revision)
            tok = hub.fetch(spec.hub_id, list(TOKENIZER_FILES), tmp_dir, revision)
            for extra in ("tokenizer_config.json", "special_tokens_map.json"):
                try:
                    hub.fetch(spec.hub_id, [extra], tmp_dir, revision)
                except ModelNotFound:
                    pass
            facts = {**facts, "tokenizer": {k: tok[k] for k in ("repo", "revision")}}
            files = {q: src.files[q] for q in wanted}
            return self._install_gguf(spec.name, tmp_dir, files, spec, facts, copy=False)

    def _install_gguf(
        self,
        name: str,
        files_dir: Path,
        files: dict[str, str],
        spec: ModelSpec | None,
        origin: dict,
        *,
        copy: bool,
        recipe: dict | None = None,
        progress: Callable[[str], None] = lambda msg: None,
    ) -> Path:
        """Check, measure and publish GGUF files + tokenizer as <name>/gguf. ``copy``: copy
        the files (a user's directory) rather than hard-link them (edgerank's own temp)."""
        from edgerank.backends import gguf
        from edgerank.gguf_file import read_header

        model = replace(_gguf_model(files_dir, spec), files=dict(files))
        for quant, rel in files.items():
            gguf.check_servable(read_header(files_dir / rel), model.kind, f"{name} ({quant})")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self._ensure_models_dir()))
        try:
            extras = [f for f in GGUF_TOKENIZER_FILES if (files_dir / f).is_file()]
            for rel in (*files.values(), *extras):
                _link_or_copy(files_dir / rel, staging / rel, copy)
            default = next((q for q in ("q8_0", "f16", "q4_k_m", "f32") if q in files), None)
            default = default or next(iter(files))
            fidelity: dict = {"measured": False}
            if recipe is not None and model.kind == "cross-encoder" and len(files) > 1:
                progress("measuring each quant's fidelity against the most precise one")
                fidelity = _gguf_fidelity(staging, model)
            Manifest(
                name=name,
                backend="gguf",
                precision=default,
                model_file=files[default],
                max_length=model.max_length,
                files={f: {} for f in (*files.values(), *extras)},
                source=origin,
                recipe={**model.to_recipe(), **(recipe or {"origin": "prebuilt GGUF files"})},
                fidelity=fidelity,
            ).write(staging)
            target = self.path(name, "gguf")
            _publish(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _install_prebuilt(self, spec: ModelSpec, tmp_dir: Path, rel: str, facts: dict) -> Path:
        manifest = Manifest(
            name=spec.name,
            backend="onnx",
            precision="int8",
            model_file=rel,
            max_length=spec.max_length,
            files={f: {} for f in (rel, *TOKENIZER_FILES)},
            source=facts,
            recipe={"name": "hub-prebuilt", "file": rel},
            fidelity={"measured": False},
        )
        manifest.write(tmp_dir)
        target = self.path(spec.name, "onnx")
        _publish(tmp_dir, target)
        tmp_dir.mkdir()  # the TemporaryDirectory that owned it still cleans up
        return target

    def _ensure_models_dir(self) -> Path:
        d = self.root / "models"
        d.mkdir(parents=True, exist_ok=True)
        return d


def _publish(staging: Path, target: Path) -> None:
    """Move a complete entry into place: a rename on the same filesystem, never a copy."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)


def _checkpoint_precision(d: Path) -> str:
    """The dtype the checkpoint is stored in (config.json torch_dtype), as a precision name."""
    import json

    try:
        cfg = json.loads((d / "config.json").read_text())
    except ValueError as exc:
        raise ModelCorrupt(f"{d / 'config.json'} is not valid JSON") from exc
    stored = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    return {"bfloat16": "bf16", "float16": "fp16"}.get(stored, "fp32")


def _find_fp32_onnx(d: Path) -> Path | None:
    for cand in (d / "model.onnx", d / "onnx" / "model.onnx"):
        if cand.is_file():
            return cand
    return None


def _max_length(source_dir: Path, spec: ModelSpec | None) -> int:
    """The catalog's figure, else the checkpoint's position table (minus XLM-R's offset)."""
    if spec is not None:
        return spec.max_length
    import json

    try:
        cfg = json.loads((source_dir / "config.json").read_text())
    except ValueError as exc:
        raise ModelCorrupt(f"{source_dir / 'config.json'} is not valid JSON") from exc
    n = int(cfg.get("max_position_embeddings", 512))
    if cfg.get("model_type") in ("xlm-roberta", "roberta", "camembert"):
        n -= 2  # positions start after the padding index
    return min(n, 512) if n > 0 else 512


# -- gguf helpers -----------------------------------------------------------------------------


def gguf_quant(path: Path) -> str:
    """The precision of a GGUF file, from its header (general.file_type)."""
    from edgerank.backends.gguf import file_precision
    from edgerank.gguf_file import read_header

    return file_precision(read_header(path))


def _gguf_model(hf_dir: Path, spec: ModelSpec | None):
    """How a gguf entry scores: the catalog's word, else the checkpoint's config.json."""
    from edgerank.backends import gguf, llm
    from edgerank.backends.torch import TorchModel  # config.json rules only, no torch

    if spec is not None:
        gguf.refuse_layerwise(spec)
        fmt = llm.LlmFormat.from_spec(spec) if spec.is_llm else None
        return gguf.GgufModel(spec.kind, spec.max_length, fmt)
    tm = TorchModel.detect(hf_dir)
    if tm.kind == "llm-layerwise":
        raise BackendUnavailable(gguf.LAYERWISE_ERROR.format(name=hf_dir.name))
    return gguf.GgufModel(tm.kind, tm.max_length, tm.llm)


def _gguf_fidelity(model_dir: Path, model) -> dict:
    """Each quant against the most precise file of the entry, on the synthetic probe."""
    from edgerank.backends.gguf import open_gguf
    from edgerank.fidelity import compare

    order = [q for q in ("f32", "f16", "q8_0", "q4_k_m") if q in model.files]
    ref_q = order[0]
    small = replace(model, max_length=min(model.max_length, 256))
    ref = open_gguf(model_dir / model.files[ref_q], model_dir, small, threads=1)
    out: dict = {"reference": f"gguf {ref_q}", "probe": "synthetic, 24 groups x 10"}
    try:
        for q in order[1:]:
            cand = open_gguf(model_dir / model.files[q], model_dir, small, threads=1)
            try:
                out[q] = compare(ref, cand)
            finally:
                cand.close()
    finally:
        ref.close()
    return out


def _link_or_copy(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
