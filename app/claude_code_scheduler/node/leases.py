"""Holding SQS messages while their runs last, and every SQS write the node makes.

A received message is hidden from other nodes for the queue's visibility
timeout. The keeper extends it in steps of that same length, renewing after a
third of each step, so two missed renewals still leave time; a crashed node
stops renewing and its message returns to the queue within one timeout.

The keeper's thread is the only one that writes to the queue: it extends what
is held, and deletes or releases what it is told to. It decides nothing:
which message is deleted or released, and when, is `messages`'s decision.
A delete is retried through an outage, with the message still extended
meanwhile, because a message that is not deleted runs again. A release is
tried once: one that fails comes back by itself when its timeout runs out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from claude_code_scheduler.aws.errors import error_code, is_transient
from claude_code_scheduler.aws.queue import MessageQueue, ReceivedMessage
from claude_code_scheduler.aws.retry import full_jitter

log = logging.getLogger(__name__)

RENEW_FRACTION = 1 / 3
# How long a delete is retried through an outage before giving up (the
# message then comes back, and is deleted as a duplicate if still remembered).
DELETE_RETRY_SECONDS = 120.0
DELETE_BACKOFF_CAP = 20.0
# The longest the keeper's thread sleeps between looks at what is due.
MAX_NAP_SECONDS = 0.5


def renewal_interval(step_seconds: int) -> float:
    """Seconds between renewals for a lease extended `step_seconds` at a time."""
    return max(0.2, step_seconds * RENEW_FRACTION)


class Write(StrEnum):
    DELETE = "delete"
    RELEASE = "release"


@dataclass
class _Held:
    receipt: str  # the newest: a redelivery of the same message replaces it
    renew_at: float
    renewing: bool = True


@dataclass
class _Pending:
    write: Write
    give_up_at: float
    not_before: float = 0.0
    attempts: int = 0


class LeaseKeeper:
    def __init__(
        self,
        queue: MessageQueue,
        step_seconds: int,
        *,
        clock: Callable[[], float] = time.monotonic,
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
        self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)

    # --- what the lifecycle asks ------------------------------------------------

    def hold(self, message: ReceivedMessage) -> None:
        """Keep `message` hidden until it is deleted or released."""
        with self._lock:
            held = self._held.get(message.message_id)
            renew_at = self._clock() + self._interval
            if held is not None:
                renew_at = min(held.renew_at, renew_at)
            self._held[message.message_id] = _Held(message.receipt_handle, renew_at)
            pending = self._pending.get(message.message_id)
            if pending is not None and pending.write is Write.RELEASE:
                # It came back already: the release is done, and must not
                # apply to this delivery, which the lifecycle decides anew.
                del self._pending[message.message_id]

    def delete(self, message_ids: Iterable[str]) -> None:
        self._enqueue(message_ids, Write.DELETE, DELETE_RETRY_SECONDS)

    def release(self, message_ids: Iterable[str]) -> None:
        """Visible again at once, for any node."""
        self._enqueue(message_ids, Write.RELEASE, 0.0)

    def holding(self) -> set[str]:
        """Message ids held or with a write pending."""
        with self._lock:
            return set(self._held)

    # --- the thread ---------------------------------------------------------------

    def start(self) -> None:
        """Start the thread, unless it runs already."""
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self, deadline: float) -> None:
        """Finish the pending writes until `deadline` (monotonic), then stop."""
        self._stop_deadline = deadline
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - self._clock()) + 1.0)

    def tick(self) -> None:
        """One pass: renew what is due, then make the writes that are due."""
        now = self._clock()
        with self._lock:
            renew = [
                (message_id, held.receipt)
                for message_id, held in self._held.items()
                if held.renewing and held.renew_at <= now
            ]
            for message_id, _ in renew:
                self._held[message_id].renew_at = now + self._interval
            due = [
                (message_id, pending.write, self._held[message_id].receipt)
                for message_id, pending in self._pending.items()
                if pending.not_before <= now
            ]
        for message_id, receipt in renew:
            self._extend(message_id, receipt)
        for message_id, write, receipt in due:
            self._write(message_id, write, receipt)

    def _loop(self) -> None:
        while True:
            with self._lock:
                idle = not self._pending
            if self._stopping.is_set() and (idle or self._clock() >= self._stop_deadline):
                return
            self.tick()
            self._wake.wait(min(self._interval / 2, MAX_NAP_SECONDS))
            self._wake.clear()

    # --- SQS -------------------------------------------------------------------

    def _enqueue(self, message_ids: Iterable[str], write: Write, retry_for: float) -> None:
        now = self._clock()
        with self._lock:
            for message_id in message_ids:
                held = self._held.get(message_id)
                if held is None:
                    continue
                # A released message must not be extended meanwhile; a deleted
                # one must, until the delete goes through.
                held.renewing = write is Write.DELETE
                self._pending[message_id] = _Pending(write, give_up_at=now + retry_for)
        self._wake.set()

    def _extend(self, message_id: str, receipt: str) -> None:
        try:
            self._queue.change_visibility(receipt, self._step)
            log.log(5, "extended lease by %ds", self._step, extra={"message_id": message_id})
        except Exception as exc:
            log.warning(
                "could not extend lease: %s", error_code(exc), extra={"message_id": message_id}
            )

    def _write(self, message_id: str, write: Write, receipt: str) -> None:
        try:
            if write is Write.DELETE:
                self._queue.delete(receipt)
            else:
                self._queue.change_visibility(receipt, 0)
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
            self._pending.pop(message_id, None)
            self._held.pop(message_id, None)

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
