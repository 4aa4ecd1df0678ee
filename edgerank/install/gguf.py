"""Installing gguf entries: a checkpoint converted by llama.cpp's converter (BERT fixes included)
and quantized, ready GGUF files checked for faithful scoring, or the catalog's published files.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from edgerank.catalog import quants as gguf_quants
from edgerank.catalog.spec import Catalog, ModelSpec
from edgerank.errors import BackendUnavailable, InvalidInput, ModelNotFound
from edgerank.install import hub
from edgerank.models.checkpoint import Checkpoint
from edgerank.models.gguf_file import read_header
from edgerank.models.gguf_model import (
    LAYERWISE_ERROR,
    TOKENIZER_GGUF,
    GgufModel,
    check_servable,
    file_precision,
    refuse_layerwise,
)
from edgerank.models.llm_format import LlmFormat
from edgerank.models.manifest import Manifest
from edgerank.store.layout import (
    GGUF_TOKENIZER_FILES,
    TOKENIZER_FILES,
    StoreLayout,
    checked_source,
    link_or_copy,
    publish,
)


class GgufInstalls(StoreLayout):
    def import_gguf(
        self,
        name: str,
        source_dir: Path,
        *,
        quants: tuple[str, ...] = gguf_quants.MADE,
        spec: ModelSpec | None = None,
        source: dict | None = None,
        progress: Callable[[str], None] = lambda msg: None,
        **convert_options,
    ) -> Path:
        """Install a local directory as a gguf entry.

        A Hugging Face checkpoint is converted with llama.cpp's converter (convert/gguf.py,
        BERT fixes included) and quantized; a directory that already holds *.gguf files and
        the checkpoint's tokenizer.json + config.json installs those files, after checking
        that llama.cpp would score them faithfully.
        """

        source_dir = checked_source(source_dir)
        if spec is not None:
            refuse_layerwise(spec)
        ready = sorted(source_dir.glob("*.gguf"))
        origin = source or {"origin": f"local:{source_dir.resolve()}"}
        if ready:
            files = {gguf_quant(p): p.name for p in ready}
            if len(files) != len(ready):
                raise InvalidInput(f"{source_dir}: several GGUF files of the same precision")
            return self._install_gguf(name, source_dir, files, spec, origin, copy=True)
        from edgerank.convert import gguf as convert_gguf

        staging = self._staging(name)
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

    def import_gguf_file(
        self,
        name: str,
        gguf: Path,
        *,
        kind: str | None = None,
        rules: str | None = None,
        catalog: Catalog | None = None,
    ) -> tuple[Path, str]:
        """Install one GGUF LLM downloaded alone (no tokenizer.json beside it): its own
        vocabulary tokenizes, and the prompt, score rule and answer tokens are chosen here
        (convert/gguf_prompt.py) and recorded. Returns the entry and a line saying what
        was chosen."""
        from edgerank.convert import gguf_prompt

        gguf = Path(gguf)
        if not gguf.is_file():
            raise InvalidInput(f"{gguf}: no such file")
        header = read_header(gguf)
        if kind not in (None, "llm", "llm-yes-logit"):
            raise InvalidInput(
                f"--kind {kind}: a bare GGUF installs as an LLM reranker only; a "
                "cross-encoder needs its tokenizer.json and config.json: import the "
                "directory that holds them with the GGUF (`edgerank import DIR --backend gguf`)"
            )
        if catalog is None:
            from edgerank.catalog.load import load_catalog

            catalog = load_catalog()
        choice = gguf_prompt.choose(gguf, header, name, catalog, rules)
        quant = file_precision(header)
        model = replace(choice.model, files={quant: gguf.name})
        recipe = {
            "origin": "a bare GGUF file (tokenized with its own vocabulary)",
            "rules": choice.rules,
            "answer_ids": choice.answer_ids,
        }
        origin = {"origin": f"local:{gguf.resolve()}"}
        target = self._install_gguf(
            name, gguf.parent, model.files, None, origin, copy=True, recipe=recipe, model=model
        )
        return target, choice.describe()

    def pull_gguf(
        self,
        spec: ModelSpec,
        *,
        revision: str | None = None,
        progress: Callable[[str], None] = lambda msg: None,
    ) -> Path:
        """The GGUF files the catalog names (the served quants where published, else all), with
        the tokenizer from the model's own repository; without published files, the
        checkpoint converted here."""

        refuse_layerwise(spec)
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
            wanted = [q for q in gguf_quants.SERVED if q in src.files] or list(src.files)
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
        model: GgufModel | None = None,
    ) -> Path:
        """Check, measure and publish GGUF files + tokenizer as <name>/gguf. ``copy``: copy
        the files (a user's directory) rather than hard-link them (edgerank's own temp);
        ``model``: how the entry scores, when not read from the checkpoint beside them."""

        model = replace(model or _gguf_model(files_dir, spec), files=dict(files))
        for quant, rel in files.items():
            check_servable(read_header(files_dir / rel), model.kind, f"{name} ({quant})")
        staging = self._staging(name)
        try:
            extras = [f for f in GGUF_TOKENIZER_FILES if (files_dir / f).is_file()]
            if model.tokenizer == TOKENIZER_GGUF:
                extras = []  # whatever lies beside a bare GGUF is not part of it
            for rel in (*files.values(), *extras):
                link_or_copy(files_dir / rel, staging / rel, copy)
            default = next((q for q in gguf_quants.OPEN_ORDER if q in files), None)
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
            publish(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def gguf_quant(path: Path) -> str:
    """The precision of a GGUF file, from its header (general.file_type)."""

    return file_precision(read_header(path))


def _gguf_model(hf_dir: Path, spec: ModelSpec | None):
    """How a gguf entry scores: the catalog's word, else the checkpoint's config.json."""

    if spec is not None:
        refuse_layerwise(spec)
        fmt = LlmFormat.from_spec(spec) if spec.is_llm else None
        return GgufModel(spec.kind, spec.max_length, fmt)
    tm = Checkpoint.detect(hf_dir)
    if tm.kind == "llm-layerwise":
        raise BackendUnavailable(LAYERWISE_ERROR.format(name=hf_dir.name))
    return GgufModel(tm.kind, tm.max_length, tm.llm)


def _gguf_fidelity(model_dir: Path, model) -> dict:
    """Each quant against the most precise file of the entry, on the synthetic probe."""
    from edgerank.backends.gguf import open_gguf
    from edgerank.quality.fidelity import compare

    order = [q for q in gguf_quants.PRECISE_FIRST if q in model.files]
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
