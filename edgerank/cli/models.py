"""`edgerank models`: the catalog, and every entry installed here (catalog or not) with what
it is: INT8 or FP32, cascade or not, its fidelity figures, its size."""

from __future__ import annotations

import json

import click

from edgerank.cli.common import friendly


@click.command()
@click.option("--json", "as_json", is_flag=True)
@friendly
def models(as_json):
    """The catalog: what edgerank can run; then what is installed here, and what it is."""
    from edgerank.backends import biencoder
    from edgerank.catalog.load import load_catalog
    from edgerank.cli import entries
    from edgerank.errors import EdgerankError
    from edgerank.hardware.probe import int8_kernel_here
    from edgerank.store.layout import StoreLayout

    catalog = load_catalog()
    store = StoreLayout()
    installed = store.installed()
    found = entries.installed(store, catalog, int8_kernel_here())
    try:
        encoder = biencoder.encoder_path()
    except EdgerankError:
        encoder = None
    here = [*found, entries.embedded(encoder)] if encoder else found
    by_name: dict[str, list[entries.Entry]] = {}
    for e in here:
        by_name.setdefault(e.name, []).append(e)
    rows = [_row(spec, installed, by_name) for spec in catalog]
    custom = [e for e in found if not e.catalog]
    if as_json:
        for name in dict.fromkeys(e.name for e in custom):
            rows.append({
                "name": name, "catalog": False, "kind": "custom import", "memory_mib": {},
                "installed": installed.get(name, []),
                "entries": [e.to_dict() for e in by_name[name]],
            })  # fmt: skip
        click.echo(json.dumps(rows, indent=2))
        return
    _table(rows)
    click.echo(f"\ninstalled in {store.root} (score and serve choose among these):")
    for e in here:
        for line in e.lines():
            click.echo(f"  {line}")
    if not found:
        click.echo("  no reranker: `edgerank probe --explain` suggests one for this box")


def _row(spec, installed, by_name) -> dict:
    embedded = spec.kind == "bi-encoder"
    return {
        "name": spec.name,
        "catalog": True,
        "kind": spec.kind,
        "languages": list(spec.languages),
        "params_m": spec.params_m,
        "hidden": spec.hidden,
        "memory_mib": spec.memory_mib,
        "backends": list(spec.backends),
        # the bi-encoder's sentinel 0.0 only sorts it last: it has no rerank figure
        "quality": {} if embedded else spec.quality,
        "licence": spec.licence,
        "non_commercial": spec.non_commercial,
        "installed": installed.get(spec.name, ["embedded"] if embedded else []),
        "entries": [e.to_dict() for e in by_name.get(spec.name, [])],
        "fidelity_note": next((e.warning for e in by_name.get(spec.name, []) if e.warning), None),
    }


def _table(rows: list[dict]) -> None:
    """The catalog as a table, each column as wide as its longest cell."""
    cells = [("name", "kind", "lang", "int8/q8 MiB", "quality", "licence", "installed")]
    for r in rows:
        mem = r["memory_mib"]
        cells.append((
            r["name"], r["kind"], ",".join(r["languages"]),
            str(mem.get("int8") or mem.get("q8_0") or mem.get("fp16", "")),
            " ".join(f"{k}={v:g}" for k, v in r["quality"].items()) or "-",
            r["licence"] + (" (NC)" if r["non_commercial"] else ""),
            ",".join(r["installed"]) or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        pairs = enumerate(zip(row, widths, strict=True))
        padded = [c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in pairs]
        click.echo("  ".join(padded).rstrip())


def _planned(spec) -> list[int] | None:
    """[INT8 file, FP32 reference] MiB the planner counts for an ONNX entry of ``spec``."""
    from edgerank.planning.memory import reference_mib, weights_mib

    if "onnx" not in spec.backends or "int8" not in spec.memory_mib:
        return None
    return [weights_mib(spec, "int8"), reference_mib(spec, "onnx", "int8")]


def serving_lines(store, installed: dict[str, list[str]]) -> dict[str, str]:
    """name -> what its ONNX entry serves and holds: the file, the verdict at the request
    shape it was installed for, and the MiB of weights it loads (the reference apart)."""
    from edgerank.errors import EdgerankError
    from edgerank.models.serving import served, weights_mib

    out = {}
    for name, backends in sorted(installed.items()):
        if "onnx" not in backends:
            continue
        try:
            manifest, verdict = served(store.manifest(name, "onnx"))
        except EdgerankError:
            continue
        model, ref = weights_mib(manifest)
        what = f"onnx {manifest.precision}" + (" + FP32 rescoring" if ref else "")
        line = f"{what}, weights {model:.0f} MiB"
        if ref:
            line += f" + FP32 reference {ref:.0f} MiB (mapped)"
        if verdict is not None:
            line += f"; {verdict.reason}"
        out[name] = line
    return out


def fidelity_notes(store, installed: dict[str, list[str]]) -> dict[str, str]:
    """name -> one line, for installed ONNX entries whose INT8 fidelity is not proved."""
    from edgerank.errors import EdgerankError
    from edgerank.hardware.probe import int8_kernel_here

    here = int8_kernel_here()
    out = {}
    for name, backends in sorted(installed.items()):
        if "onnx" not in backends:
            continue
        try:
            note = store.manifest(name, "onnx").fidelity_note(here)
        except EdgerankError:
            continue
        if note:
            out[name] = note
    return out
