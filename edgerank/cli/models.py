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
