"""The message lifecycle: the one place that decides what becomes of a message.

A message is held (hidden from other nodes, extended while held), then
deleted (done with: it never runs again) or released (visible again at once,
for any node). The lease keeper carries the decisions out; the poller, the
runs and the shutdown only ask.

When a message is received, the first row that applies:

  | case                                    | decision                              |
  |-----------------------------------------|---------------------------------------|
  | not a valid command, or (the node has   | hold; publish TaskFailed              |
  | verification keys) not validly signed   | InvalidCommand; delete once the bus   |
  |                                         | took it, else release                 |
  | its run is running or ending here       | hold with the run: settled with it    |
  | its run ended here and was deleted      | delete, and publish TaskFailed        |
  |                                         | Duplicate (a resend is never silent)  |
  | the node is stopping                    | release                               |
  | no free run slot                        | release                               |
  | otherwise                               | hold, and start the run               |

When a run has ended, once its terminal event's delivery is known:

  | how the run ended                       | decision (the run's messages)         |
  |-----------------------------------------|---------------------------------------|
  | completed or failed, event delivered    | delete, and remember the run          |
  | completed or failed, event not delivered| release: run again rather than lost   |
  | handed back (stopped by a shutdown)     | release                               |
  | to be retried later (a transient cause  | release after the retry policy's      |
  | outside the node: rate limited, API     | delay for this attempt, so a cause    |
  | overloaded, the workspace's git server  | that lasts is not retried hot         |
  | unreachable), event delivered           |                                       |
  | the node failed before the run started  | publish TaskFailed NodeError          |
  |                                         | (retryable); release after the same   |
  |                                         | delay, so it never loops hot          |

At shutdown (`close`): everything still held is released.

Retries (node.retries): a retryable failure on the last attempt the policy
allows does not end "to be retried later" but failed (node.outcome), and its
message is deleted, so the fleet says it gave up before the dead-letter queue
takes a healthy task. A run the node failed to start is not counted against
the task: the node failed, not the task, and a command that fails every node
is what the dead-letter queue is for.

"Remember the run": the last REMEMBERED_RUNS run ids whose messages were
deleted, so a late duplicate of a finished run is deleted, not run again.

A signature (protocol.signing) is checked before anything else is read from
the command, and as of the time SQS took the message (SentTimestamp), not the
time it is received: a message handed back at a shutdown and received again
later is the same message, sent once, and still runs; a copy sent again after
the signature expired is a new message, and is refused.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from claude_code_scheduler.aws.queue import ReceivedMessage
from claude_code_scheduler.node.config import default
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.outbox import Delivery
from claude_code_scheduler.node.retries import RetryPolicy
from claude_code_scheduler.protocol import InvalidCommand, RunTask, parse_command
from claude_code_scheduler.protocol.events import ErrorType, Event, task_failed

log = logging.getLogger(__name__)

# Runs remembered after their message was deleted.
REMEMBERED_RUNS = 1024
# The retries when the node does not say: the options' defaults.
DEFAULT_RETRIES = RetryPolicy(default("retry_delay"), default("retry_max_attempts"))


class Admission(StrEnum):
    START = "start"
    DUPLICATE = "duplicate of a run here"
    FINISHED = "duplicate of a finished run"
    INVALID = "invalid command"
    STOPPING = "node stopping"
    NO_SLOT = "no free slot"


class Ending(StrEnum):
    """How a run ended, as far as its message is concerned."""

    COMPLETED = "completed"
    FAILED = "failed"
    HANDED_BACK = "handed back"
    RETRY_LATER = "to be retried later"

    @property
    def retryable(self) -> bool:
        """What the terminal event's `retryable` says: the command runs again."""
        return self in (Ending.HANDED_BACK, Ending.RETRY_LATER)


class MessageAction(StrEnum):
    DELETE = "delete"
    RELEASE = "release"
    RELEASE_LATER = "release after a delay"


def action_after_run(ending: Ending, *, delivered: bool = True) -> MessageAction:
    """The second table above."""
    if ending is Ending.HANDED_BACK or not delivered:
        return MessageAction.RELEASE
    if ending is Ending.RETRY_LATER:
        return MessageAction.RELEASE_LATER
    return MessageAction.DELETE


@dataclass(frozen=True)
class Received:
    """What the lifecycle made of a received message; `command` is set for START."""

    admission: Admission
    command: RunTask | None = None
    run_id: str | None = None


@dataclass
class _Run:
    attempt: int
    message_ids: set[str] = field(default_factory=set)
    ending: bool = False  # its terminal event is on its way


Publish = Callable[[Event], Delivery]


class CommandVerifier(Protocol):
    """Refuses a command object whose signature does not hold (node.trust)."""

    def verify(self, command: dict[str, Any], *, sent_at: float | None) -> object: ...


class MessageLifecycle:
    def __init__(
        self,
        leases: LeaseKeeper,
        publish: Publish,
        *,
        remembered: int = REMEMBERED_RUNS,
        verifier: CommandVerifier | None = None,
        retries: RetryPolicy = DEFAULT_RETRIES,
    ) -> None:
        """`retries` says how long a message waits before it is tried again."""
        self._leases = leases
        self._retries = retries
        self._publish = publish
        self._remembered = remembered
        self._verifier = verifier
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._finished: OrderedDict[str, Ending] = OrderedDict()

    # --- received ----------------------------------------------------------------

    def receive(self, message: ReceivedMessage, *, stopping: bool, has_slot: bool) -> Received:
        """The first table above."""
        try:
            command = parse_command(message.body, self._verify_for(message))
        except InvalidCommand as exc:
            return self._reject(message, exc)
        except Exception:
            log.exception("unexpected error reading a command")
            error = InvalidCommand("the node could not read this command")
            return self._reject(message, error)
        run_id = command.run_id
        with self._lock:
            self._leases.hold(message)
            # Duplicates first, stopping or not: released, a duplicate would
            # run a second time on another node.
            if run_id in self._runs:
                self._runs[run_id].message_ids.add(message.message_id)
                admission = Admission.DUPLICATE
            elif run_id in self._finished:
                admission = Admission.FINISHED
                ended = self._finished[run_id]
            elif stopping:
                admission = Admission.STOPPING
            elif not has_slot:
                admission = Admission.NO_SLOT
            else:
                self._runs[run_id] = _Run(message.receive_count, {message.message_id})
                admission = Admission.START
        if admission is not Admission.START:
            log.info(_SAID[admission], extra=_context(message, run_id))
        if admission is Admission.FINISHED:
            # Deleted whether or not the bus takes the report: released, the
            # copy would run again on a node that does not remember the run.
            self._leases.delete([message.message_id])
            self._publish(
                task_failed(
                    run_id,
                    ErrorType.DUPLICATE,
                    f"run {run_id} already ended on this node ({ended.value}); "
                    "this copy was deleted without running",
                )
            )
        elif admission in (Admission.STOPPING, Admission.NO_SLOT):
            self._leases.release([message.message_id])
        started = admission is Admission.START
        return Received(admission, command if started else None, run_id)

    def _verify_for(self, message: ReceivedMessage) -> Callable[[dict[str, Any]], object] | None:
        verifier = self._verifier
        if verifier is None:
            return None
        return lambda command: verifier.verify(command, sent_at=message.sent_at)

    def _reject(self, message: ReceivedMessage, exc: InvalidCommand) -> Received:
        log.warning("invalid command: %s", exc, extra=_context(message, exc.run_id))
        self._leases.hold(message)
        event = task_failed(exc.run_id, ErrorType.INVALID_COMMAND, str(exc), retryable=False)
        ids = [message.message_id]
        # Deleted only once the bus has said why; if it cannot (a closed
        # outbox, an outage that outlasts the node), another node says it.
        self._publish(event).when_settled(
            lambda delivered: (self._leases.delete if delivered else self._leases.release)(ids)
        )
        return Received(Admission.INVALID, run_id=exc.run_id)

    # --- ended ---------------------------------------------------------------------

    def run_ended(self, run_id: str, ending: Ending, delivery: Delivery) -> None:
        """The run's terminal event is `delivery`: settle its messages when it is."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.ending:
                return
            run.ending = True
        delivery.when_settled(lambda delivered: self._settle(run_id, ending, delivered))

    def run_crashed(self, run_id: str, reason: str) -> None:
        """The node failed before the run could report an ending (a bug, or
        this node's environment): say so, and let it be tried again later."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.ending:
                return
            del self._runs[run_id]
        delay = self._retries.delay(run.attempt)
        message = f"the node failed to run this command: {reason}; it goes back in {delay} s"
        self._publish(
            task_failed(run_id, ErrorType.NODE_ERROR, message, retryable=True, attempt=run.attempt)
        )
        log.error("run crashed; released in %d s", delay, extra={"run_id": run_id})
        self._leases.release(run.message_ids, after=delay)

    def _settle(self, run_id: str, ending: Ending, delivered: bool) -> None:
        action = action_after_run(ending, delivered=delivered)
        with self._lock:
            run = self._runs.pop(run_id, None)
            if run is None:
                return
            if action is MessageAction.DELETE:
                self._remember(run_id, ending)
        log.info("run settled: %s", action.value, extra={"run_id": run_id})
        if action is MessageAction.DELETE:
            self._leases.delete(run.message_ids)
        elif action is MessageAction.RELEASE_LATER:
            delay = self._retries.delay(run.attempt)
            log.info("attempt %d is retried in %d s", run.attempt, delay, extra={"run_id": run_id})
            self._leases.release(run.message_ids, after=delay)
        else:
            self._leases.release(run.message_ids)

    def _remember(self, run_id: str, ending: Ending) -> None:
        self._finished[run_id] = ending
        self._finished.move_to_end(run_id)
        while len(self._finished) > self._remembered:
            self._finished.popitem(last=False)

    # --- shutdown --------------------------------------------------------------------

    def close(self) -> None:
        """Release everything still held: the node is leaving."""
        with self._lock:
            runs, self._runs = self._runs, {}
        for run_id, run in runs.items():
            log.warning("released at shutdown", extra={"run_id": run_id})
            self._leases.release(run.message_ids)


_SAID = {
    Admission.STOPPING: "stopping: released a message for other nodes",
    Admission.NO_SLOT: "no free slot: released a message for other nodes",
    Admission.DUPLICATE: "duplicate delivery of a run here; held with it",
    Admission.FINISHED: "duplicate delivery of a finished run; deleting, and saying so",
}


def _context(message: ReceivedMessage, run_id: str | None) -> dict[str, str | None]:
    return {"message_id": message.message_id, "run_id": run_id}
