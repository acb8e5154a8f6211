"""The live stream: server-sent event frames, and the hub that hands the
feed threads' changes to every open page.

A page's stream starts with a `snapshot` frame (everything, output too),
then gets `output` frames (pieces of one run's output, in order) and
`summary` frames (everything but output) as changes arrive. A subscriber is
registered under the state's lock in the same step its snapshot is taken,
and the feed publishes under that lock, so a page neither misses nor repeats
a piece. A page too slow to keep up is dropped; its EventSource reconnects
and starts again from a snapshot.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from claude_code_scheduler.client.dashboard.state import Changes, DashboardState

# Pages streaming at once; one more is refused (503) rather than letting
# open tabs grow the process without bound.
MAX_SUBSCRIBERS = 32
# Frames waiting for one page; past this it is dropped.
SUBSCRIBER_BACKLOG = 1000
# A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
# EventSource waits this long before reconnecting (the `retry:` field).
RECONNECT_MILLISECONDS = 2000


def frame(event: str, data: Any) -> str:
    """One SSE frame. json.dumps escapes newlines, so `data` is one line
    and the frame cannot be split or forged by what it carries."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def frames_of(changes: Changes, summary: dict[str, Any] | None) -> list[str]:
    """The frames one batch of changes makes: the summary first (it makes the
    card of a run that just started), then the output pieces."""
    out = [] if summary is None else [frame("summary", summary)]
    out += [
        frame("output", {"run_id": run_id, "pieces": [list(p) for p in pieces]})
        for run_id, pieces in changes.output.items()
    ]
    return out


_CLOSED = object()


class Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[object] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self.dropped = False

    def offer(self, item: object) -> None:
        """On the subscriber's loop: queue a frame, or drop a page that lags."""
        if self.dropped:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped = True
            self.queue.get_nowait()
            self.queue.put_nowait(_CLOSED)


class Hub:
    """The state, and the pages streaming it."""

    def __init__(self, state: DashboardState, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self._subscribers: list[Subscriber] = []
        self._closed = False
        self._last_summary: str | None = None
        self._guard = threading.Lock()

    # --- the feeds' side (any thread) --------------------------------------------

    def apply(self, bodies: list[dict[str, Any]]) -> None:
        with self.state.lock:
            changes = self.state.apply(bodies, self.clock())
            self._publish(changes, force_summary=changes.summary)

    def add_records(self, records: list[dict[str, Any]]) -> None:
        with self.state.lock:
            changed = self.state.add_records(records)
            self._publish(Changes(), force_summary=changed)

    def tick(self) -> None:
        """Between events: a node that stays silent turns lost with no event
        saying so; the summary goes out when it differs from the last one."""
        with self.state.lock:
            pruned = self.state.prune(self.clock())
            self._publish(Changes(), force_summary=pruned)

    def _publish(self, changes: Changes, *, force_summary: bool) -> None:
        summary = self.state.snapshot(self.clock(), with_output=False)
        # Ages and server_time change every call; what else changed decides.
        comparable = json.dumps(
            {**summary, "server_time": 0, "nodes": _without_ages(summary["nodes"])},
            sort_keys=True,
        )
        send_summary = force_summary or comparable != self._last_summary
        self._last_summary = comparable
        frames = frames_of(changes, summary if send_summary else None)
        if not frames:
            return
        with self._guard:
            if self._closed:
                return
            # A page dropped for lagging leaves here, whether or not its
            # stream ever ran to notice.
            self._subscribers = [s for s in self._subscribers if not s.dropped]
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            for item in frames:
                _hand_over(subscriber, item)

    # --- the pages' side (the event loop) ----------------------------------------

    def add_page(self) -> tuple[Subscriber, str] | None:
        """A new page's subscriber and its snapshot frame; None when full or
        closing."""
        loop = asyncio.get_running_loop()
        with self.state.lock, self._guard:
            if self._closed or len(self._subscribers) >= MAX_SUBSCRIBERS:
                return None
            subscriber = Subscriber(loop)
            self._subscribers.append(subscriber)
            snapshot = self.state.snapshot(self.clock())
        return subscriber, frame("snapshot", snapshot)

    def remove_page(self, subscriber: Subscriber) -> None:
        with self._guard:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def close(self) -> None:
        """Ends every stream, so the server's shutdown does not wait on them."""
        with self._guard:
            self._closed = True
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            _hand_over(subscriber, _CLOSED)

    async def stream(
        self, subscriber: Subscriber, first: str, keepalive: float = KEEPALIVE_SECONDS
    ) -> AsyncIterator[str]:
        """The frames of one page until it goes, lags or the hub closes."""
        try:
            yield f"retry: {RECONNECT_MILLISECONDS}\n\n"
            yield first
            while True:
                try:
                    item = await asyncio.wait_for(subscriber.queue.get(), keepalive)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if item is _CLOSED:
                    return
                yield str(item)
        finally:
            self.remove_page(subscriber)


def _hand_over(subscriber: Subscriber, item: object) -> None:
    """From any thread to the page's event loop."""
    if subscriber.dropped:
        return
    try:
        subscriber.loop.call_soon_threadsafe(subscriber.offer, item)
    except RuntimeError:
        subscriber.dropped = True  # its event loop is closed: the server stopped


def _without_ages(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in n.items() if k != "last_heartbeat_age_seconds"} for n in nodes]
