"""The `edgerank` command line. Parsing and printing only; the work lives in the modules."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from edgerank.errors import EdgerankError, InvalidInput

#: exit codes: 1 = the request or the model is wrong, 2 = usage (click's own), 70 = a bug
EXIT_ERROR, EXIT_INTERNAL = 1, 70


def _fail(message: str, code: int) -> None:
    click.echo(f"edgerank: error: {message}", err=True)
    sys.exit(code)


def friendly(fn):
    """Domain errors become one line on stderr and exit 1; bugs one line and exit 70."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgerankError as exc:
            _fail(str(exc), EXIT_ERROR)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - last line of defence for the CLI
            if os.environ.get("EDGERANK_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            _fail(
                f"internal error: {type(exc).__name__}: {first} (EDGERANK_DEBUG=1 shows more)",
                EXIT_INTERNAL,
            )

    return wrapper


@click.group()
@click.version_option(package_name="edgerank")
def main() -> None:
    """Rerank passages for a query on CPU, edge boxes and small servers."""


# -- score ----------------------------------------------------------------------------------


def read_documents(docs: tuple[str, ...], docs_file: str | None) -> list[str]:
    """Positional docs, else --docs FILE ('-' = stdin), else piped stdin.

    A file is JSONL when every non-empty line parses as a JSON string or {"text": ...}
    object; otherwise one document per line.
    """
    if docs and docs_file:
        raise InvalidInput("give documents as arguments or with --docs, not both")
    if docs:
        return list(docs)
    if docs_file is None and sys.stdin is not None and not sys.stdin.isatty():
        docs_file = "-"
    if docs_file is None:
        raise InvalidInput("no documents: pass them after the query, with --docs FILE, or on stdin")
    try:
        if docs_file == "-":
            text = sys.stdin.read()
        else:
            text = Path(docs_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read documents from {docs_file}: {exc}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    return _parse_jsonl(lines) or lines


def _parse_jsonl(lines: list[str]) -> list[str] | None:
    out = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            return None
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            out.append(item["text"])
        elif isinstance(item, str):
            out.append(item)
        else:
            return None
    return out


@main.command()
@click.argument("query", required=False)
@click.argument("docs", nargs=-1)
@click.option("--docs", "docs_file", help="File of documents: one per line, or JSONL; - = stdin.")
@click.option("--model", "-m", help="Catalog name, store entry or model directory.")
@click.option("--backend", type=click.Choice(["onnx", "gguf", "torch", "biencoder"]))
@click.option("--top-n", type=int, default=None, help="Only the best N.")
@click.option("--raw-scores", is_flag=True, help="Order and print by the raw logit.")
@click.option("--truncation", type=click.Choice(["truncate", "chunk"]), default="truncate")
@click.option("--direction", type=click.Choice(["right", "left"]), default="right")
@click.option("--instruction", help="Task instruction for LLM rerankers.")
@click.option("--threads", type=int, default=None, help="Inference threads (default: probed).")
@click.option("--server", help="Score on a running daemon (host:port or unix:/path).")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option(
    "--allow-remote-code", is_flag=True, help="Run modelling code the checkpoint ships (torch)."
)
@friendly
def score(
    query, docs, docs_file, model, backend, top_n, raw_scores, truncation, direction,
    instruction, threads, server, as_json, allow_remote_code,
):  # fmt: skip
    """Score DOCS against QUERY and print them best first."""
    if not query or not query.strip():
        raise InvalidInput("no query: edgerank score QUERY DOC [DOC...]")
    documents = read_documents(docs, docs_file)
    if not documents:
        raise InvalidInput("no documents to score")
    if top_n is not None and top_n < 0:
        raise InvalidInput(f"--top-n must be >= 0, got {top_n}")
    from edgerank.backends.base import ScoreOptions

    options = ScoreOptions(truncation=truncation, direction=direction, instruction=instruction)
    if server:
        from edgerank import client

        result = client.rerank(server, query, documents, top_n=top_n, options=options, model=model)
        ranked, info_line = result.ranked, result.model
    else:
        ranked, info_line = _score_local(
            query, documents, options, model, backend, threads, top_n, allow_remote_code
        )
    _print_ranked(ranked, documents, info_line, raw_scores, as_json)


def _score_local(query, documents, options, model, backend, threads, top_n, allow_remote_code):
    from edgerank import loader
    from edgerank.engine.rank import rank, score_documents

    loaded = loader.load(
        model,
        backend=backend,
        threads=threads or _default_threads(),
        allow_remote_code=allow_remote_code,
    )
    if loaded.note:
        click.echo(f"edgerank: note: {loaded.note}", err=True)
    try:
        info = loaded.backend.info()
        scored = score_documents(
            loaded.backend, query, documents, options, token_budget=loaded.token_budget
        )
        ranked = rank(scored.raw, info.normalise, top_n)
    finally:
        loaded.backend.close()
    return ranked, f"{info.model} ({info.backend} {info.precision})"


def _default_threads() -> int:
    from edgerank.probe import probe, recommended_threads

    return recommended_threads(probe())


def _print_ranked(ranked, documents, model_line, raw_scores, as_json) -> None:
    if raw_scores:
        ranked = sorted(ranked, key=lambda r: (-r.raw, r.index))
    if as_json:
        out = {
            "model": model_line,
            "results": [
                {
                    "index": r.index,
                    "relevance_score": r.score,
                    "raw_score": r.raw,
                    "document": documents[r.index],
                }
                for r in ranked
            ],
        }
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    click.echo(f"# {model_line}; score = normalised 0..1, raw = model output")
    click.echo(f"{'rank':>4}  {'index':>5}  {'score':>7}  {'raw':>9}  document")
    for pos, r in enumerate(ranked, 1):
        text = documents[r.index].replace("\n", " ")
        text = text if len(text) <= 80 else text[:77] + "..."
        click.echo(f"{pos:>4}  {r.index:>5}  {r.score:>7.4f}  {r.raw:>9.4f}  {text}")


# -- probe ------------------------------------------------------------------------------------


@main.command("probe")
@click.option("--json", "as_json", is_flag=True)
@click.option("--explain", is_flag=True, help="Every candidate considered, and why not.")
@click.option("--lang", "languages", multiple=True, help="Languages wanted (ISO code; repeat).")
@click.option("--memory-mib", type=int, help="Memory ceiling for the model.")
@click.option("--prefer", type=click.Choice(["quality", "speed"]), default="quality")
@click.option("--allow-non-commercial", is_flag=True)
@click.option("--allow-remote-code", is_flag=True)
@click.option(
    "--calibrate",
    is_flag=True,
    help="Time every installed backend of the chosen model here (a few seconds each), "
    "measure its fidelity, and keep the figures for later choices.",
)
@click.option(
    "--seconds",
    default=4.0,
    show_default=True,
    help="With --calibrate: timing budget per thread count.",
)
@friendly
def probe_cmd(as_json, explain, languages, memory_mib, prefer, allow_non_commercial,
              allow_remote_code, calibrate, seconds):  # fmt: skip
    """What this machine has, and what edgerank would run on it and why."""
    from edgerank import calibrate as calibration
    from edgerank.backends import available_backends
    from edgerank.catalog import load_catalog
    from edgerank.choose import Wishes, choose
    from edgerank.choose import explain as explain_choice
    from edgerank.probe import probe
    from edgerank.store import ModelStore

    store = ModelStore()
    hw = probe(store_path=store.root)
    wishes = Wishes(
        languages=tuple(languages) or ("en",),
        memory_ceiling_mib=memory_mib,
        prefer=prefer,
        allow_non_commercial=allow_non_commercial,
        allow_remote_code=allow_remote_code,
    )
    catalog = load_catalog()

    def decide():
        return choose(
            catalog,
            hw,
            wishes,
            installed_backends=available_backends(),
            installed_models=store.installed(),
            calibration=calibration.lookup(store, hw),
        )

    choice = decide()
    if calibrate:
        calibration.calibrate(
            store, hw, choice.model.name, seconds=seconds, allow_remote_code=allow_remote_code,
            progress=lambda m: click.echo(f"edgerank: calibrate: {m}", err=True),
        )  # fmt: skip
        choice = decide()
    if as_json:
        out = {
            "hardware": hw.to_dict(),
            "choice": {
                "model": choice.model.name,
                "backend": choice.backend,
                "precision": choice.precision,
                "device": choice.device,
                "threads": choice.threads,
                "batch_token_budget": choice.batch_token_budget,
            },
            "calibration": [m.to_dict() for m in choice.measured],
        }
        if explain:
            out["reasons"] = [list(map(str, r)) for r in choice.reasons]
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(hw.summary())
    click.echo(
        f"would run: {choice.model.name} on {choice.backend} {choice.precision} "
        f"({choice.device}, {choice.threads} threads, batch budget {choice.batch_token_budget} "
        "tokens)"
    )
    if explain:
        click.echo(explain_choice(choice))
    elif choice.measured:
        click.echo(f"measured here ({calibration.FILE}):")
        for m in choice.measured:
            click.echo(f"  {m.summary()}")


# -- catalog, store ---------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True)
@friendly
def models(as_json):
    """The catalog: what edgerank can run, and what is installed."""
    from edgerank.catalog import load_catalog
    from edgerank.store import ModelStore

    catalog = load_catalog()
    installed = ModelStore().installed()
    rows = []
    for spec in catalog:
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "languages": list(spec.languages),
                "params_m": spec.params_m,
                "memory_mib": spec.memory_mib,
                "backends": list(spec.backends),
                "quality": spec.quality,
                "licence": spec.licence,
                "non_commercial": spec.non_commercial,
                "installed": installed.get(
                    spec.name, ["embedded"] if spec.kind == "bi-encoder" else []
                ),
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


@main.command()
@click.argument("name")
@click.option("--prebuilt-int8", is_flag=True, help="Take the hub's ready INT8 file as is.")
@click.option("--revision", help="Hub revision (branch, tag or commit).")
@click.option(
    "--backend",
    type=click.Choice(["onnx", "gguf"]),
    default="onnx",
    show_default=True,
    help="gguf: the catalog's GGUF files, else the checkpoint converted with llama.cpp.",
)
@friendly
def pull(name, prebuilt_int8, revision, backend):
    """Download a catalog model and install it (INT8 ONNX, or GGUF)."""
    from edgerank.catalog import load_catalog
    from edgerank.store import ModelStore

    spec = load_catalog().get(name)
    path = ModelStore().pull(
        spec,
        prebuilt_int8=prebuilt_int8,
        revision=revision,
        backend=backend,
        progress=lambda m: click.echo(f"edgerank: {m}", err=True),
    )
    click.echo(f"installed {name} in {path}")


@main.command("import")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--name", required=True, help="Name in the store.")
@click.option(
    "--backend",
    type=click.Choice(["onnx", "gguf", "torch"]),
    default="onnx",
    show_default=True,
    help="gguf: f16, q8_0 and q4_k_m GGUFs (llama.cpp's converter), or the *.gguf files "
    "already in PATH; torch: the checkpoint as it is (the cuda extra serves it).",
)
@friendly
def import_(path, name, backend):
    """Install a local Hugging Face checkpoint (or FP32 ONNX dir) as INT8 ONNX, offline;
    with --backend gguf, as GGUF files (or install the *.gguf files PATH holds); with
    --backend torch, as the checkpoint itself (scored as its catalog entry, if NAME is one)."""
    from edgerank.catalog import load_catalog
    from edgerank.store import ModelStore

    progress = lambda m: click.echo(f"edgerank: {m}", err=True)  # noqa: E731
    store = ModelStore()
    if backend == "gguf":
        target = store.import_gguf(name, Path(path), progress=progress)
    elif backend == "torch":
        catalog = load_catalog()
        spec = catalog.get(name) if name in catalog.names() else None
        target = store.import_torch(name, Path(path), spec=spec)
    else:
        target = store.import_onnx(name, Path(path), progress=progress)
    from edgerank.manifest import Manifest

    fid = Manifest.read(target).fidelity
    against = {"gguf": "the most precise quant", "torch": "itself"}.get(backend, "fp32")
    click.echo(f"installed {name} in {target}; fidelity vs {against}: {json.dumps(fid)}")


# -- serve ------------------------------------------------------------------------------------


def _serve_command():
    from edgerank.settings import click_options

    @main.command()
    @click_options
    @friendly
    def serve(**flags):
        """Run the reranking daemon (gRPC; settings: flags > EDGERANK_* > TOML file)."""
        from edgerank import daemon, settings

        sys.exit(daemon.run(settings.load(flags)))


_serve_command()


# -- bench ------------------------------------------------------------------------------------


@main.command()
@click.option("--model", "-m", help="Catalog name, store entry or model directory.")
@click.option(
    "--reference",
    type=click.Path(file_okay=False, exists=True),
    help="HF checkpoint of the same model: adds torch fp32 and bf16 baselines.",
)
@click.option("--threads", default="1,2", help="Thread counts to compare, e.g. 1,2.")
@click.option("--pairs", default=32, help="Pairs per batch.")
@click.option("--tokens", default=128, help="Tokens per pair.")
@click.option("--rounds", default=7, help="Interleaved timing rounds (medians reported).")
@click.option("--server", help="Load-test a running daemon instead (host:port or unix:/path).")
@click.option("--clients", default="1,8,64", help="With --server: concurrent clients to try.")
@click.option("--requests", "n_requests", default=64, help="With --server: requests per level.")
@click.option("--docs", "n_docs", default=16, help="With --server: documents per request.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def bench(model, reference, threads, pairs, tokens, rounds, server, clients, n_requests, n_docs,
          as_json):  # fmt: skip
    """Throughput, latency and bucketing gain of the backend (ratios to torch when given)."""
    from edgerank import bench as b
    from edgerank import loader

    if server:
        _bench_server(server, clients, n_requests, n_docs, as_json)
        return

    counts = [int(t) for t in threads.split(",") if t.strip()]
    refs = {}
    if reference:
        from edgerank.backends.torch import TorchBackend

        for precision in ("fp32", "bf16"):
            refs[f"torch_{precision}"] = lambda t, p=precision: TorchBackend(
                reference, precision=p, threads=t
            )
    rows = b.backend_report(
        lambda t: loader.load(model, threads=t).backend, refs, counts, pairs, tokens, rounds
    )
    one = loader.load(model, threads=max(counts)).backend
    bucket = b.bucketing_report(one, rounds=max(3, rounds // 2))
    one.close()
    if as_json:
        click.echo(json.dumps({"throughput": rows, "bucketing": bucket}, indent=2))
        return
    click.echo(f"# {pairs} pairs x {tokens} tokens, medians of {rounds} interleaved rounds")
    click.echo(b.format_table(rows))
    click.echo(f"\n# bucketing, {bucket['docs']} mixed-length documents")
    click.echo(b.format_table([bucket]))


def _bench_server(address, clients, n_requests, n_docs, as_json) -> None:
    import random

    from edgerank import bench as b
    from edgerank import client

    rng = random.Random(0)
    docs = b.mixed_length_passages(n_docs, seed=2)
    query = b.synthetic_text(8, rng)
    rows = []
    for c in (int(x) for x in clients.split(",") if x.strip()):
        r = client.bench(address, query, docs, concurrency=c, requests=max(n_requests, c))
        rows.append(
            {k: v for k, v in r.items() if k != "failures"}
            | {"failed": sum(r["failures"].values())}
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"# {address}: {n_docs} mixed-length documents per request, closed loop")
    click.echo(b.format_table(rows))


if __name__ == "__main__":  # pragma: no cover
    main()
