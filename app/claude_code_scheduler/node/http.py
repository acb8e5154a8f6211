"""The node's HTTP port (--http-port): /metrics, /healthz and /readyz.

- /metrics: the node's Prometheus registry (node.metrics), served by
  prometheus_client's own WSGI app (text or OpenMetrics, gzip, `name[]`);
- /healthz: the judgement of `healthcheck` (node.health), from the state file:
  200 while the node heartbeats, 503 once it is stuck or deregistered;
- /readyz: 200 while the node is registered and not draining, else 503: a
  load balancer or an orchestrator stops counting on a node from its first
  signal, while /healthz still says it is alive and finishing its runs.

The health answers are JSON: {"ok": bool, "reason": str}. The port is bound
to loopback unless --http-host says otherwise; nothing on it needs
credentials, so exposing it is a network decision (a security group).

One thread serves, one more per request (daemon threads: a client that hangs
never holds up the node's exit). The server is stopped last in the shutdown
order (node.worker), so /readyz says "draining" for the whole drain.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.health import Health

log = logging.getLogger(__name__)

# How often the serving loop looks at whether it is asked to stop: stopping
# the server takes up to this long.
POLL_SECONDS = 0.5
Check = Callable[[], Health]
StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    """Requests at DEBUG in the node's log, not on stderr as wsgiref prints them."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _server_class(host: str, port: int) -> type[WSGIServer]:
    """A server of the address's family: an IPv6 host such as :: needs AF_INET6."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return type("_FamilyServer", (_Server,), {"address_family": family})


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        health: Check,
        ready: Check,
    ) -> None:
        """`health` and `ready` are asked at each request to /healthz and /readyz."""
        self._host = host
        self._port = port
        self._checks = {"/healthz": health, "/readyz": ready}
        self._metrics = make_wsgi_app(registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on: the one asked for, or the one given for 0."""
        return self._server.server_port if self._server is not None else self._port

    def start(self) -> None:
        """Listen and serve; a port that cannot be had is the operator's error."""
        try:
            self._server = make_server(
                self._host,
                self._port,
                self._app,
                server_class=_server_class(self._host, self._port),
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise ConfigError(
                f"--http-port: cannot listen on {self._host} port {self._port}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name="http",
            daemon=True,
        )
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s port %d", self._host, self.port)

    def stop(self) -> None:
        """Stop serving (within POLL_SECONDS) and close the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        check = self._checks.get(path)
        if check is None:
            return _reply(start_response, "404 Not Found", {"ok": False, "reason": "not found"})
        if environ.get("REQUEST_METHOD") != "GET":
            return _reply(
                start_response,
                "405 Method Not Allowed",
                {"ok": False, "reason": "GET only"},
                [("Allow", "GET")],
            )
        answer = check()
        status = "200 OK" if answer.healthy else "503 Service Unavailable"
        return _reply(start_response, status, {"ok": answer.healthy, "reason": answer.reason})


def _reply(
    start_response: StartResponse,
    status: str,
    body: dict[str, Any],
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            *(headers or []),
        ],
    )
    return [data]
