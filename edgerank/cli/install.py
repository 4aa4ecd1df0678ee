"""`edgerank pull`, `edgerank import` and `edgerank export`: models into (and out of) the
store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgerank.cli.common import friendly, progress
from edgerank.errors import InvalidInput


def _int8_options(fn):
    """The accuracy-aware INT8 install's options, shared by pull and import."""
    fn = click.option(
        "--portable-int8", is_flag=True,
        help="Build an INT8 file no CPU's int8 kernel can saturate, to copy to AVX2 boxes "
        "(always so when this CPU's kernel can saturate).",
    )(fn)  # fmt: skip
    fn = click.option(
        "--no-cascade", "no_cascade", is_flag=True,
        help="INT8 alone: no FP32 rescoring of the leader's near-ties (the FP32 graph then "
        "takes no memory beside it; the install must meet the floor without it).",
    )(fn)  # fmt: skip
    fn = click.option(
        "--keep-fp32", is_flag=True,
        help="Keep the FP32 graph beside the INT8 file (the daemon's fidelity_sample needs it).",
    )(fn)  # fmt: skip
    fn = click.option(
        "--allow-below-floor", is_flag=True,
        help="Install the best INT8 found even when it ranks below the fidelity floor.",
    )(fn)  # fmt: skip
    return click.option(
        "--calibration", type=click.Path(dir_okay=False, exists=True),
        help='Your own calibration text: JSONL, one {"query": ..., "documents": [...]} a line.',
    )(fn)  # fmt: skip


def _policy(allow_below_floor: bool, portable_int8: bool, no_cascade: bool):
    from edgerank.convert.backoff import Policy

    return Policy(
        allow_below_floor=allow_below_floor, portable=portable_int8 or None,
        cascade=not no_cascade,
    )  # fmt: skip


@click.command()
@click.argument("name")
@click.option("--prebuilt-int8", is_flag=True, help="Take the hub's ready INT8 file as is.")
@click.option("--revision", help="Hub revision (branch, tag or commit).")
@_int8_options
@click.option(
    "--backend",
    type=click.Choice(["onnx", "gguf"]),
    default="onnx",
    show_default=True,
    help="gguf: the catalog's GGUF files, else the checkpoint converted with llama.cpp.",
)
@friendly
def pull(
    name, prebuilt_int8, revision, calibration, allow_below_floor, keep_fp32, no_cascade,
    portable_int8, backend,
):  # fmt: skip
    """Download a catalog model and install it (INT8 ONNX, or GGUF)."""
    from edgerank.catalog.load import load_catalog
    from edgerank.install.store import ModelStore

    spec = load_catalog().get(name)
    path = ModelStore().pull(
        spec,
        prebuilt_int8=prebuilt_int8,
        revision=revision,
        backend=backend,
        progress=progress,
        calibration=calibration,
        policy=_policy(allow_below_floor, portable_int8, no_cascade),
        keep_reference=keep_fp32,
    )
    click.echo(f"installed {name} in {path}")


@click.command("import")
@click.argument("path", type=click.Path())
@click.option("--name", help="Name in the store (a directory needs one; an archive has its own).")
@_int8_options
@click.option(
    "--backend",
    type=click.Choice(["onnx", "gguf", "torch"]),
    default="onnx",
    show_default=True,
    help="gguf: f16, q8_0 and q4_k_m GGUFs (llama.cpp's converter), or the *.gguf files "
    "already in PATH; torch: the checkpoint as it is (the cuda extra serves it).",
)
@friendly
def import_(
    path, name, calibration, allow_below_floor, keep_fp32, no_cascade, portable_int8, backend
):
    """Install a local Hugging Face checkpoint (or FP32 ONNX dir) as INT8 ONNX, offline;
    with --backend gguf, as GGUF files (or install the *.gguf files PATH holds); with
    --backend torch, as the checkpoint itself (scored as its catalog entry, if NAME is one).
    PATH may also be an archive from `edgerank export`: installed unchanged, checksums checked."""
    from edgerank.catalog.load import load_catalog
    from edgerank.install.store import ModelStore

    store = ModelStore()
    if Path(path).is_file():
        from edgerank.install import archive

        target = archive.import_archive(store, Path(path), name)
        click.echo(
            f"installed {target.parent.name} ({target.name}) in {target}, checksums verified"
        )
        return
    if not Path(path).is_dir():
        raise InvalidInput(f"{path}: no such file or directory")
    if not name:
        raise InvalidInput("importing a directory needs --name NAME")
    if backend != "onnx" and (
        calibration or allow_below_floor or keep_fp32 or no_cascade or portable_int8
    ):
        raise InvalidInput(
            "--calibration, --allow-below-floor, --keep-fp32, --no-cascade and --portable-int8 "
            "apply to --backend onnx only"
        )
    if backend == "gguf":
        target = store.import_gguf(name, Path(path), progress=progress)
    elif backend == "torch":
        catalog = load_catalog()
        spec = catalog.get(name) if name in catalog.names() else None
        target = store.import_torch(name, Path(path), spec=spec)
    else:
        target = store.import_onnx(
            name, Path(path), progress=progress, calibration=calibration,
            policy=_policy(allow_below_floor, portable_int8, no_cascade),
            keep_reference=keep_fp32,
        )  # fmt: skip
    from edgerank.models.manifest import Manifest

    fid = Manifest.read(target).fidelity
    against = {"gguf": "the most precise quant", "torch": "itself"}.get(backend, "fp32")
    click.echo(f"installed {name} in {target}; fidelity vs {against}: {json.dumps(fid)}")


@click.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--backend",
    type=click.Choice(["onnx", "gguf", "torch"]),
    help="Which entry of NAME (needed only when several are installed).",
)
@friendly
def export_(name, file, backend):
    """Pack an installed model into one archive FILE (.tar, or .tar.gz) for `edgerank import`
    on another box: the files and the manifest with their checksums, unchanged."""
    from edgerank.install import archive
    from edgerank.install.store import ModelStore

    out = archive.export(ModelStore(), name, backend, Path(file))
    click.echo(f"wrote {out} ({out.stat().st_size / (1 << 20):.1f} MiB)")
