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
    from edgerank.store.entries import ModelStore

    catalog = load_catalog()
    store = ModelStore()
    installed = store.installed()
    notes = fidelity_notes(store, installed)
    serving = serving_lines(store, installed)
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
                # the planner's weights for the ONNX INT8 candidate: the file and the FP32
                # reference the default install keeps beside it for the cascade
                "planned_onnx_mib": _planned(spec),
                "serving": serving.get(spec.name),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "kind", "lang", "weights MiB", "quality", "licence", "installed")
    click.echo("{:<36} {:<14} {:<10} {:>11}  {:<18} {:<14} {}".format(*header))
    for r in rows:
        planned = r["planned_onnx_mib"]
        mem = (
            (f"{planned[0]}+{planned[1]}" if planned and planned[1] else None)
            or r["memory_mib"].get("int8")
            or r["memory_mib"].get("q8_0")
            or r["memory_mib"].get("fp16", "")
        )
        qual = " ".join(f"{k}={v:g}" for k, v in r["quality"].items())
        lic = r["licence"] + (" (NC)" if r["non_commercial"] else "")
        click.echo(
            f"{r['name']:<36} {r['kind']:<14} {','.join(r['languages']):<10} {mem!s:>11}  "
            f"{qual:<18} {lic:<14} {','.join(r['installed']) or '-'}"
        )
    if any(r["planned_onnx_mib"] and r["planned_onnx_mib"][1] for r in rows):
        click.echo("(A+B: an INT8 ONNX entry holds its INT8 file A and the FP32 graph B that "
                   "rescores near-ties; --no-cascade drops B)")  # fmt: skip
    for name, line in serving.items():  # custom imports too, not only catalog models
        click.echo(f"{name}: {line}")
    for line in notes.values():
        click.echo(f"warning: {line}")


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
