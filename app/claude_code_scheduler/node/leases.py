"""Holding SQS messages while their runs last, and every SQS write the node makes.

A received message is hidden from other nodes for the queue's visibility
timeout. The keeper extends it in steps of that same length, renewing after a
third of each step; a crashed node stops renewing and its message returns to
the queue within one timeout.

The keeper is the only writer to the queue: it extends what is held, and
deletes or releases what it is told to. It decides nothing: which message is
deleted or released, and when, is `messages`'s decision. A delete is retried
through an outage, with the message still extended meanwhile, because a
message that is not deleted runs again. A release is tried once: one that
fails comes back by itself when its timeout runs out.

On a silent network a call hangs until its timeout (aws.clients.LEASE_CALLS,
at most LEASE_CALL_SECONDS). So that one hung call cannot cost a lease:
- the keeper's thread only decides what is due; the calls are made by a small
  pool of threads, so a hung call holds up no other message's renewal, delete
  or release;
- a message has at most one call in flight: a renewal that is due while the
  previous call hangs waits for it, and is never stacked behind it;
- a renewal that fails with a transient error is tried again at once (a
  second after the failed one was sent, if that failed faster);
- the queue's visibility timeout must be at least MIN_VISIBILITY_SECONDS,
  checked at start-up: then a renewal sent at a third of the step may hang for
  the whole call bound, and its retry still lands before the lease runs out.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from queue import SimpleQueue

from claude_code_scheduler.aws.clients import LEASE_CALLS
from claude_code_scheduler.aws.errors import error_code, is_transient
from claude_code_scheduler.aws.queue import MessageQueue, ReceivedMessage
from claude_code_scheduler.aws.retry import full_jitter
from claude_code_scheduler.node.metrics import METRICS

log = logging.getLogger(__name__)

RENEW_FRACTION = 1 / 3
# The longest one lease call (ChangeMessageVisibility, DeleteMessage) takes
# before it raises, on a network that answers nothing.
LEASE_CALL_SECONDS = LEASE_CALLS.seconds
# What the retry of a renewal that hung needs on top of the hung call before
# the lease runs out: the keeper's nap (MAX_NAP_SECONDS), the retry's trip to
# SQS, and slack.
RENEW_MARGIN_SECONDS = 2.0
# A renewal that failed fast is tried again this long after it was sent.
RENEW_RETRY_SECONDS = 1.0
# How long a delete is retried through an outage before giving up (the
# message then comes back, and is deleted as a duplicate if still remembered).
DELETE_RETRY_SECONDS = 120.0
DELETE_BACKOFF_CAP = 20.0
# The longest the keeper's thread sleeps between looks at what is due.
MAX_NAP_SECONDS = 0.5
# Call threads when the caller does not say (see lease_threads).
LEASE_THREADS = 4


def renewal_interval(step_seconds: int) -> float:
    """Seconds between renewals for a lease extended `step_seconds` at a time."""
    return max(0.2, step_seconds * RENEW_FRACTION)


def min_visibility_timeout(call_seconds: float) -> int:
    """The smallest step (a queue's visibility timeout) whose lease outlasts
    one renewal that hangs for `call_seconds`: the renewal is sent at
    renewal_interval(step), gives up `call_seconds` later, and its retry needs
    RENEW_MARGIN_SECONDS more, all before the step is over."""
    need = call_seconds + RENEW_MARGIN_SECONDS
    return next(step for step in itertools.count(1) if step - renewal_interval(step) >= need)


# The smallest queue VisibilityTimeout the node starts with (11 s).
MIN_VISIBILITY_SECONDS = min_visibility_timeout(LEASE_CALL_SECONDS)


def lease_threads(run_slots: int) -> int:
    """Call threads for a node with `run_slots` runs at once: one for each
    run's message, and two for messages a poll brings back while the node is
    full or stopping, so that every message held can have its call in flight."""
    return max(1, run_slots) + 2


class Write(StrEnum):
    DELETE = "delete"
    RELEASE = "release"


@dataclass
class _Held:
    receipt: str  # the newest: a redelivery of the same message replaces it
    renew_at: float
    renewing: bool = True
    in_flight: bool = False  # a call for this message is being made


@dataclass
class _Pending:
    write: Write
    give_up_at: float
    visibility: int = 0  # a release's: seconds until the message is visible
    not_before: float = 0.0
    attempts: int = 0


@dataclass(frozen=True)
class _Calls:
    """What one message needs from SQS in one pass, made in this order."""

    message_id: str
    receipt: str
    renew: bool
    write: Write | None
    visibility: int
    sent_at: float


class LeaseKeeper:
    def __init__(
        self,
        queue: MessageQueue,
        step_seconds: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        threads: int = LEASE_THREADS,
    ) -> None:
        self._queue = queue
        self._step = max(1, step_seconds)
        self._interval = renewal_interval(self._step)
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}  # by message id
        self._pending: dict[str, _Pending] = {}  # by message id
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_deadline = float("inf")
        self._started = False
        self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)
        # Daemon threads: a call still hanging when the node exits is abandoned.
        self._work: SimpleQueue[_Calls | None] = SimpleQueue()
        self._callers = [
            threading.Thread(target=self._call_loop, name=f"leases-call-{index}", daemon=True)
            for index in range(max(1, threads))
        ]

    # --- what the lifecycle asks ------------------------------------------------

    def hold(self, message: ReceivedMessage) -> None:
        """Keep `message` hidden until it is deleted or released."""
        with self._lock:
            renew_at = self._clock() + self._interval
            held = self._held.get(message.message_id)
            if held is None:
                self._held[message.message_id] = _Held(message.receipt_handle, renew_at)
            else:
                # Updated in place: a call in flight for the old receipt stays
                # the message's one call in flight.
                held.receipt = message.receipt_handle
                held.renew_at = min(held.renew_at, renew_at)
                held.renewing = True
            pending = self._pending.get(message.message_id)
            if pending is not None and pending.write is Write.RELEASE:
                # It came back already: the release is done, and must not
                # apply to this delivery, which the lifecycle decides anew.
                del self._pending[message.message_id]

    def delete(self, message_ids: Iterable[str]) -> None:
        self._enqueue(message_ids, Write.DELETE, DELETE_RETRY_SECONDS)

    def release(self, message_ids: Iterable[str], *, after: int = 0) -> None:
        """Visible again for any node: at once, or `after` seconds from now."""
        released = self._enqueue(message_ids, Write.RELEASE, 0.0, visibility=after)
        METRICS.handed_back(released, delayed=after > 0)

    def holding(self) -> set[str]:
        """Message ids held or with a write pending."""
        with self._lock:
            return set(self._held)

    # --- the threads --------------------------------------------------------------

    def start(self) -> None:
        """Start the keeper's thread and its call threads, unless started already."""
        with self._lock:
            if self._started:
                return
            self._started = True
        for caller in self._callers:
            caller.start()
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Finish the pending writes until `deadline` (on the keeper's clock),
        then stop; a call still hanging then is abandoned."""
        self._stop_deadline = deadline
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - self._clock()) + 1.0)
        for _ in self._callers:
            self._work.put(None)

    def tick(self) -> None:
        """One pass: for each message with no call in flight, renew it if due,
        then make its write if due. Once the keeper is started the calls go to
        its call threads and tick returns at once; before (a test stepping the
        keeper by hand), they are made in the caller's thread."""
        now = self._clock()
        batch = []
        with self._lock:
            for message_id, held in self._held.items():
                if held.in_flight:
                    continue
                renew = held.renewing and held.renew_at <= now
                pending = self._pending.get(message_id)
                due = pending if pending and pending.not_before <= now else None
                if not renew and due is None:
                    continue
                if renew:
                    held.renew_at = now + self._interval
                held.in_flight = True
                write, visibility = (due.write, due.visibility) if due else (None, 0)
                batch.append(_Calls(message_id, held.receipt, renew, write, visibility, now))
            threaded = self._started
        for calls in batch:
            if threaded:
                self._work.put(calls)
            else:
                self._make(calls)

    def _loop(self) -> None:
        while True:
            with self._lock:
                idle = not self._pending
            if self._stopping.is_set() and (idle or self._clock() >= self._stop_deadline):
                return
            # Cleared before the pass: a call that ends during it wakes the next.
            self._wake.clear()
            self.tick()
            self._wake.wait(min(self._interval / 2, MAX_NAP_SECONDS))

    def _call_loop(self) -> None:
        while (calls := self._work.get()) is not None:
            try:
                self._make(calls)
            except Exception:
                log.exception("lease call failed", extra={"message_id": calls.message_id})

    # --- SQS -------------------------------------------------------------------

    def _enqueue(
        self, message_ids: Iterable[str], write: Write, retry_for: float, *, visibility: int = 0
    ) -> int:
        """Returns how many of the messages are held, and so get the write."""
        now = self._clock()
        enqueued = 0
        with self._lock:
            for message_id in message_ids:
                held = self._held.get(message_id)
                if held is None:
                    continue
                # A released message must not be extended meanwhile; a deleted
                # one must, until the delete goes through.
                held.renewing = write is Write.DELETE
                self._pending[message_id] = _Pending(write, now + retry_for, visibility)
                enqueued += 1
        self._wake.set()
        return enqueued

    def _make(self, calls: _Calls) -> None:
        try:
            if calls.renew:
                self._extend(calls)
            if calls.write is not None:
                self._write(calls.message_id, calls.write, calls.receipt, calls.visibility)
        finally:
            with self._lock:
                held = self._held.get(calls.message_id)
                if held is not None:
                    held.in_flight = False
            self._wake.set()

    def _extend(self, calls: _Calls) -> None:
        try:
            self._queue.change_visibility(calls.receipt, self._step)
            log.log(5, "extended lease by %ds", self._step, extra={"message_id": calls.message_id})
        except Exception as exc:
            transient = is_transient(exc)
            log.warning(
                "could not extend lease: %s%s",
                error_code(exc),
                "; trying again" if transient else "",
                extra={"message_id": calls.message_id},
            )
            if transient:
                with self._lock:
                    held = self._held.get(calls.message_id)
                    if held is not None:
                        retry_at = calls.sent_at + RENEW_RETRY_SECONDS
                        held.renew_at = min(held.renew_at, retry_at)

    def _write(self, message_id: str, write: Write, receipt: str, visibility: int) -> None:
        try:
            if write is Write.DELETE:
                self._queue.delete(receipt)
            else:
                self._queue.change_visibility(receipt, visibility)
        except Exception as exc:
            if self._retry_later(message_id, exc):
                return
            log.log(
                logging.ERROR if write is Write.DELETE else logging.WARNING,
                "could not %s a message: %s",
                write.value,
                error_code(exc),
                extra={"message_id": message_id},
            )
        with self._lock:
            held = self._held.get(message_id)
            # A redelivery while the call was in flight replaced the receipt:
            # that delivery is still held, and a delete still pending for it
            # is made again with the new receipt.
            if held is not None and held.receipt == receipt:
                del self._held[message_id]
                self._pending.pop(message_id, None)

    def _retry_later(self, message_id: str, exc: Exception) -> bool:
        now = self._clock()
        with self._lock:
            pending = self._pending.get(message_id)
            if pending is None or not is_transient(exc):
                return False
            give_up_at = min(pending.give_up_at, self._stop_deadline)
            if now >= give_up_at:
                return False
            pending.attempts += 1
            pending.not_before = now + full_jitter(
                pending.attempts, base=0.5, cap=DELETE_BACKOFF_CAP
            )
        log.warning(
            "%s failed (%s); retrying, attempt %d",
            pending.write.value,
            error_code(exc),
            pending.attempts,
            extra={"message_id": message_id},
        )
        return True
