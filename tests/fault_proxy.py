"""A fault-injecting TCP proxy on loopback, to put between a node and the moto
server (the node's --endpoint-url, or one service's endpoint, points at it):
the outage suite's faults, a bus that goes away, an endpoint that comes up late.

Modes, switched from the test's thread at any time:

- pass: bytes flow both ways;
- refuse: nothing listens on the port, so a connect is refused (the kernel
  answers the SYN with a reset); connections already open go on;
- reset: every open connection is reset (RST, not FIN), and so is each new
  one as soon as it is accepted;
- drop: silence. New connections are accepted and held, nothing is forwarded
  either way, and nothing is closed or reset: a firewall that starts dropping
  packets, a NAT that lost its state. A connection caught in a drop stays
  dead after it (what was in flight never arrives), and its peer learns that
  only from a timeout of its own; connections made after the drop work.

One thread does all the socket work with a selector; mode changes are handed
to it and take effect before `set` returns.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlparse

from tests.integration.conftest import free_port

CHUNK = 65536


class Mode(StrEnum):
    PASS = "pass"
    REFUSE = "refuse"
    RESET = "reset"
    DROP = "drop"


@dataclass(eq=False)  # hashed by identity: links go in sets
class _Link:
    client: socket.socket
    upstream: socket.socket | None
    dead: bool = False  # caught in a drop: swallow everything, forever


class FaultProxy:
    def __init__(self, target: str) -> None:
        parsed = urlparse(target)
        self._target = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.port = free_port()
        self.mode = Mode.PASS
        # accepted, held (accepted during a drop), reset, swallowed_bytes, forwarded_bytes
        self.stats: Counter[str] = Counter()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._requests: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._listener: socket.socket | None = None
        self._links: dict[socket.socket, _Link] = {}
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        self._listen()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shut)
        self._thread.join(5)

    # --- the test's side ------------------------------------------------------------

    def set(self, mode: Mode) -> None:
        self._call(lambda: self._apply(mode))

    def pass_(self) -> None:
        self.set(Mode.PASS)

    def refuse(self) -> None:
        self.set(Mode.REFUSE)

    def reset(self) -> None:
        self.set(Mode.RESET)

    def drop(self) -> None:
        self.set(Mode.DROP)

    def _call(self, action: Callable[[], None]) -> None:
        done = threading.Event()
        self._requests.put((action, done))
        self._wake_write.send(b"x")
        if not done.wait(10):
            raise RuntimeError("the proxy thread did not answer")

    # --- the proxy's thread ---------------------------------------------------------

    def _loop(self) -> None:
        while self._running:
            for key, _ in self._selector.select(timeout=0.5):
                if key.data == "wake":
                    self._serve_requests()
                elif key.data == "listen":
                    self._accept()
                else:
                    self._pump(key.fileobj, key.data)  # type: ignore[arg-type]

    def _serve_requests(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_read.recv(1024)
        while not self._requests.empty():
            action, done = self._requests.get()
            try:
                action()
            finally:
                done.set()

    def _apply(self, mode: Mode) -> None:
        if mode is Mode.REFUSE:
            self._unlisten()
        else:
            self._listen()
        for link in set(self._links.values()):
            if mode is Mode.RESET:
                self._close(link, reset=True)
            elif mode is Mode.DROP:
                link.dead = True
        self.mode = mode

    def _listen(self) -> None:
        if self._listener is None:
            # create_server sets SO_REUSEADDR: the port is ours again at once.
            self._listener = socket.create_server(("127.0.0.1", self.port))
            self._listener.setblocking(False)
            self._selector.register(self._listener, selectors.EVENT_READ, "listen")

    def _unlisten(self) -> None:
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        if self._listener is None:
            return
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        client.setblocking(True)
        self.stats["accepted"] += 1
        if self.mode is Mode.RESET:
            self.stats["reset"] += 1
            _reset(client)
            return
        if self.mode is Mode.DROP:
            self.stats["held"] += 1
            self._add(_Link(client, None, dead=True))
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        self._add(_Link(client, upstream))

    def _add(self, link: _Link) -> None:
        for sock in (link.client, link.upstream):
            if sock is not None:
                self._links[sock] = link
                self._selector.register(sock, selectors.EVENT_READ, link)

    def _pump(self, sock: socket.socket, link: _Link) -> None:
        try:
            data = sock.recv(CHUNK)
        except OSError:
            data = b""
        if not data:
            if link.dead and sock is link.upstream:
                # The server let go; the client must not hear of it.
                self._forget(sock)
                link.upstream = None
            else:
                self._close(link)
            return
        if link.dead:
            self.stats["swallowed_bytes"] += len(data)
            return
        other = link.upstream if sock is link.client else link.client
        try:
            assert other is not None
            other.sendall(data)
            self.stats["forwarded_bytes"] += len(data)
        except OSError:
            self._close(link, reset=True)

    def _forget(self, sock: socket.socket) -> None:
        if self._links.pop(sock, None) is not None:
            self._selector.unregister(sock)
        sock.close()

    def _close(self, link: _Link, *, reset: bool = False) -> None:
        for sock in (link.client, link.upstream):
            if sock is None or sock not in self._links:
                continue
            if reset:
                self.stats["reset"] += sock is link.client
                _linger_zero(sock)
            self._forget(sock)

    def _shut(self) -> None:
        self._running = False
        for link in set(self._links.values()):
            self._close(link)
        self._unlisten()


def _linger_zero(sock: socket.socket) -> None:
    """Make close() send RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _reset(sock: socket.socket) -> None:
    _linger_zero(sock)
    sock.close()
