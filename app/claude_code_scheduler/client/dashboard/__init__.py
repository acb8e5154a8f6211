"""`dashboard`: a web view of the fleet (placeholder, being written)."""

from __future__ import annotations

import click


@click.command()
def dashboard() -> None:
    """Serve a web page of the fleet: nodes, runs, output, cancel."""
