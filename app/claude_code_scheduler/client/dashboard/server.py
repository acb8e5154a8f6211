"""The running dashboard: the reader, the feeds and uvicorn, started and
stopped in a fixed order (the command's docstring says which). Imports
uvicorn and Starlette, so only the command imports it, when it runs."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from typing import Any

import click
import uvicorn

from claude_code_scheduler.aws.clients import Clients
from claude_code_scheduler.aws.record_reader import RecordReader
from claude_code_scheduler.client.bus import EventFilter
from claude_code_scheduler.client.cancel import CancelResult, cancel_as_caller
from claude_code_scheduler.client.dashboard.app import Canceller, Settings, create_app
from claude_code_scheduler.client.dashboard.feed import BusFeed, RecordsFeed
from claude_code_scheduler.client.dashboard.live import Hub
from claude_code_scheduler.client.dashboard.security import Guard
from claude_code_scheduler.client.dashboard.state import DashboardState
from claude_code_scheduler.client.options import open_reader, stop_on_signals

log = logging.getLogger(__name__)

# How long the web server may take to stop once asked, and each feed after it.
SERVER_STOP_SECONDS = 10.0
FEED_STOP_SECONDS = 10.0
# The main thread looks at the server's thread this often while it waits.
WATCH_SECONDS = 1.0


def serve(
    *,
    listener: socket.socket,
    clients: Clients,
    options: dict[str, Any],
    bucket: str | None,
    token: str | None,
    hosts: frozenset[str] | None,
) -> None:
    guard = Guard(token=token, csrf_token=secrets.token_urlsafe(32), hosts=hosts)
    hub = Hub(DashboardState())
    source = options.get("control_bus_arn") or options.get("server_queue_url") or ""
    settings = Settings(
        guard=guard, canceller=_canceller(clients, options, bucket), source=str(source)
    )
    config = uvicorn.Config(
        create_app(hub, settings),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(SERVER_STOP_SECONDS),
    )
    server = uvicorn.Server(config)
    with stop_on_signals() as stop, open_reader(clients, options, EventFilter()) as reader:
        feeds: list[BusFeed | RecordsFeed] = [BusFeed(reader, hub, stop)]
        if bucket is not None:
            feeds.append(RecordsFeed(RecordReader(clients.s3, bucket), hub, stop))
        for feed in feeds:
            feed.start()
        web = threading.Thread(
            target=server.run, kwargs={"sockets": [listener]}, name="dashboard-web", daemon=True
        )
        web.start()
        _announce(listener, options["host"], token, bucket)
        while not stop.wait(WATCH_SECONDS):
            if not web.is_alive():
                log.error("the web server stopped by itself; stopping the dashboard")
                break
        stop.set()
        hub.close()  # the live streams end, so the server need not wait for them
        server.should_exit = True
        web.join(SERVER_STOP_SECONDS)
        for feed in feeds:
            feed.join(FEED_STOP_SECONDS)
    # Leaving open_reader removed the temporary queue and its subscription.
    click.echo("dashboard stopped", err=True)


def _canceller(clients: Clients, options: dict[str, Any], bucket: str | None) -> Canceller | None:
    """client.cancel's request in the caller's name (its STS ARN), as the
    `cancel` command makes it; None without a log bucket to write it to."""
    if bucket is None:
        return None

    def cancel(run_id: str, reason: str) -> CancelResult:
        return cancel_as_caller(clients, options, log_bucket=bucket, run_id=run_id, reason=reason)

    return cancel


def _announce(listener: socket.socket, host: str, token: str | None, bucket: str | None) -> None:
    port = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    line = f"dashboard on http://{shown}:{port}/"
    if token is not None:
        line += " (open it once with ?token=<the token> to sign in)"
    click.echo(line + "; Ctrl-C stops it", err=True)
    if bucket is None:
        click.echo(
            "no --log-bucket: no run history from the records, and no cancel button", err=True
        )
