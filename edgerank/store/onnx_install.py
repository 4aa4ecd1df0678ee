"""Installing ONNX and torch entries: a local checkpoint or FP32 graph quantized to INT8 with
edgerank's measured recipe, a checkpoint copied as a torch entry, and `pull` from the hub.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgerank.catalog.spec import ModelSpec
from edgerank.errors import BackendUnavailable, InvalidInput
from edgerank.models.checkpoint import Checkpoint, max_length, read_config, stored_precision
from edgerank.models.manifest import MANIFEST, Manifest
from edgerank.store import hub
from edgerank.store.layout import (
    TOKENIZER_FILES,
    TORCH_PATTERNS,
    StoreLayout,
    checked_source,
    publish,
)


class OnnxInstalls(StoreLayout):
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
        from edgerank.convert import int8, onnx_export
        from edgerank.quality.fidelity import compare_onnx

        source_dir = checked_source(source_dir)
        int8.require_quantize()
        target = self.path(name, "onnx")
        staging = self._staging(name)
        try:
            fp32 = _find_fp32_onnx(source_dir)
            if fp32 is None:
                progress("exporting to ONNX (fp32) with torch.onnx")
                fp32 = onnx_export.export_onnx(source_dir, staging / "fp32")
            for f in TOKENIZER_FILES:
                shutil.copy2(source_dir / f, staging / f)
            progress("quantizing to INT8")
            recipe = int8.quantize_int8(fp32, staging / "model.int8.onnx")
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
            publish(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def import_torch(
        self, name: str, source_dir: Path, *, spec: ModelSpec | None = None,
        source: dict | None = None,
    ) -> Path:  # fmt: skip
        """Install a Hugging Face checkpoint as a torch entry (copied as is, no conversion).

        How it scores comes from the catalog entry when given, else from its config.json
        (Checkpoint.detect); modelling code it ships is copied but runs only on opt-in.
        """

        source_dir = Path(source_dir)
        if not all((source_dir / f).is_file() for f in TOKENIZER_FILES):
            raise InvalidInput(f"{source_dir} lacks config.json or tokenizer.json")
        model = Checkpoint.from_spec(spec) if spec is not None else Checkpoint.detect(source_dir)
        files = sorted(
            {p.name for pattern in TORCH_PATTERNS for p in source_dir.glob(pattern)}
            - {MANIFEST, ".verified.json"}
        )
        weights = [f for f in files if f.endswith((".safetensors", ".bin"))]
        if not weights:
            raise InvalidInput(f"{source_dir} has no weights (*.safetensors or pytorch_model*.bin)")
        staging = self._staging(name)
        target = self.path(name, "torch")
        try:
            for f in files:
                shutil.copy2(source_dir / f, staging / f)
            Manifest(
                name=name,
                backend="torch",
                precision=stored_precision(read_config(source_dir)),
                model_file=weights[0],
                max_length=model.max_length,
                files={f: {} for f in files},
                source=source or {"origin": f"local:{source_dir.resolve()}"},
                recipe=model.to_recipe(),
                fidelity={"measured": False, "note": "the checkpoint is the fp32 reference"},
            ).write(staging)
            publish(staging, target)
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
        fp32_route = getattr(src, "fp32_file", None) and not prebuilt_int8
        if fp32_route or not src.int8_file:  # both quantize here
            from edgerank.convert.int8 import require_quantize

            require_quantize()  # before downloading anything
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
        publish(tmp_dir, target)
        tmp_dir.mkdir()  # the TemporaryDirectory that owned it still cleans up
        return target


def _find_fp32_onnx(d: Path) -> Path | None:
    for cand in (d / "model.onnx", d / "onnx" / "model.onnx"):
        if cand.is_file():
            return cand
    return None


def _max_length(source_dir: Path, spec: ModelSpec | None) -> int:
    """The catalog's figure, else the checkpoint's own."""
    return spec.max_length if spec is not None else max_length(read_config(source_dir))
