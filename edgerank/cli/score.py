"""`edgerank score`: one-off scoring, here or on a running daemon (--server)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from edgerank.cli.common import EXIT_USAGE, fail, friendly
from edgerank.cli.progress import Bar, interactive, rate
from edgerank.errors import InvalidInput


def read_documents(docs: tuple[str, ...], docs_file: str | None) -> list[str]:
    """Positional docs, else --docs FILE ('-' = stdin), else piped stdin.

    A file is JSONL when every non-empty line parses as a JSON string or {"text": ...}
    object; otherwise one document per line.
    """
    if docs and docs_file:
        raise InvalidInput("give documents as arguments or with --docs, not both")
    if docs:
        return [_text(d, "document argument") for d in docs]
    if docs_file is None and sys.stdin is not None and not sys.stdin.isatty():
        docs_file = "-"
    if docs_file is None:
        raise InvalidInput("no documents: pass them after the query, with --docs FILE, or on stdin")
    where = "stdin" if docs_file == "-" else docs_file
    try:
        # bytes, decoded here: sys.stdin may be surrogateescape (UTF-8 mode, C locale)
        raw = sys.stdin.buffer.read() if docs_file == "-" else Path(docs_file).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read documents from {where}: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(
            f"documents from {where} are not UTF-8 text (byte {exc.start}: "
            f"{raw[exc.start : exc.start + 1]!r})",
            EXIT_USAGE,
        )
    lines = [line for line in text.splitlines() if line.strip()]
    return _parse_jsonl(lines) or lines


def _text(value: str, what: str) -> str:
    """An argument as valid Unicode: undecodable argv bytes arrive as lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogateescape")  # the bytes as they were in argv
        bad = next((i for i, c in enumerate(value) if "\udc80" <= c <= "\udcff"), 0)
        at = len(value[:bad].encode("utf-8", "surrogateescape"))
        fail(f"the {what} is not UTF-8 text (byte {at}: {raw[at : at + 1]!r})", EXIT_USAGE)
    return value


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


@click.command()
@click.argument("query", required=False)
@click.argument("docs", nargs=-1)
@click.option("--docs", "docs_file", help="File of documents: one per line, or JSONL; - = stdin.")
@click.option("--model", "-m", help="Catalog name, store entry or model directory.")
@click.option(
    "--backend",
    type=click.Choice(["onnx", "gguf", "torch", "biencoder"]),
    help="Runtime, when the model has several entries (default: what probe chooses).",
)
@click.option("--top-n", type=int, default=None, help="Only the best N.")
@click.option("--raw-scores", is_flag=True, help="Order and print by the raw logit.")
@click.option(
    "--truncation",
    type=click.Choice(["truncate", "chunk"]),
    default="truncate",
    show_default=True,
    help="A passage over the model's window: cut it, or score overlapping windows and keep "
    "the best.",
)
@click.option(
    "--direction",
    type=click.Choice(["right", "left"]),
    default="right",
    show_default=True,
    help="With truncate: which end of a long passage is cut off.",
)
@click.option("--instruction", help="Task instruction for LLM rerankers.")
@click.option("--threads", type=int, default=None, help="Inference threads (default: probed).")
@click.option(
    "--server",
    help="Score on running daemons' gRPC listeners: host:port (every address of the name), a "
    "comma list of host:port, or unix:/path; balanced round robin, failing over to healthy "
    "replicas.",
)
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
    query = _text(query, "query")
    documents = read_documents(docs, docs_file)
    if not documents:
        raise InvalidInput("no documents to score")
    if top_n is not None and top_n < 0:
        raise InvalidInput(f"--top-n must be >= 0, got {top_n}")
    from edgerank.backends.base import ScoreOptions

    options = ScoreOptions(truncation=truncation, direction=direction, instruction=instruction)
    if server:
        from edgerank import client

        check_grpc_address(server)
        start = time.perf_counter()
        result = client.rerank(server, query, documents, top_n=top_n, options=options, model=model)
        ranked, info_line = result.ranked, result.model
        tokens = result.metadata.get("tokens")
        seconds = time.perf_counter() - start
    else:
        ranked, info_line, tokens, seconds = _score_local(
            query, documents, options, model, backend, threads, top_n, allow_remote_code, as_json
        )
    _print_ranked(ranked, documents, info_line, raw_scores, as_json)
    pairs = len(documents)
    counted = f", {tokens:,} tokens" if tokens is not None else ""
    click.echo(
        f"edgerank: scored {pairs} document{'s' if pairs != 1 else ''}{counted} in "
        f"{seconds:.2f} s ({rate(pairs, seconds)} pairs/s)",
        err=True,
    )


def check_grpc_address(server: str) -> None:
    """--server names gRPC listeners; an HTTP URL would reach gRPC's resolver as a target
    name and fail with its noise."""
    if "://" in server and not server.startswith("dns://"):
        scheme = server.split("://", 1)[0]
        raise InvalidInput(
            f"--server takes a daemon's gRPC address (HOST:PORT, a comma list, or unix:/PATH), "
            f"not a {scheme}:// URL: the HTTP face (--http) is for HTTP clients; give the "
            "gRPC listener (`serve --listen`, 127.0.0.1:50051 by default)"
        )


def _score_local(
    query, documents, options, model, backend, threads, top_n, allow_remote_code, as_json
):
    from edgerank.engine.rank import rank, score_documents
    from edgerank.startup import load as loader

    loaded = loader.load(
        model,
        backend=backend,
        threads=threads or None,
        allow_remote_code=allow_remote_code,
    )
    if loaded.note:
        click.echo(f"edgerank: note: {loaded.note}", err=True)
    try:
        info = loaded.backend.info()
        if note := info.details.get("fidelity_note"):
            click.echo(f"edgerank: warning: {note}", err=True)
        bar = Bar("scoring", len(documents), "inputs", enabled=interactive(as_json))
        with bar:
            scored = score_documents(
                loaded.backend, query, documents, options, loaded.token_budget,
                loaded.max_pairs, cascade=loaded.cascade,
                progress=lambda done, total: _advance(bar, done, total),
            )  # fmt: skip
        seconds = time.perf_counter() - bar.start
        ranked = rank(scored.raw, info.normalise, top_n)
    finally:
        loaded.close()
    return ranked, f"{info.model} ({info.backend} {info.precision})", scored.tokens, seconds


def _advance(bar: Bar, done: int, total: int) -> None:
    bar.total = total  # model inputs: more than documents when chunking splits them
    bar.update(done)


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
