"""`dashboard`: a web page of the fleet for an operator (docs/dashboard.md).

The command binds the socket, opens the bus reader (its own temporary queue,
as `events` does), starts the two feeds and the web server in threads, and
waits for SIGINT/SIGTERM in the main thread, where the handlers only set an
Event. Then, in order: the live streams end, the server stops, the feeds
stop, and the reader's queue and subscription are removed.

Starlette and uvicorn are the `dashboard` extra: they are imported only
here, when the command runs, so the rest of the CLI (and the node image)
works without them.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

import click

from claude_code_scheduler.aws.names import validate_bucket
from claude_code_scheduler.client.cancel import LOG_BUCKET_ENVVARS
from claude_code_scheduler.client.dashboard.security import allowed_hosts, check_token
from claude_code_scheduler.client.options import (
    aws_options,
    clients_for,
    reader_options,
    validate_sources,
)
from claude_code_scheduler.errors import ConfigError

DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"
INSTALL_HINT = "pip install 'claude-code-scheduler[dashboard]'"


@click.command()
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on. Anything but loopback needs --token.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on (0: any free one).",
)
@click.option(
    "--token",
    envvar="CLAUDE_DASHBOARD_TOKEN",
    help="Require this token (16+ URL-safe characters): open the page once with ?token=..., "
    "or send Authorization: Bearer. Required off loopback.",
)
@click.option(
    "--log-bucket",
    envvar=LOG_BUCKET_ENVVARS,
    help="The nodes' log bucket: the recent runs from the run records, and the cancel button.",
)
@reader_options
@aws_options
def dashboard(**options: Any) -> None:
    """Serve a web page of the fleet: the nodes, runs in progress with their
    output, recent runs with outcome and cost, and a cancel button."""
    validate_sources(options)
    bucket = validate_bucket(options["log_bucket"]) if options.get("log_bucket") else None
    host = options["host"]
    token = check_token(options.get("token"), host)
    serve = _server_parts()
    clients = clients_for(options, options.get("control_bus_arn"), options.get("server_queue_url"))
    listener = _bind(host, options["port"])
    with contextlib.closing(listener):
        serve(
            listener=listener,
            clients=clients,
            options=options,
            bucket=bucket,
            token=token,
            hosts=allowed_hosts(host),
        )


def _server_parts() -> Callable[..., None]:
    """The part that needs the extra, or a ConfigError saying how to get it."""
    try:
        from claude_code_scheduler.client.dashboard import server  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"the dashboard needs Starlette and uvicorn ({exc}): {INSTALL_HINT}"
        ) from None
    return server.serve


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port is one line, not a
    traceback in the server's thread."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: {exc.strerror}") from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(64)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen: {exc.strerror}") from None
    listener.set_inheritable(True)
    return listener
