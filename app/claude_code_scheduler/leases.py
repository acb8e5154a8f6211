"""Holding SQS messages while their runs last, and letting go of them.

A received message is hidden from other nodes for the queue's visibility
timeout. The keeper extends it in steps of that same length, renewing after a
third of each step, so two missed renewals still leave time; a crashed node
stops renewing and its message returns to the queue within one timeout.
This is the one place that changes visibility or deletes messages.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tenacity

from claude_code_scheduler.aws import QueueClient, ReceivedMessage, error_code
from claude_code_scheduler.retry import through_outage

log = logging.getLogger(__name__)

RENEW_FRACTION = 1 / 3
# How long deleting a finished run's message is retried through an outage
# before giving up (the message then comes back, and the run may run again).
DELETE_RETRY_SECONDS = 120.0


def renewal_interval(step_seconds: int) -> float:
    """Seconds between renewals for a lease extended `step_seconds` at a time."""
    return max(0.2, step_seconds * RENEW_FRACTION)


@dataclass
class Lease:
    run_id: str
    # Newest receipt handle per message id: a redelivery of the same message
    # replaces the handle; a second message with the same run_id is held too.
    receipts: dict[str, str] = field(default_factory=dict)
    renew_at: float = 0.0


class LeaseKeeper:
    def __init__(
        self,
        queue: QueueClient,
        step_seconds: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._step = max(1, step_seconds)
        self._interval = renewal_interval(self._step)
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def hold(self, run_id: str, message: ReceivedMessage) -> bool:
        """Start holding `message` for `run_id`; False if the run was already held
        (a duplicate delivery, which must not start the run again)."""
        with self._lock:
            lease = self._leases.get(run_id)
            duplicate = lease is not None
            if lease is None:
                lease = self._leases[run_id] = Lease(run_id)
            lease.receipts[message.message_id] = message.receipt_handle
            lease.renew_at = min(lease.renew_at or float("inf"), self._clock() + self._interval)
        return not duplicate

    def held(self) -> list[str]:
        with self._lock:
            return list(self._leases)

    def tick(self) -> None:
        """Renew every lease that is due; one pass of the keeper's loop."""
        now = self._clock()
        with self._lock:
            due = [
                (lease.run_id, dict(lease.receipts))
                for lease in self._leases.values()
                if lease.renew_at <= now
            ]
            for run_id, _ in due:
                self._leases[run_id].renew_at = now + self._interval
        for run_id, receipts in due:
            for receipt in receipts.values():
                self._extend(run_id, receipt)

    def finish(self, run_id: str) -> None:
        """Delete the run's message(s): the run is over and its results are out.
        The lease keeps being renewed while deletion retries through an outage."""
        with self._lock:
            lease = self._leases.get(run_id)
            receipts = list(lease.receipts.values()) if lease else []
        for receipt in receipts:
            self._retry(functools.partial(self._queue.delete, receipt), "delete", run_id)
        with self._lock:
            self._leases.pop(run_id, None)

    def release(self, run_id: str) -> None:
        """Make the run's message(s) visible again at once, for another node."""
        with self._lock:
            lease = self._leases.pop(run_id, None)
        for receipt in lease.receipts.values() if lease else []:
            self.release_message(receipt, run_id)

    def release_message(self, receipt_handle: str, run_id: str | None = None) -> None:
        try:
            self._queue.change_visibility(receipt_handle, 0)
        except Exception as exc:
            # It comes back on its own when its visibility timeout runs out.
            log.warning(
                "could not release a message: %s", error_code(exc), extra={"run_id": run_id}
            )

    def _extend(self, run_id: str, receipt: str) -> None:
        try:
            self._queue.change_visibility(receipt, self._step)
            log.log(5, "extended lease by %ds", self._step, extra={"run_id": run_id})
        except Exception as exc:
            log.warning("could not extend lease: %s", error_code(exc), extra={"run_id": run_id})

    def _retry(self, call: Callable[[], None], what: str, run_id: str) -> None:
        try:
            through_outage(
                f"{what} a message",
                interrupt=self._stop,
                stop=tenacity.stop_after_delay(DELETE_RETRY_SECONDS),
            )(call)
        except Exception as exc:
            log.error("could not %s a message: %s", what, error_code(exc), extra={"run_id": run_id})

    def _loop(self) -> None:
        while not self._stop.wait(min(self._interval, 1.0) / 2):
            self.tick()
