"""The event outbox: every event goes to the bus in order, through outages.

One thread publishes, so events leave in the order they were stamped (and the
events of a run in the order the run produced them). A transient failure keeps
the event at the head of the outbox and is retried with tenacity until the bus
takes it; only `close` with a passed deadline gives up, because a stopping node
must still exit inside its stop timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import tenacity

from claude_code_scheduler.aws.errors import describe_error
from claude_code_scheduler.aws.retry import through_outage
from claude_code_scheduler.aws.topic import Publisher
from claude_code_scheduler.protocol.events import Event, encode_event

log = logging.getLogger(__name__)

# Output waits for the bus once this much is queued, so a slow bus slows the
# run's pipe down instead of growing the node's memory.
MAX_PENDING_OUTPUT_BYTES = 8 * 1024 * 1024


@dataclass
class Delivery:
    """What became of one event; `wait` returns True once the bus took it.

    It always settles: the outbox gives up on what is left when it closes."""

    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _callbacks: list[Callable[[bool], None]] = field(default_factory=list)

    def settle(self, ok: bool, error: str | None = None) -> None:
        with self._lock:
            self.ok, self.error = ok, error
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(ok)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout) and self.ok

    def when_settled(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(delivered)` once settled (now, if it is). It runs on
        the thread that settles, the outbox's: it must only hand work on."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback(self.ok)


class EventSink(Protocol):
    """What the node and its runs need of the outbox; Outbox, and the tests' fakes."""

    def start(self) -> None: ...

    def publish(
        self,
        event: Event,
        *,
        backpressure: bool = False,
        stop_waiting: Callable[[], bool] | None = None,
        caller_reports_drop: bool = False,
    ) -> Delivery: ...

    def close(self, deadline: float) -> None: ...


@dataclass
class _Pending:
    event: Event
    body: str
    attributes: dict[str, str]
    delivery: Delivery
    is_output: bool
    quiet_drop: bool


class Outbox:
    def __init__(
        self,
        bus: Publisher,
        node_id: str,
        node_name: str,
        *,
        max_pending_output_bytes: int = MAX_PENDING_OUTPUT_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._node_id = node_id
        self._node_name = node_name
        self._max_pending_output = max_pending_output_bytes
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._sequence = 0
        self._pending_output = 0
        self._closed = False
        self._deadline: float | None = None
        self._give_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def publish(
        self,
        event: Event,
        *,
        backpressure: bool = False,
        stop_waiting: Callable[[], bool] | None = None,
        caller_reports_drop: bool = False,
    ) -> Delivery:
        """Queue an event. With `backpressure`, first wait while too much output
        is queued, until `stop_waiting()` says the caller has something more
        important to do (a deadline, a shutdown). With `caller_reports_drop`,
        a dropped event is the caller's to report (from `Delivery.error`)."""
        delivery = Delivery()
        with self._cond:
            while (
                backpressure
                and self._pending_output > self._max_pending_output
                and not self._closed
                and not (stop_waiting and stop_waiting())
            ):
                self._cond.wait(0.2)
            if self._closed:
                log.debug("bus closed; not publishing %s", event.event_type)
                delivery.settle(False, "the outbox is closed")
                return delivery
            self._sequence += 1
            body = encode_event(event.body(self._node_id, self._node_name, self._sequence))
            item = _Pending(
                event,
                body,
                event.attributes(self._node_id),
                delivery,
                is_output=backpressure,
                quiet_drop=caller_reports_drop,
            )
            if backpressure:
                self._pending_output += len(body)
            self._queue.append(item)
            self._cond.notify_all()
        return delivery

    def close(self, deadline: float) -> None:
        """Accept nothing more; publish what is queued until `deadline` (monotonic)."""
        with self._cond:
            self._closed = True
            self._deadline = deadline
            self._cond.notify_all()
        remaining = deadline - self._clock()
        if remaining <= 0:
            self._give_up.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, remaining))
        if self._thread.is_alive():
            self._give_up.set()
            self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue[0]
            error = self._send(item)
            with self._cond:
                self._queue.popleft()
                if item.is_output:
                    self._pending_output -= len(item.body)
                self._cond.notify_all()
            item.delivery.settle(error is None, error)

    def _send(self, item: _Pending) -> str | None:
        """Publishes one event; returns None, or why it was dropped."""
        retrying = through_outage(
            "publishing to the control bus", interrupt=self._give_up, stop=self._past_deadline
        )
        try:
            retrying(
                self._bus.publish,
                item.body,
                item.attributes,
                group=self._node_id,
                dedup=item.event.event_id,
            )
        except Exception as exc:
            reason = describe_error(exc)
            log.log(
                logging.DEBUG if item.quiet_drop else logging.ERROR,
                "dropped %s event: %s",
                item.event.event_type,
                reason,
                extra={"event_type": item.event.event_type, "run_id": item.event.run_id},
            )
            return reason
        log.debug("published %s", item.event.event_type, extra={"run_id": item.event.run_id})
        return None

    def _past_deadline(self, state: tenacity.RetryCallState) -> bool:
        if self._give_up.is_set():
            return True
        with self._cond:
            return self._deadline is not None and self._clock() >= self._deadline
