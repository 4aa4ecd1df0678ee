"""`edgerank bench`: backend speed against baselines in the same run, or a daemon under load."""

from __future__ import annotations

import json

import click

from edgerank.cli.common import friendly


@click.command()
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
@click.option(
    "--server",
    help="Load-test running daemons instead (as score --server: host:port, a comma "
    "list, or unix:/path).",
)
@click.option("--clients", default="1,8,64", help="With --server: concurrent clients to try.")
@click.option("--requests", "n_requests", default=64, help="With --server: requests per level.")
@click.option("--docs", "n_docs", default=16, help="With --server: documents per request.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def bench(model, reference, threads, pairs, tokens, rounds, server, clients, n_requests, n_docs,
          as_json):  # fmt: skip
    """Throughput, latency and bucketing gain of the backend (ratios to torch when given), and
    this CPU's INT8 and FP32 GEMM throughput."""
    from edgerank.hardware.probe import probe
    from edgerank.quality import bench as b
    from edgerank.quality.gemm import gemm_report
    from edgerank.startup import load as loader

    if server:
        from edgerank.cli.score import check_grpc_address

        check_grpc_address(server)
        _bench_server(server, clients, n_requests, n_docs, as_json)
        return

    from edgerank.errors import extras_here, pip_extras, require_extras

    counts = [int(t) for t in threads.split(",") if t.strip()]
    refs = {}
    if reference:
        require_extras("timing the torch FP32/BF16 reference (--reference)", ["convert"])
        from edgerank.backends.torch import TorchBackend

        for precision in ("fp32", "bf16"):
            refs[f"torch_{precision}"] = lambda t, p=precision: TorchBackend(
                reference, precision=p, threads=t
            )
    rows = b.backend_report(
        lambda t: loader.load(model, threads=t, cascade=False).backend, refs, counts, pairs,
        tokens, rounds,
    )  # fmt: skip
    one = loader.load(model, threads=max(counts), cascade=False).backend
    bucket = b.bucketing_report(one, rounds=max(3, rounds // 2))
    one.close()
    # the GEMM peaks' test graphs are built with onnx: without the quantize extra, say so
    no_gemm = None if "quantize" in extras_here() else pip_extras(["quantize"])
    peaks = [] if no_gemm else gemm_report(counts, rounds)
    if as_json:
        out = {"throughput": rows, "bucketing": bucket, "gemm": peaks}
        if no_gemm:
            out["gemm_skipped"] = f"needs the quantize extra: {no_gemm}"
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"# {pairs} pairs x {tokens} tokens, medians of {rounds} interleaved rounds")
    click.echo(b.format_table(rows))
    click.echo(f"\n# bucketing, {bucket['docs']} mixed-length documents")
    click.echo(b.format_table([bucket]))
    isa = " ".join(sorted(probe().isa)) or "baseline"
    if no_gemm:
        click.echo(f"\n# this CPU's GEMM peaks (ISA: {isa}) need the quantize extra: {no_gemm}")
        return
    click.echo(f"\n# this CPU's GEMM through onnxruntime (ISA: {isa}): the most INT8 can gain")
    click.echo(b.format_table(peaks))


def _bench_server(address, clients, n_requests, n_docs, as_json) -> None:
    import random

    from edgerank import client
    from edgerank.quality import bench as b

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
