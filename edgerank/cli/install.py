"""`edgerank pull`, `edgerank import` and `edgerank export`: models into (and out of) the
store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edgerank.cli.common import friendly
from edgerank.cli.progress import Status, interactive
from edgerank.errors import InvalidInput


def _int8_options(fn):
    """The accuracy-aware INT8 install's options, shared by pull and import."""
    fn = click.option(
        "--request-shape", metavar="NxMIN-MAX",
        help="The requests the model will serve: N passages of MIN-MAX tokens; INT8 is "
        "installed where it pays at that size [default: 32x128-256, a RAG request].",
    )(fn)  # fmt: skip
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


def _policy(allow_below_floor: bool, portable_int8: bool, no_cascade: bool, request_shape):
    from edgerank.convert.backoff import Policy
    from edgerank.models.serving import RequestShape

    return Policy(
        allow_below_floor=allow_below_floor, portable=portable_int8 or None,
        cascade=not no_cascade,
        request_shape=RequestShape.parse(request_shape) if request_shape else None,
    )  # fmt: skip


def _json_option(fn):
    return click.option(
        "--json", "as_json", is_flag=True,
        help="End with the installed entry as JSON (what, why, fidelity, speed, sizes) "
        "instead of the summary; no progress drawing.",
    )(fn)  # fmt: skip


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
@_json_option
@friendly
def pull(
    name, prebuilt_int8, revision, calibration, allow_below_floor, keep_fp32, no_cascade,
    portable_int8, request_shape, backend, as_json,
):  # fmt: skip
    """Download a catalog model and install it (INT8 ONNX, or GGUF)."""
    from edgerank.catalog.load import load_catalog
    from edgerank.install import needs
    from edgerank.install.store import ModelStore

    spec = load_catalog().get(name)
    needs.check_pull(spec, backend, prebuilt_int8)
    draw = interactive(as_json)
    if not draw:  # huggingface_hub's bars draw on pipes too
        _quiet_hub_bars()
    with Status("pull", enabled=draw, hold=lambda m: m.startswith("downloading")) as status:
        path = ModelStore().pull(
            spec,
            prebuilt_int8=prebuilt_int8,
            revision=revision,
            backend=backend,
            progress=status,
            calibration=calibration,
            policy=_policy(allow_below_floor, portable_int8, no_cascade, request_shape),
            keep_reference=keep_fp32,
        )
    _installed(path, "from the hub", status, as_json)


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
@click.option(
    "--kind", type=click.Choice(["llm"]),
    help="A bare FILE.gguf: what it is (an LLM scored by its yes/no answer logits; the only "
    "kind a GGUF without its tokenizer.json can be).",
)  # fmt: skip
@click.option(
    "--rules", metavar="CATALOG_NAME",
    help="A bare FILE.gguf: score it with this catalog LLM reranker's prompt and rule (found "
    "from the GGUF's name when it is one; else a generic yes/no prompt).",
)  # fmt: skip
@_json_option
@friendly
def import_(
    path, name, calibration, allow_below_floor, keep_fp32, no_cascade, portable_int8,
    request_shape, backend, kind, rules, as_json,
):  # fmt: skip
    """Install a local Hugging Face checkpoint (or FP32 ONNX dir) as INT8 ONNX, offline;
    with --backend gguf, as GGUF files (or install the *.gguf files PATH holds); with
    --backend torch, as the checkpoint itself (scored as its catalog entry, if NAME is one).
    PATH may also be an archive from `edgerank export`: installed unchanged, checksums checked,
    or one FILE.gguf of an LLM, downloaded alone: tokenized with its own vocabulary."""
    from edgerank.catalog.load import load_catalog
    from edgerank.install.store import ModelStore

    store = ModelStore()
    status = Status("import", enabled=interactive(as_json))
    if Path(path).is_file() and _is_gguf(Path(path)):
        if not name:
            raise InvalidInput("importing a GGUF file needs --name NAME")
        with status:
            target, how = store.import_gguf_file(name, Path(path), kind=kind, rules=rules)
        _installed(target, how, status, as_json)
        return
    if kind or rules:
        raise InvalidInput("--kind and --rules apply to a bare FILE.gguf only")
    if Path(path).is_file():
        from edgerank.install import archive

        with status:
            target = archive.import_archive(store, Path(path), name)
        _installed(target, f"from {path}, checksums verified", status, as_json)
        return
    if not Path(path).is_dir():
        raise InvalidInput(f"{path}: no such file or directory")
    if not name:
        raise InvalidInput("importing a directory needs --name NAME")
    if backend != "onnx" and (
        calibration or allow_below_floor or keep_fp32 or no_cascade or portable_int8
        or request_shape
    ):  # fmt: skip
        raise InvalidInput(
            "--calibration, --allow-below-floor, --keep-fp32, --no-cascade, --portable-int8 "
            "and --request-shape apply to --backend onnx only"
        )
    from edgerank.install import needs

    needs.check_import(Path(path), backend)
    with status:
        if backend == "gguf":
            target = store.import_gguf(name, Path(path), progress=status)
        elif backend == "torch":
            catalog = load_catalog()
            spec = catalog.get(name) if name in catalog.names() else None
            target = store.import_torch(name, Path(path), spec=spec)
        else:
            target = store.import_onnx(
                name, Path(path), progress=status, calibration=calibration,
                policy=_policy(allow_below_floor, portable_int8, no_cascade, request_shape),
                keep_reference=keep_fp32,
            )  # fmt: skip
    _installed(target, f"from {path}", status, as_json)


def _installed(target: Path, how: str, status: Status, as_json: bool) -> None:
    """The install's last word: a short summary, or JSON, read from the manifest it wrote."""
    from edgerank.catalog.load import load_catalog
    from edgerank.cli.entries import describe
    from edgerank.cli.summary import peak_rss_bytes, summary
    from edgerank.hardware.probe import int8_kernel_here
    from edgerank.models.manifest import Manifest

    seconds = time.perf_counter() - status.start
    manifest = Manifest.read(target)
    name = target.parent.name  # the name it is installed under
    entry = describe(manifest, target, name in load_catalog(), int8_kernel_here(), name=name)
    peak = peak_rss_bytes()
    if as_json:
        out = {**entry.to_dict(), "seconds": round(seconds, 1), "peak_rss_bytes": peak}
        click.echo(json.dumps(out, indent=2))
        return
    for line in summary(entry, how, seconds, peak):
        click.echo(line)


def _quiet_hub_bars() -> None:
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub loads
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # pragma: no cover - a base dependency
        return
    disable_progress_bars()


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


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
