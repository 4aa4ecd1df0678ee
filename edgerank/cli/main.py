"""The `edgerank` command line: one module per command, parsing and printing only; the work
lives in the packages they call."""

from __future__ import annotations

import click

from edgerank.cli.bench import bench
from edgerank.cli.install import export_, import_, pull
from edgerank.cli.models import models
from edgerank.cli.probe import probe_cmd
from edgerank.cli.score import score
from edgerank.cli.serve import serve


@click.group(commands=[score, serve, probe_cmd, models, pull, import_, export_, bench])
@click.version_option(package_name="edgerank")
def main() -> None:
    """Rerank passages for a query on CPU, edge boxes and small servers."""


if __name__ == "__main__":  # pragma: no cover
    main()
