"""The node's metrics: the one owner of what is measured, for both ecosystems.

- Prometheus: a registry of the node's own (prometheus_client), served by
  node.http on --http-port. Names and labels follow Prometheus' conventions
  (a `claude_code_scheduler_` prefix, base units, `_total` on counters).
- CloudWatch: one Embedded Metric Format (EMF) document per run end, written
  as one line on the node's stderr, which the awslogs driver ships to
  CloudWatch Logs; CloudWatch extracts the metrics from it, with no API call
  of the node's. Names follow CloudWatch's conventions (PascalCase, a Unit).

docs/metrics.md has the table of both. The rest of the node calls the hooks
of METRICS, one line at each place where something happens; nothing here
decides anything or does I/O beyond the EMF line.

The EMF line is written here rather than with AWS's aws-embedded-metrics
library: that library flushes through asyncio (its metric_scope and flush are
coroutines, foreign to the node's threads), and picks its own sink from the
environment (on ECS, a CloudWatch agent over TCP or UDP, a sidecar the node
does not have), where the node needs one JSON line on the log stream it
already has. The format is a small, documented JSON document
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html);
the tests check what the node writes against the specification's schema.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from claude_code_scheduler.aws.errors import is_transient
from claude_code_scheduler.protocol.events import ErrorType, Event, EventType

PREFIX = "claude_code_scheduler"
EMF_NAMESPACE = "ClaudeCodeScheduler"
EMF_LOGGER = "claude_code_scheduler.emf"
# Runs last from seconds to the 12-hour SQS bound; queue waits from
# sub-second (an idle fleet) to hours (a backlog, retries after a delay).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)
QUEUE_WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200, 14400, 43200)
# usage field -> the `kind` label and the EMF metric name.
TOKEN_FIELDS = {
    "input_tokens": ("input", "InputTokens"),
    "output_tokens": ("output", "OutputTokens"),
    "cache_read_input_tokens": ("cache_read", "CacheReadInputTokens"),
    "cache_creation_input_tokens": ("cache_creation", "CacheCreationInputTokens"),
}


@dataclass(frozen=True)
class RunEnded:
    """What is measured of one run's end, read from its terminal event."""

    run_id: str | None
    completed: bool
    error_type: str | None = None
    duration_seconds: float | None = None
    queue_wait_seconds: float | None = None
    attempt: int | None = None
    cost_usd: float | None = None
    # usage field name -> count, only those the CLI reported.
    tokens: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_event(cls, event: Event, queue_wait_seconds: float | None = None) -> RunEnded:
        data = event.data
        error = data.get("error")
        # None where the CLI gave no result line (node.process.result.usage_of).
        usage = data.get("usage") or {}
        attempt = data.get("attempt")
        return cls(
            run_id=event.run_id,
            completed=event.event_type is EventType.TASK_COMPLETED,
            error_type=error.get("type") if isinstance(error, dict) else None,
            duration_seconds=_number(data.get("duration_seconds")),
            queue_wait_seconds=queue_wait_seconds,
            attempt=attempt if isinstance(attempt, int) else None,
            cost_usd=_number(usage.get("total_cost_usd")),
            tokens=tuple(
                (name, int(usage[name]))
                for name in TOKEN_FIELDS
                if _number(usage.get(name)) is not None
            ),
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def queue_wait(sent_at: float | None, now: float | None = None) -> float | None:
    """Seconds from when SQS took the message (SentTimestamp, the same at
    every receive) to now: with a redelivery, the earlier attempts' time too."""
    if sent_at is None:
        return None
    return max(0.0, (time.time() if now is None else now) - sent_at)


class NodeMetrics:
    def __init__(self) -> None:
        # No `_created` series beside each counter: in the text format they
        # double what a scrape carries, for a start time nothing here reads.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._emf: EmfWriter | None = None
        self._slots: Callable[[], tuple[int, int]] = lambda: (0, 0)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=PREFIX, registry=self.registry)

        self.messages_received = counter("messages_received", "Messages received from the queue.")
        self.redeliveries = counter(
            "redeliveries",
            "Messages received again (ApproximateReceiveCount above 1): handed back, "
            "retried, or a lease that ran out.",
        )
        self.runs_started = counter("runs_started", "Runs started (TaskStarted published).")
        self.runs_completed = counter("runs_completed", "Runs that ended TaskCompleted.")
        self.runs_failed = counter(
            "runs_failed",
            "Runs that ended TaskFailed, and commands refused as InvalidCommand, by error type.",
            ("error_type",),
        )
        self.cost = counter("cost_usd", "What the runs' result lines said they cost, in USD.")
        self.tokens = counter("tokens", "Tokens the runs' result lines reported.", ("kind",))
        self.hand_backs = counter(
            "hand_backs",
            "Messages released to the queue for any node: at once, or delayed for a retry.",
            ("delayed",),
        )
        self.publish_retries = counter(
            "publish_retries", "Control-bus publish calls tried again through an outage."
        )
        self.upload_retries = counter(
            "upload_retries",
            "Uploads to the log bucket that failed transiently, which a run tries again.",
        )
        self.run_duration = Histogram(
            "run_duration_seconds",
            "How long runs took, by outcome (completed or failed).",
            ("outcome",),
            namespace=PREFIX,
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self.queue_wait = Histogram(
            "queue_wait_seconds",
            "From when SQS took a run's message (SentTimestamp) to the run's start.",
            namespace=PREFIX,
            registry=self.registry,
            buckets=QUEUE_WAIT_BUCKETS,
        )
        self.slots_busy = Gauge(
            "slots_busy", "Run slots running a run.", namespace=PREFIX, registry=self.registry
        )
        self.slots_idle = Gauge(
            "slots_idle", "Run slots free for a run.", namespace=PREFIX, registry=self.registry
        )
        self.outbox_depth = Gauge(
            "outbox_depth",
            "Events the outbox holds that the bus has not taken yet.",
            namespace=PREFIX,
            registry=self.registry,
        )
        self.slots_busy.set_function(lambda: self._slots()[0])
        self.slots_idle.set_function(lambda: self._slots()[1])
        self._initialise_labels()

    def _initialise_labels(self) -> None:
        """Every known label value exists from the start, at 0, so a rate over
        a series that has not happened yet is 0 rather than missing."""
        for error_type in ErrorType:
            if error_type is not ErrorType.DUPLICATE:
                self.runs_failed.labels(error_type.value)
        for kind, _ in TOKEN_FIELDS.values():
            self.tokens.labels(kind)
        for delayed in ("false", "true"):
            self.hand_backs.labels(delayed)
        for outcome in ("completed", "failed"):
            self.run_duration.labels(outcome)

    # --- set up at start-up --------------------------------------------------

    def start_emf(self, stream: TextIO, *, node_id: str, queue: str) -> None:
        """From now on, one EMF line per run end on `stream` (the node's stderr)."""
        self._emf = EmfWriter(stream, node_id=node_id, queue=queue)

    def watch_slots(self, busy: Callable[[], int], slots: int) -> None:
        """The slot gauges read `busy()` at each scrape."""
        self._slots = lambda: (busy(), max(0, slots - busy()))

    def watch_outbox(self, depth: Callable[[], int]) -> None:
        self.outbox_depth.set_function(depth)

    # --- the hooks ----------------------------------------------------------------

    def message_received(self, receive_count: int) -> None:
        self.messages_received.inc()
        if receive_count > 1:
            self.redeliveries.inc()

    def run_started(self) -> None:
        self.runs_started.inc()

    def run_queued(self, wait_seconds: float | None) -> None:
        if wait_seconds is not None:
            self.queue_wait.observe(wait_seconds)

    def run_ended(self, event: Event, queue_wait_seconds: float | None = None) -> None:
        """A run's terminal event (TaskCompleted or TaskFailed), or the
        TaskFailed InvalidCommand of a message that was not a command."""
        self._ended(RunEnded.from_event(event, queue_wait_seconds))

    def command_refused(self, run_id: str | None) -> None:
        """A message that was not a valid command (TaskFailed InvalidCommand):
        counted with the failures, as the heartbeat's tasks_failed does."""
        self._ended(RunEnded(run_id, completed=False, error_type=ErrorType.INVALID_COMMAND.value))

    def run_crashed(self, run_id: str | None, queue_wait_seconds: float | None = None) -> None:
        """The node failed the run (TaskFailed NodeError, messages.run_crashed)."""
        self._ended(
            RunEnded(
                run_id,
                completed=False,
                error_type=ErrorType.NODE_ERROR.value,
                queue_wait_seconds=queue_wait_seconds,
            )
        )

    def handed_back(self, messages: int, *, delayed: bool) -> None:
        if messages:
            self.hand_backs.labels("true" if delayed else "false").inc(messages)

    def publish_attempt(self, attempt_number: int) -> None:
        """Each try of one publish call; every one after the first is a retry."""
        if attempt_number > 1:
            self.publish_retries.inc()

    def upload_failed(self, exc: BaseException) -> None:
        """An upload call raised: a transient error is what runs try again
        (aws.retry.through_outage), unless the node is giving up."""
        if is_transient(exc):
            self.upload_retries.inc()

    def _ended(self, ended: RunEnded) -> None:
        if ended.completed:
            self.runs_completed.inc()
        else:
            self.runs_failed.labels(ended.error_type or "unknown").inc()
        if ended.duration_seconds is not None:
            outcome = "completed" if ended.completed else "failed"
            self.run_duration.labels(outcome).observe(ended.duration_seconds)
        if ended.cost_usd:
            self.cost.inc(ended.cost_usd)
        for name, count in ended.tokens:
            self.tokens.labels(TOKEN_FIELDS[name][0]).inc(count)
        if self._emf is not None:
            self._emf.write(ended)


class EmfWriter:
    """One EMF document per line on the node's log stream, through a logger
    of its own: CloudWatch reads a log event as EMF only when the whole event
    is the JSON document, so the line bypasses the node's log format."""

    def __init__(self, stream: TextIO, *, node_id: str, queue: str) -> None:
        self._node_id = node_id
        self._queue = queue
        self._logger = logging.getLogger(EMF_LOGGER)
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.handlers[:] = [handler]
        self._logger.setLevel(logging.INFO)
        # Not the root's handler: it would format (or wrap in JSON) the line.
        self._logger.propagate = False

    def write(self, ended: RunEnded) -> None:
        document = emf_document(ended, node_id=self._node_id, queue=self._queue)
        self._logger.info(json.dumps(document, separators=(",", ":")))


def emf_document(
    ended: RunEnded, *, node_id: str, queue: str, timestamp_ms: int | None = None
) -> dict[str, Any]:
    """The EMF document of one run end. Every metric has the dimension set
    [Queue] (the fleet: every node of a queue adds up); RunsFailed has
    [Queue, ErrorType] too. A figure the run did not report is left out, not
    sent as 0. NodeId, RunId and Attempt are plain members, for Logs Insights:
    as dimensions they would make a new metric for every node."""
    values: dict[str, tuple[float, str]] = {
        ("RunsCompleted" if ended.completed else "RunsFailed"): (1, "Count"),
    }
    if ended.duration_seconds is not None:
        values["RunDuration"] = (ended.duration_seconds, "Seconds")
    if ended.queue_wait_seconds is not None:
        values["QueueWait"] = (round(ended.queue_wait_seconds, 3), "Seconds")
    if ended.cost_usd is not None:
        values["CostUSD"] = (ended.cost_usd, "None")
    for name, count in ended.tokens:
        values[TOKEN_FIELDS[name][1]] = (count, "Count")
    directives: list[dict[str, Any]] = [
        {
            "Namespace": EMF_NAMESPACE,
            "Dimensions": [["Queue"]],
            "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in values.items()],
        }
    ]
    members: dict[str, Any] = {"Queue": queue}
    if not ended.completed:
        members["ErrorType"] = ended.error_type or "unknown"
        directives.append(
            {
                "Namespace": EMF_NAMESPACE,
                "Dimensions": [["Queue", "ErrorType"]],
                "Metrics": [{"Name": "RunsFailed", "Unit": "Count"}],
            }
        )
    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return {
        "_aws": {"Timestamp": stamp, "CloudWatchMetrics": directives},
        **members,
        **{name: value for name, (value, _) in values.items()},
        "NodeId": node_id,
        **({} if ended.run_id is None else {"RunId": ended.run_id}),
        **({} if ended.attempt is None else {"Attempt": ended.attempt}),
    }


# The node's metrics, as logsetup.SECRETS is its redaction: one per process.
METRICS = NodeMetrics()
