"""`edgerank serve`: the daemon, with every setting as a flag (server/settings.py's schema)."""

from __future__ import annotations

import sys

import click

from edgerank.cli.common import friendly
from edgerank.server.settings import click_options


@click.command(context_settings={"max_content_width": 100})
@click_options
@friendly
def serve(**flags):
    """Run the reranking daemon: gRPC on --listen (127.0.0.1:50051), HTTP (Cohere, Jina and
    TEI shapes) only with --http."""
    from edgerank.server import daemon, settings

    # a SIGHUP reads the settings again by the same rules (server/reload.py)
    sys.exit(daemon.run(settings.load(flags), fresh=lambda: settings.load(flags)))
