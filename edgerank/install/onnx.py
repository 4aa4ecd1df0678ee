"""Installing ONNX and torch entries: a local checkpoint or FP32 graph quantized to INT8 with
the accuracy-aware recipe (proved against FP32 on natural text before it is installed), a
checkpoint copied as a torch entry, and `pull` from the hub.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgerank.catalog.spec import ModelSpec
from edgerank.convert.backoff import Policy
from edgerank.errors import BackendUnavailable, BelowFidelityFloor, InvalidInput
from edgerank.install import hub
from edgerank.models.checkpoint import Checkpoint, max_length, read_config, stored_precision
from edgerank.models.manifest import MANIFEST, Manifest, floor_line
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
        calibration: Path | str | None = None,
        policy: Policy | None = None,
        keep_reference: bool = False,
    ) -> Path:
        """Turn a local directory into an INT8 ONNX store entry, proved faithful first.

        Accepts a Hugging Face checkpoint (exported with the `convert` extra) or a directory
        that already holds an FP32 `model.onnx` + tokenizer.json (quantized without torch).
        The accuracy-aware recipe (convert/backoff.py) measures INT8 against the FP32 graph
        on the shipped natural-text probe; ``calibration`` (JSONL of {"query", "documents"})
        replaces the shipped calibration text. Below the fidelity floor the install is
        refused (BelowFidelityFloor) unless ``policy.allow_below_floor``; the manifest says
        which. The FP32 graph stays beside the INT8 file (recipe reference_file) when the
        recipe rescores near-ties with it (engine/cascade.py; ``policy.cascade``, the
        default) or ``keep_reference`` asks for it (the daemon's fidelity watch).
        """
        from edgerank.convert import backoff, int8, onnx_export
        from edgerank.hardware.probe import int8_kernel_here
        from edgerank.quality import sets

        source_dir = checked_source(source_dir)
        int8.require_quantize()
        cal_groups, cal_info = (
            sets.from_file(calibration) if calibration else sets.shipped(sets.CALIBRATION)
        )
        probe_groups, probe_info = sets.shipped(sets.PROBE)
        with self.staged(name, "onnx") as staging:
            fp32 = _find_fp32_onnx(source_dir)
            if fp32 is None:
                progress("exporting to ONNX (fp32) with torch.onnx")
                fp32 = onnx_export.export_onnx(source_dir, staging / "fp32")
            for f in TOKENIZER_FILES:
                shutil.copy2(source_dir / f, staging / f)
            length = _max_length(source_dir, spec)
            progress("quantizing to INT8 and measuring it against FP32 on the probe")
            found = backoff.quantize_accurate(
                fp32, staging / "work", staging / "tokenizer.json",
                probe=probe_groups, calibration=cal_groups, progress=progress, policy=policy,
                max_length=min(length, backoff.PROBE_MAX_LENGTH),
            )  # fmt: skip
            fidelity = {
                "reference": "onnx fp32 (the same graph, fused)",
                "int8_kernel": int8_kernel_here(),
                "probe": probe_info,
                **found["fidelity"],
                "floor": found["floor"],
                "meets_floor": found["meets_floor"],
            }
            if not found["meets_floor"]:
                figures = floor_line(fidelity)
                if not (policy and policy.allow_below_floor):
                    raise BelowFidelityFloor(
                        f"{name}: the best INT8 found ranks below the fidelity floor "
                        f"({figures}); not installed (--allow-below-floor installs it anyway)"
                    )
                fidelity["below_floor_allowed"] = True
                progress(f"installing BELOW the fidelity floor ({figures}), as asked")
            int8_file = found["precision"] == "int8"
            model_file = "model.int8.onnx" if int8_file else "model.fp32.onnx"
            shutil.move(str(found["file"]), staging / model_file)
            files = [model_file, *TOKENIZER_FILES]
            recipe = {
                **found["recipe"],
                "calibration": cal_info,
                "frontier": found["frontier"],
                "install_seconds": found["seconds"],
                "session": int8.SESSION,
            }
            if "int8_rejected" in found:
                recipe["int8_rejected"] = found["int8_rejected"]
            if (keep_reference or "cascade" in recipe) and int8_file:
                shutil.move(str(staging / "work" / "model.fp32.onnx"), staging / "model.fp32.onnx")
                recipe["reference_file"] = "model.fp32.onnx"
                files.append("model.fp32.onnx")
            shutil.rmtree(staging / "work", ignore_errors=True)
            shutil.rmtree(staging / "fp32", ignore_errors=True)
            Manifest(
                name=name,
                backend="onnx",
                precision=found["precision"],
                model_file=model_file,
                max_length=length,
                normalise="sigmoid",
                files={f: {} for f in files},
                source=source or {"origin": f"local:{source_dir.resolve()}"},
                recipe=recipe,
                fidelity=fidelity,
            ).write(staging)
        return self.path(name, "onnx")

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
        with self.staged(name, "torch") as staging:
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
        return self.path(name, "torch")

    def pull(
        self,
        spec: ModelSpec,
        *,
        prebuilt_int8: bool = False,
        revision: str | None = None,
        backend: str = "onnx",
        progress: Callable[[str], None] = lambda msg: None,
        calibration: Path | str | None = None,
        policy: Policy | None = None,
        keep_reference: bool = False,
    ) -> Path:
        """Download a catalog model and install it as INT8 ONNX (or GGUF: `pull_gguf`).

        The hub's FP32 ONNX quantized here with the accuracy-aware recipe (no torch needed;
        `import_onnx`), else the checkpoint exported with the `convert` extra and then
        quantized the same way. The publisher's ready INT8 file only when asked
        (``prebuilt_int8``): measured against the FP32 file when the repo has one, else
        recorded as unmeasured (`edgerank models` and `probe --explain` then say so).
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
        install = {"calibration": calibration, "policy": policy, "keep_reference": keep_reference}
        fp32_route = getattr(src, "fp32_file", None) and not prebuilt_int8
        if fp32_route or not src.int8_file:  # both quantize here
            from edgerank.convert.int8 import require_quantize

            require_quantize()  # before downloading anything
        with tempfile.TemporaryDirectory(dir=self._ensure_models_dir(), prefix=".pull-") as tmp:
            tmp_dir = Path(tmp)
            fp32 = getattr(src, "fp32_file", None)
            if prebuilt_int8:
                if not src.int8_file:
                    raise InvalidInput(f"{spec.name}: its hub repo publishes no INT8 file")
                progress(f"downloading {src.repo}/{src.int8_file}")
                facts = hub.fetch(src.repo, [src.int8_file, *TOKENIZER_FILES], tmp_dir, revision)
                ref = None
                if fp32:  # measure the publisher's file against its FP32 original
                    progress(f"downloading {src.repo}/{fp32} to measure it against")
                    hub.fetch(src.repo, [fp32], tmp_dir / "ref", revision)
                    ref = tmp_dir / "ref" / fp32
                return self._install_prebuilt(spec, tmp_dir, src.int8_file, facts, ref)
            if fp32:
                progress(f"downloading {src.repo}/{fp32}")
                facts = hub.fetch(src.repo, [fp32, *TOKENIZER_FILES], tmp_dir, revision)
                (tmp_dir / fp32).rename(tmp_dir / "model.onnx")
                return self.import_onnx(
                    spec.name, tmp_dir, spec=spec, source=facts, progress=progress, **install
                )
            progress(f"downloading checkpoint {spec.hub_id}")
            facts = hub.fetch_checkpoint(spec.hub_id, tmp_dir / "hf", revision)
            return self.import_onnx(
                spec.name, tmp_dir / "hf", spec=spec, source=facts, progress=progress, **install
            )

    # -- gguf -------------------------------------------------------------------------------

    def _install_prebuilt(
        self, spec: ModelSpec, tmp_dir: Path, rel: str, facts: dict, ref: Path | None = None
    ) -> Path:
        fidelity: dict = {
            "measured": False,
            "note": "the publisher's INT8 file, taken as is (--prebuilt-int8): fidelity unmeasured",
        }
        if ref is not None:
            from edgerank.convert import backoff

            fidelity = backoff.measure_pair(
                ref, tmp_dir / rel, tmp_dir / "tokenizer.json",
                min(spec.max_length, backoff.PROBE_MAX_LENGTH),
            )  # fmt: skip
            shutil.rmtree(tmp_dir / "ref", ignore_errors=True)
        manifest = Manifest(
            name=spec.name,
            backend="onnx",
            precision="int8",
            model_file=rel,
            max_length=spec.max_length,
            files={f: {} for f in (rel, *TOKENIZER_FILES)},
            source=facts,
            recipe={"name": "hub-prebuilt", "file": rel},
            fidelity=fidelity,
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
