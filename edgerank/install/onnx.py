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
from edgerank.convert.decision import Decision
from edgerank.errors import BackendUnavailable, BelowFidelityFloor, InvalidInput, TooLittleMemory
from edgerank.install import hub
from edgerank.models import serving
from edgerank.models.checkpoint import Checkpoint, max_length, read_config, stored_precision
from edgerank.models.manifest import MANIFEST, Manifest, floor_line, weights_file
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
        which. INT8 or FP32 is decided at ``policy.request_shape`` and recorded (manifest
        ``serving``), with both graphs kept where both can serve another shape. The FP32
        graph also stays beside the INT8 file (recipe reference_file) when the recipe
        rescores near-ties with it (engine/cascade.py; ``policy.cascade``, the default) or
        ``keep_reference`` asks for it (the daemon's fidelity watch). An import this box
        cannot hold is refused before it starts (check_room).
        """
        from edgerank.convert import backoff, int8, onnx_export
        from edgerank.hardware.probe import int8_kernel_here
        from edgerank.quality import sets

        source_dir = checked_source(source_dir)
        int8.require_quantize()
        fp32_found = _find_fp32_onnx(source_dir)
        check_room(name, _weights_mib(source_dir, fp32_found), export=fp32_found is None)
        cal_groups, cal_info = (
            sets.from_file(calibration) if calibration else sets.shipped(sets.CALIBRATION)
        )
        probe_info = sets.shipped(sets.PROBE)[1]
        with self.staged(name, "onnx") as staging:
            fp32 = fp32_found
            if fp32 is None:
                progress("exporting to ONNX (fp32) with torch.onnx")
                fp32 = onnx_export.export_onnx(source_dir, staging / "fp32")
            for f in TOKENIZER_FILES:
                shutil.copy2(source_dir / f, staging / f)
            length = _max_length(source_dir, spec)
            progress("quantizing to INT8 and measuring it against FP32 on the probe")
            found = backoff.quantize_accurate(
                fp32, staging / "work", staging / "tokenizer.json",
                calibration=cal_groups, progress=progress, policy=policy,
                max_length=min(length, backoff.PROBE_MAX_LENGTH), window=length,
            )  # fmt: skip
            fidelity = {
                "reference": "onnx fp32 (the same graph, fused)",
                "int8_kernel": int8_kernel_here(),
                "probe": probe_info,
                **found.fidelity(),
                "floor": found.floor,
                "meets_floor": found.meets_floor,
            }
            if not found.meets_floor:
                figures = floor_line(fidelity)
                if not (policy and policy.allow_below_floor):
                    raise BelowFidelityFloor(
                        f"{name}: the best INT8 found ranks below the fidelity floor "
                        f"({figures}); not installed (--allow-below-floor installs it anyway)"
                    )
                fidelity["below_floor_allowed"] = True
                progress(f"installing BELOW the fidelity floor ({figures}), as asked")
            files = _place(found, staging, keep_reference)
            recipe = {
                **found.recipe_json(),
                "calibration": cal_info,
                "install_seconds": found.seconds,
                "session": int8.SESSION,
            }
            if serving.FP32_FILE in files and found.precision == "int8":
                recipe["reference_file"] = serving.FP32_FILE
            shutil.rmtree(staging / "work", ignore_errors=True)
            shutil.rmtree(staging / "fp32", ignore_errors=True)
            Manifest(
                name=name,
                backend="onnx",
                precision=found.precision,
                model_file=serving.INT8_FILE if found.precision == "int8" else serving.FP32_FILE,
                max_length=length,
                normalise="sigmoid",
                files={f: {} for f in files},
                source=source or {"origin": f"local:{source_dir.resolve()}"},
                recipe=recipe,
                fidelity=fidelity,
                serving=found.plan.to_dict() if found.plan else {},
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
            if "fp32" in spec.memory_mib:  # and before downloading what cannot be held
                check_room(spec.name, spec.memory_mib["fp32"], export=not fp32_route)
        with tempfile.TemporaryDirectory(dir=self._ensure_models_dir(), prefix=".pull-") as tmp:
            tmp_dir = Path(tmp)
            fp32 = getattr(src, "fp32_file", None)
            if prebuilt_int8:
                from edgerank.hardware.probe import int8_kernel_here

                ready = src.int8_file_for(int8_kernel_here())  # the file made for this CPU
                if not ready:
                    raise InvalidInput(f"{spec.name}: its hub repo publishes no INT8 file")
                progress(f"downloading {src.repo}/{ready}")
                facts = hub.fetch(src.repo, [ready, *TOKENIZER_FILES], tmp_dir, revision)
                ref = None
                if fp32:  # measure the publisher's file against its FP32 original
                    progress(f"downloading {src.repo}/{fp32} to measure it against")
                    hub.fetch(src.repo, [fp32], tmp_dir / "ref", revision)
                    ref = tmp_dir / "ref" / fp32
                return self._install_prebuilt(spec, tmp_dir, ready, facts, ref)
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


def _place(found: Decision, staging: Path, keep_reference: bool) -> list[str]:
    """Move the decision's files into the entry: the INT8 file when it serves or is kept
    for another request shape, the FP32 graph when it serves, when the cascade rescores
    with it, when the INT8 file is kept beside it, or when ``keep_reference`` asks for it
    (the fidelity watch)."""
    files = []
    if found.keeps_int8:
        assert found.point is not None
        files += _mapped(found.point.file, staging / serving.INT8_FILE)
    if found.precision == "fp32" or found.cascaded or keep_reference:
        files += _mapped(found.reference, staging / serving.FP32_FILE)
    return [*files, *TOKENIZER_FILES]


def _mapped(src: Path, dst: Path) -> list[str]:
    """``src`` written to ``dst`` with its weights in ``dst``.data: onnxruntime maps that
    file rather than reading it, so weights it does not repack (the embedding tables, which
    an INT8 file keeps in FP32) sit in clean, shared page-cache pages the kernel can take
    back, and only the rows requests touch are resident; the cascade's FP32 reference,
    opened unpacked (backends/registry.open_reference), costs little memory beyond what its
    few rescored passages touch (bench/memory.py)."""
    import onnx

    model = onnx.load(str(src))
    data = weights_file(dst.name)
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)  # fmt: skip
    (dst.parent / data).chmod(dst.stat().st_mode & 0o777)  # onnx writes it owner-only
    return [dst.name, data]


def check_room(name: str, fp32_mib: float, export: bool) -> None:
    """Refuse, in one line and before anything starts, an import this box cannot hold
    (planning/memory.import_need_mib against the memory left to this process), naming the
    route that can: quantize on a bigger box, carry the archive here."""
    from edgerank.hardware.probe import probe
    from edgerank.planning.memory import import_need_mib

    need, budget = import_need_mib(fp32_mib, export), probe().memory_budget_mib
    if need > budget:
        raise TooLittleMemory(
            f"{name}: quantizing it needs ~{need} MiB and this box has {budget} MiB free; "
            f"run `edgerank import`/`pull` and `edgerank export {name} {name}.tar` on a bigger "
            f"box, then `edgerank import {name}.tar` here (checksums checked, no quantizing)"
        )


def _weights_mib(source_dir: Path, fp32: Path | None) -> float:
    """The FP32 graph's size (its external data too), else the checkpoint's weights as FP32."""
    if fp32 is not None:
        files = [fp32, *fp32.parent.glob(fp32.name + "*.data"), *fp32.parent.glob("*.onnx_data")]
        widen = 1
    else:
        files = [p for pat in ("*.safetensors", "pytorch_model*.bin") for p in source_dir.glob(pat)]
        cfg = source_dir / "config.json"
        widen = 2 if cfg.is_file() and stored_precision(read_config(source_dir)) != "fp32" else 1
    return widen * sum(p.stat().st_size for p in files if p.is_file()) / 2**20


def _find_fp32_onnx(d: Path) -> Path | None:
    for cand in (d / "model.onnx", d / "onnx" / "model.onnx"):
        if cand.is_file():
            return cand
    return None


def _max_length(source_dir: Path, spec: ModelSpec | None) -> int:
    """The catalog's figure, else the checkpoint's own."""
    return spec.max_length if spec is not None else max_length(read_config(source_dir))
