"""`edgerank models`: the catalog and what of it is installed."""

from __future__ import annotations

import json

import click

from edgerank.cli.common import friendly


@click.command()
@click.option("--json", "as_json", is_flag=True)
@friendly
def models(as_json):
    """The catalog: what edgerank can run, and what is installed."""
    from edgerank.catalog.load import load_catalog
    from edgerank.store.layout import StoreLayout

    catalog = load_catalog()
    store = StoreLayout()
    installed = store.installed()
    notes = fidelity_notes(store, installed)
    rows = []
    for spec in catalog:
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "languages": list(spec.languages),
                "params_m": spec.params_m,
                "hidden": spec.hidden,
                "memory_mib": spec.memory_mib,
                "backends": list(spec.backends),
                "quality": spec.quality,
                "licence": spec.licence,
                "non_commercial": spec.non_commercial,
                "installed": installed.get(
                    spec.name, ["embedded"] if spec.kind == "bi-encoder" else []
                ),
                "fidelity_note": notes.get(spec.name),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "kind", "lang", "int8/q8 MiB", "quality", "licence", "installed")
    click.echo("{:<36} {:<14} {:<10} {:>11}  {:<18} {:<14} {}".format(*header))
    for r in rows:
        mem = (
            r["memory_mib"].get("int8")
            or r["memory_mib"].get("q8_0")
            or r["memory_mib"].get("fp16", "")
        )
        qual = " ".join(f"{k}={v:g}" for k, v in r["quality"].items())
        lic = r["licence"] + (" (NC)" if r["non_commercial"] else "")
        click.echo(
            f"{r['name']:<36} {r['kind']:<14} {','.join(r['languages']):<10} {mem!s:>11}  "
            f"{qual:<18} {lic:<14} {','.join(r['installed']) or '-'}"
        )
    for line in notes.values():  # custom imports too, not only catalog models
        click.echo(f"warning: {line}")


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
