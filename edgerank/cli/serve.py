"""`edgerank serve`: the daemon, with every setting as a flag (server/settings.py's schema)."""

from __future__ import annotations

import sys

import click

from edgerank.cli.common import friendly
from edgerank.server.settings import click_options


@click.command()
@click_options
@friendly
def serve(**flags):
    """Run the reranking daemon (gRPC; settings: flags > EDGERANK_* > TOML file)."""
    from edgerank.server import daemon, settings

    # a SIGHUP reads the settings again by the same rules (server/reload.py)
    sys.exit(daemon.run(settings.load(flags), fresh=lambda: settings.load(flags)))
