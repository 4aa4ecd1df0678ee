"""models.toml -> ModelSpec records (spec.py), validated once at load.

Validation happens here and only here, so that every later consumer (choose, store,
backends, the CLI) can trust a ModelSpec without re-checking it. Typos in the TOML fail
loudly: an unknown key is an error, not a silently ignored line.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from edgerank.catalog import quants
from edgerank.catalog.fields import Fields, no_unknown
from edgerank.catalog.spec import (
    BACKENDS,
    GGUF_QUANTS,
    KINDS,
    LLM_KINDS,
    PRECISIONS,
    QUALITY_GROUPS,
    SCHEMA_VERSION,
    SCORE_RULES,
    Catalog,
    GgufSource,
    ModelSpec,
    OnnxSource,
)
from edgerank.errors import CatalogError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the tomli backport has the same API
    import tomli as tomllib


ENV_CATALOG = "EDGERANK_CATALOG"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_LANG_RE = re.compile(r"^[a-z]{2,3}$")
_NC_RE = re.compile(r"\bCC-BY(?:-[A-Z]+)*-NC\b")


# --------------------------------------------------------------------------- loading


def default_catalog_path() -> Path:
    """$EDGERANK_CATALOG, else models.toml shipped in the package, else the repo's top level."""
    env = os.environ.get(ENV_CATALOG)
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "models.toml", package.parent / "models.toml"):
        if candidate.is_file():
            return candidate
    return package / "models.toml"


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Read and validate a catalog; raise CatalogError with one line on any problem."""
    p = Path(path) if path is not None else default_catalog_path()
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise CatalogError(f"model catalog not found: {p} (set ${ENV_CATALOG})") from None
    except OSError as exc:
        raise CatalogError(f"cannot read model catalog {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{p.name}: invalid TOML: {exc}") from None
    return parse_catalog(data, path=p)


def parse_catalog(data: dict[str, Any], *, path: Path | None = None) -> Catalog:
    """Validate an already-parsed TOML document (separate from I/O for tests and tools)."""
    where = path.name if path is not None else "catalog"
    no_unknown(data, {"schema", "quality_scale", "model"}, f"{where}: top level")
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise CatalogError(f"{where}: schema must be {SCHEMA_VERSION}, got {schema!r}")
    scale = data.get("quality_scale", {})
    if not isinstance(scale, dict) or not all(isinstance(v, str) for v in scale.values()):
        raise CatalogError(f"{where}: quality_scale must be a table of strings")
    no_unknown(scale, QUALITY_GROUPS, f"{where}: quality_scale")
    raw_models = data.get("model")
    if not isinstance(raw_models, list) or not raw_models:
        raise CatalogError(f"{where}: no [[model]] entries")
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_models):
        spec = _parse_model(raw, f"{where}: model #{i + 1}")
        if spec.name in seen:
            raise CatalogError(f"{where}: model {spec.name!r}: duplicate name")
        seen.add(spec.name)
        specs.append(spec)
    return Catalog(specs, path=path, quality_scale=scale)


# ------------------------------------------------------------------------ validation

_MODEL_KEYS = {
    "name",
    "hub_id",
    "arch",
    "kind",
    "params_m",
    "layers",
    "hidden",
    "max_length",
    "languages",
    "licence",
    "non_commercial",
    "remote_code",
    "score_rule",
    "prompt",
    "default_instruction",
    "backends",
    "onnx",
    "gguf",
    "memory_mib",
    "quality",
    "quality_source",
    "notes",
    "kv_cache_kib_per_token",
    "cutoff_layer",
}


def _parse_model(raw: Any, where: str) -> ModelSpec:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must be a table")
    name = raw.get("name")
    if isinstance(name, str) and name:
        where = f"{where.split(':')[0]}: model {name!r}"
    f = Fields(raw, where)
    no_unknown(raw, _MODEL_KEYS, where)

    name = f.str_("name")
    assert name is not None
    if not _NAME_RE.match(name):
        raise f.fail("name", "use lower-case letters, digits, '.', '_' or '-'")
    hub_id = f.str_("hub_id")
    assert hub_id is not None
    if not _HUB_ID_RE.match(hub_id):
        raise f.fail("hub_id", f"must look like org/name, got {hub_id!r}")

    kind = f.str_("kind")
    if kind not in KINDS:
        raise f.fail("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")

    languages = f.str_list("languages")
    for lang in languages:
        if lang != "multi" and not _LANG_RE.match(lang):
            raise f.fail("languages", f"{lang!r} is not a lower-case ISO code or 'multi'")

    licence = f.str_("licence")
    assert licence is not None
    non_commercial = f.bool_("non_commercial")
    if _NC_RE.search(licence.upper()) and not non_commercial:
        raise f.fail("non_commercial", f"licence {licence} is non-commercial: set it to true")
    remote_code = f.bool_("remote_code")

    score_rule = f.str_("score_rule")
    assert score_rule is not None
    if score_rule not in SCORE_RULES[kind]:
        allowed = ", ".join(sorted(SCORE_RULES[kind]))
        raise f.fail("score_rule", f"{score_rule!r} is not valid for {kind} (use {allowed})")

    prompt = f.str_("prompt", required=False)
    instruction = f.str_("default_instruction", required=False)
    _check_prompt(f, kind, prompt, instruction)

    backends = f.str_list("backends")
    for b in backends:
        if b not in BACKENDS:
            raise f.fail("backends", f"unknown backend {b!r} (known: {', '.join(BACKENDS)})")
    onnx = _parse_onnx(f)
    gguf = _parse_gguf(f)
    memory = _parse_memory(f)
    _check_backends(f, kind, backends, onnx, gguf, memory)

    quality = _parse_quality(f)
    cutoff = f.int_("cutoff_layer", required=False)
    if kind == "llm-layerwise" and cutoff is None:
        raise f.fail("cutoff_layer", "missing (llm-layerwise needs the layer to read)")

    layers = f.int_("layers", required=False)
    if cutoff is not None and layers is not None and cutoff > layers:
        raise f.fail("cutoff_layer", f"{cutoff} is beyond the model's {layers} layers")

    return ModelSpec(
        name=name,
        hub_id=hub_id,
        arch=f.str_("arch") or "",
        kind=kind,  # type: ignore[arg-type]
        params_m=f.num("params_m") or 0.0,
        layers=layers,
        hidden=f.int_("hidden", required=False),
        max_length=f.int_("max_length") or 0,
        languages=languages,
        licence=licence,
        non_commercial=non_commercial,
        remote_code=remote_code,
        score_rule=score_rule,
        prompt=prompt,
        default_instruction=instruction,
        backends=backends,  # type: ignore[arg-type]
        onnx=onnx,
        gguf=gguf,
        memory_mib=memory,
        quality=quality,
        quality_source=f.str_("quality_source") or "",
        notes=_notes(f),
        kv_cache_kib_per_token=f.num("kv_cache_kib_per_token", required=False),
        cutoff_layer=cutoff,
    )


def _notes(f: Fields) -> str:
    notes = f.raw.get("notes", "")
    if not isinstance(notes, str):
        raise f.fail("notes", "must be a string")
    return notes


def _check_prompt(f: Fields, kind: str, prompt: str | None, instruction: str | None) -> None:
    if kind not in LLM_KINDS:
        if prompt is not None:
            raise f.fail("prompt", f"only LLM rerankers take a prompt, not {kind}")
        return
    if prompt is None:
        raise f.fail("prompt", f"missing ({kind} needs a template with {{query}} and {{passage}})")
    for slot in ("{query}", "{passage}"):
        if slot not in prompt:
            raise f.fail("prompt", f"has no {slot} slot")
    if "{instruction}" in prompt and instruction is None:
        raise f.fail("default_instruction", "missing (the prompt has an {instruction} slot)")
    try:
        prompt.format(query="", passage="", instruction="")
    except (KeyError, IndexError, ValueError) as exc:
        raise f.fail("prompt", f"bad placeholder {exc} (literal braces must be doubled)") from None


def _parse_onnx(f: Fields) -> OnnxSource | None:
    t = f.table("onnx", required=False)
    if t is None:
        return None
    no_unknown(t, {"repo", "int8_file", "fp32_file", "int8_isa"}, f"{f.where}: field 'onnx'")
    sub = Fields(t, f"{f.where}: onnx")
    repo = sub.str_("repo")
    assert repo is not None
    if not _HUB_ID_RE.match(repo):
        raise sub.fail("repo", f"must look like org/name, got {repo!r}")
    by_kernel = sub.table("int8_isa", required=False) or {}
    for kernel, fname in by_kernel.items():
        if not isinstance(fname, str) or not fname.endswith(".onnx"):
            raise sub.fail(f"int8_isa.{kernel}", f"must be an .onnx file name, got {fname!r}")
    int8_file = sub.str_("int8_file", required=False)
    if by_kernel and int8_file is None:
        raise sub.fail("int8_isa", "needs int8_file (the file for every other kernel)")
    return OnnxSource(
        repo=repo,
        int8_file=int8_file,
        fp32_file=sub.str_("fp32_file", required=False),
        int8_isa=dict(by_kernel),
    )


def _parse_gguf(f: Fields) -> GgufSource | None:
    t = f.table("gguf", required=False)
    if t is None:
        return None
    no_unknown(t, {"repo", "files"}, f"{f.where}: field 'gguf'")
    sub = Fields(t, f"{f.where}: gguf")
    repo = sub.str_("repo")
    assert repo is not None
    if not _HUB_ID_RE.match(repo):
        raise sub.fail("repo", f"must look like org/name, got {repo!r}")
    files = sub.table("files", required=False) or {}
    no_unknown(files, GGUF_QUANTS, f"{f.where}: gguf.files")
    for quant, fname in files.items():
        if not isinstance(fname, str) or not fname.endswith(".gguf"):
            raise sub.fail(f"files.{quant}", f"must be a .gguf file name, got {fname!r}")
    return GgufSource(repo=repo, files=dict(files))


def _parse_memory(f: Fields) -> dict[str, int]:
    t = f.table("memory_mib", required=True)
    assert t is not None
    if not t:
        raise f.fail("memory_mib", "needs at least one precision")
    no_unknown(t, PRECISIONS, f"{f.where}: field 'memory_mib'")
    for prec, mib in t.items():
        if isinstance(mib, bool) or not isinstance(mib, int) or mib <= 0:
            raise f.fail(f"memory_mib.{prec}", f"must be a positive integer (MiB), got {mib!r}")
    return dict(t)


def _parse_quality(f: Fields) -> dict[str, float]:
    t = f.table("quality", required=False) or {}
    no_unknown(t, QUALITY_GROUPS, f"{f.where}: field 'quality'")
    out: dict[str, float] = {}
    for group, value in t.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise f.fail(f"quality.{group}", f"must be a number in 0..100, got {value!r}")
        out[group] = float(value)
    return out


def _check_backends(
    f: Fields,
    kind: str,
    backends: tuple[str, ...],
    onnx: OnnxSource | None,
    gguf: GgufSource | None,
    memory: dict[str, int],
) -> None:
    if kind == "bi-encoder":
        if backends != ("biencoder",):
            raise f.fail("backends", "a bi-encoder is served by ['biencoder'] only")
    elif "biencoder" in backends:
        raise f.fail("backends", f"'biencoder' serves bi-encoders only, not {kind}")
    if "onnx" in backends:
        if kind != "cross-encoder":
            raise f.fail("backends", f"the onnx backend serves cross-encoders only, not {kind}")
        if onnx is None:
            raise f.fail("onnx", "missing (backends lists onnx)")
        if "int8" not in memory:
            raise f.fail("memory_mib", "needs int8 (backends lists onnx)")
    elif onnx is not None:
        raise f.fail("onnx", "given but backends does not list onnx")
    if "gguf" in backends:
        if kind == "llm-layerwise":
            raise f.fail("backends", "llama.cpp has no per-layer score heads: no gguf")
        if gguf is None:
            raise f.fail("gguf", "missing (backends lists gguf)")
        if not set(quants.SERVED) & set(memory):
            served = " or ".join(quants.SERVED)
            raise f.fail("memory_mib", f"needs {served} (backends lists gguf)")
    elif gguf is not None:
        raise f.fail("gguf", "given but backends does not list gguf")
    if "torch" in backends and not {"fp16", "fp32"} & set(memory):
        raise f.fail("memory_mib", "needs fp16 or fp32 (backends lists torch)")
