"""The event outbox: every event goes to the bus in order, through outages.

One thread publishes, so events leave in the order they were stamped (and the
events of a run in the order the run produced them). It takes what is queued
from the head, as much as one SNS PublishBatch carries (10 events, 256 KiB in
all), so an event waits behind a few calls rather than behind one call for
every event queued before it, and small events cost a fraction of the calls.
A run's terminal event never shares a call with an earlier event of its own
run: the bus may take part of a batch, and the terminal event must not be on
the bus while its run's output is not.

A transient failure keeps what the bus has not taken at the head of the outbox,
retried with tenacity until the bus takes it; only `close` with a passed
deadline gives up, because a stopping node must still exit inside its stop
timeout. An event the bus refuses for good is dropped alone: a batch refused
as a whole is tried again one event at a time.

What waits for the bus is held as the UTF-8 bytes it will be on the wire, and
output waits for room once MAX_PENDING_OUTPUT_BYTES of it is queued, so a slow
bus slows the run's pipe down instead of growing the node's memory.
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

from claude_code_scheduler.aws.errors import describe_error, is_transient
from claude_code_scheduler.aws.limits import SNS_MAX_BATCH_BYTES, SNS_MAX_BATCH_ENTRIES
from claude_code_scheduler.aws.retry import through_outage
from claude_code_scheduler.aws.topic import (
    BusMessage,
    Publisher,
    message_size,
)
from claude_code_scheduler.node.metrics import METRICS
from claude_code_scheduler.protocol.events import TERMINAL_EVENT_TYPES, Event, encode_event

log = logging.getLogger(__name__)

# Output waits for the bus once this much is queued: about four full batches,
# enough to keep the publisher busy, little enough that the node's memory
# stays flat however slow the bus.
MAX_PENDING_OUTPUT_BYTES = 1024 * 1024


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
    """A stamped event waiting for the bus: its body, not the Event, so the
    output text is held once."""

    event_type: str
    event_id: str
    run_id: str | None
    body: bytes
    attributes: dict[str, str]
    delivery: Delivery
    is_output: bool
    quiet_drop: bool
    size: int = 0

    def __post_init__(self) -> None:
        self.size = message_size(len(self.body), self.attributes)

    @property
    def terminal(self) -> bool:
        return self.event_type in TERMINAL_EVENT_TYPES


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
        # Events queued or being sent, not yet settled: the outbox's depth.
        self._unsettled = 0
        self._closed = False
        self._deadline: float | None = None
        self._give_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)

    def start(self) -> None:
        METRICS.watch_outbox(self.depth)
        self._thread.start()

    def depth(self) -> int:
        """Events the bus has not taken yet (nor has the outbox given up on)."""
        with self._cond:
            return self._unsettled

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
                event.event_type.value,
                event.event_id,
                event.run_id,
                body.encode(),
                event.attributes(self._node_id),
                delivery,
                is_output=backpressure,
                quiet_drop=caller_reports_drop,
            )
            if backpressure:
                self._pending_output += item.size
            self._unsettled += 1
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
                batch = self._take_batch()
            self._send(batch)

    def _take_batch(self) -> list[_Pending]:
        """From the head of the queue, what one call may carry. Called holding
        the lock."""
        batch: list[_Pending] = []
        size = 0
        runs: set[str] = set()
        while self._queue and len(batch) < SNS_MAX_BATCH_ENTRIES:
            item = self._queue[0]
            if batch and (
                size + item.size > SNS_MAX_BATCH_BYTES or (item.terminal and item.run_id in runs)
            ):
                break
            batch.append(self._queue.popleft())
            size += item.size
            if item.run_id is not None:
                runs.add(item.run_id)
        return batch

    def _send(self, batch: list[_Pending]) -> None:
        """Publishes a batch, retrying what the bus did not take, and settles
        every event in it."""
        waiting = batch
        retrying = through_outage(
            "publishing to the control bus", interrupt=self._give_up, stop=self._past_deadline
        )
        try:
            for attempt in retrying:
                METRICS.publish_attempt(attempt.retry_state.attempt_number)
                with attempt:
                    results = self._bus.publish_batch(
                        [
                            BusMessage(
                                item.body.decode(), item.attributes, self._node_id, item.event_id
                            )
                            for item in waiting
                        ]
                    )
                    waiting, refused = self._settle_taken(waiting, results)
                    if refused is not None:
                        raise refused
        except Exception as exc:
            if len(waiting) > 1 and not is_transient(exc) and not self._give_up.is_set():
                for item in waiting:
                    self._send([item])
                return
            reason = describe_error(exc)
            for item in waiting:
                self._settle(item, reason)

    def _settle_taken(
        self, items: list[_Pending], results: list[Exception | None]
    ) -> tuple[list[_Pending], Exception | None]:
        """Settles what the bus took or refused for good; returns what to try
        again, and the error to retry on."""
        again: list[_Pending] = []
        retry_on: Exception | None = None
        for item, error in zip(items, results, strict=True):
            if error is None:
                self._settle(item, None)
            elif is_transient(error):
                again.append(item)
                retry_on = retry_on or error
            else:
                self._settle(item, describe_error(error))
        return again, retry_on

    def _settle(self, item: _Pending, error: str | None) -> None:
        if error is None:
            log.debug("published %s", item.event_type, extra={"run_id": item.run_id})
        else:
            log.log(
                logging.DEBUG if item.quiet_drop else logging.ERROR,
                "dropped %s event: %s",
                item.event_type,
                error,
                extra={"event_type": item.event_type, "run_id": item.run_id},
            )
        with self._cond:
            if item.is_output:
                self._pending_output -= item.size
            self._unsettled -= 1
            self._cond.notify_all()
        item.delivery.settle(error is None, error)

    def _past_deadline(self, state: tenacity.RetryCallState) -> bool:
        if self._give_up.is_set():
            return True
        with self._cond:
            return self._deadline is not None and self._clock() >= self._deadline
