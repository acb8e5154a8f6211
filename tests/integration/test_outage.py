"""The control bus goes away mid-run and comes back: no event is lost, none
is out of order, and the command is not deleted before its terminal event."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlparse

from claude_code_scheduler.node.leases import MIN_VISIBILITY_SECONDS
from tests.integration.conftest import command, free_port


class TcpProxy:
    """A loopback TCP forwarder that can be taken down and brought back on the
    same port, standing in for an SNS endpoint that has an outage."""

    def __init__(self, target: str) -> None:
        parsed = urlparse(target)
        self._target = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.port = free_port()
        self._server: socket.socket | None = None
        self._connections: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.close()
        self._connections.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_events_wait_out_a_bus_outage(stack_factory, start_node):
    # The node's smallest queue timeout (MIN_VISIBILITY_SECONDS), and an
    # outage longer than it: only renewals keep the message hidden.
    stack = stack_factory(visibility_timeout=MIN_VISIBILITY_SECONDS)
    proxy = TcpProxy(stack.endpoint)
    proxy.up()
    node = start_node(
        stack,
        "--mock-mode",
        "--poll-wait-seconds",
        "1",
        "--heartbeat-interval",
        "1",
        env={"AWS_ENDPOINT_URL_SNS": proxy.url},
    )
    stack.wait_event("NodeRegistered", node_id=node.node_id)
    cmd = command(mock={"duration_seconds": 3, "output_bytes": 50000})
    stack.send(cmd)
    stack.wait_event("TaskStarted", cmd["run_id"])
    proxy.down()
    time.sleep(MIN_VISIBILITY_SECONDS + 3)  # the run ends during the outage; its events wait
    assert not stack.of("TaskCompleted", cmd["run_id"])
    # Not deleted: the lease keeps it hidden while the terminal event waits.
    assert stack.queue_counts() == (0, 1)
    proxy.up()
    stack.wait_event("TaskCompleted", cmd["run_id"], timeout=90)
    stack.drain_events(3.0)
    mine = sorted(
        (e for e in stack.events if e["node_id"] == node.node_id), key=lambda e: e["sequence"]
    )
    assert [e["sequence"] for e in mine] == list(range(1, len(mine) + 1))
    chunks = [e for e in mine if e["event_type"] == "TaskOutput"]
    assert [c["data"]["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["data"]["data"] for c in chunks).encode() == stack.log_text(cmd["run_id"])
    assert len(stack.of("TaskStarted", cmd["run_id"])) == 1
    assert stack.queue_counts() == (0, 0)
    assert "retrying" in node.stderr
