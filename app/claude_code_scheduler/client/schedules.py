"""`schedule`: recurring tasks on EventBridge Scheduler (placeholder, being written)."""

from __future__ import annotations

import click


@click.group()
def schedule() -> None:
    """Recurring tasks: EventBridge Scheduler schedules that publish a RunTask."""
